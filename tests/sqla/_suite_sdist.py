"""SQLAlchemy's own test suite, from the sdist of the installed release, cached outside the repo.

``suite_tree()`` downloads the sdist with pip (once), unpacks it and writes
``test/engine/test_pool_reservoir.py`` (its ``test_pool.py`` with QueuePool
swapped for ReservoirPool, by ``tools/sqlalchemy_suite/swap_test_pool.py``).
The tree is built in a scratch directory and renamed into place only when
complete, under a file lock, so an interrupted or concurrent run never sees
half a tree. Nothing of SQLAlchemy's is ever written into the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator, List

import sqlalchemy

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "sqlalchemy_suite"
DOWNLOAD_TIMEOUT = 900.0  # a cold pip may build the sdist's build dependencies first
_COMPLETE = ".pgreservoir-complete"


class SuiteUnavailable(RuntimeError):
    """The sdist could not be fetched or prepared; the message says why and what to do."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/pgreservoir/sqlalchemy-suite`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgreservoir" / "sqlalchemy-suite"


def suite_tree(version: str = sqlalchemy.__version__) -> Path:
    """The unpacked sdist of SQLAlchemy ``version``, ready to run; fetched on first use."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    tree = root / f"sqlalchemy-{version}"
    with _locked(root / f"sqlalchemy-{version}.lock"):
        if not (tree / _COMPLETE).exists():
            _build(tree, version)
    return tree


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(tree: Path, version: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=tree.parent))
    try:
        archive = _download(version, scratch)
        unpacked = _unpack(archive, scratch / "src", version)
        _run(
            [sys.executable, str(TOOLS / "swap_test_pool.py"), str(unpacked)],
            "swapping QueuePool for ReservoirPool in test/engine/test_pool.py",
            timeout=120.0,
        )
        (unpacked / _COMPLETE).write_text(f"sqlalchemy {version}\n")
        if tree.exists():  # an earlier, incomplete tree
            shutil.rmtree(tree)
        unpacked.rename(tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    command += ["--dest", str(into), f"sqlalchemy=={version}"]
    _run(command, f"downloading the sdist of SQLAlchemy {version} from PyPI", DOWNLOAD_TIMEOUT)
    archives: List[Path] = sorted(into.glob("*.tar.gz"))
    if len(archives) != 1:
        found = sorted(p.name for p in into.iterdir())
        raise SuiteUnavailable(f"pip download left {found} in {into}, expected one .tar.gz")
    return archives[0]


def _unpack(archive: Path, into: Path, version: str) -> Path:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # refuses links and paths out of the tree
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            tar.extractall(into)  # PyPI's sdist of the pinned release
    tops = [p for p in into.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "test" / "engine" / "test_pool.py").is_file():
        raise SuiteUnavailable(
            f"{archive.name} does not look like SQLAlchemy {version}'s sdist with its tests "
            f"(found {sorted(p.name for p in into.iterdir())})"
        )
    return tops[0]


def _run(command: List[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SuiteUnavailable(f"{what}: no result after {timeout:.0f} s ({command})") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SuiteUnavailable(
            f"{what} failed (exit {done.returncode}); is PyPI reachable? "
            f"Command: {' '.join(command)}\n{tail}"
        )
