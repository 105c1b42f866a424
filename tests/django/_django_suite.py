"""Run Django's own test suite, from its sdist, against a throwaway PostgreSQL.

Used by tests/django/test_django_suite.py (the slice CI runs) and by
scripts/django_suite.py (whole runs by hand). Two steps:

``django_tests_dir(version)``
    Django's ``tests/`` directory for that version: its sdist downloaded
    with pip (no wheel: only the sdist has the suite) into a cache outside
    the repository, unpacked there once and reused.
``run_suite(tests_dir, ...)``
    ``tests/runtests.py`` in a subprocess with settings of ours (two aliases,
    ``default`` and ``other``) pointing at a server from pgreservoir.testing,
    on pgreservoir's backend or Django's own, on psycopg 3 or psycopg2. The
    runner (_suite_runner.py) leaves out the tests named, and reports which
    backend and driver the run really had.

psycopg2 is chosen the only way Django allows, by making ``import psycopg``
fail: a sitecustomize next to the settings module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pgreservoir.testing import PostgresServer

__all__ = [
    "ENGINES",
    "SuiteError",
    "SuiteRun",
    "default_cache_dir",
    "django_tests_dir",
    "run_suite",
]

ENGINES = {"ours": "pgreservoir.django", "stock": "django.db.backends.postgresql"}

_SUITE_RUNNER = Path(__file__).with_name("_suite_runner.py")
_LEAVE_OUT_ENV = "PGRESERVOIR_SUITE_LEAVE_OUT"  # read by _suite_runner.py

_SETTINGS = """\
DATABASES = {{
    "default": {{
        "ENGINE": {engine!r}, "NAME": "django", "USER": {user!r},
        "HOST": {host!r}, "PORT": {port!r}, "OPTIONS": {options!r},
    }},
    "other": {{
        "ENGINE": {engine!r}, "NAME": "django_other", "USER": {user!r},
        "HOST": {host!r}, "PORT": {port!r}, "OPTIONS": {options!r},
    }},
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "_suite_runner.LeaveOutRunner"
"""

_BLOCK_PSYCOPG = 'import sys\nsys.modules["psycopg"] = None  # Django then picks psycopg2\n'

_COUNTS = ("failures", "errors", "skipped", "expected failures", "unexpected successes")


class SuiteError(Exception):
    """Django's suite could not be fetched, unpacked or run to its end."""


@dataclass
class SuiteRun:
    """What one runtests.py run reported."""

    exit_code: int
    output: str
    ran: Optional[int]  # None: no "Ran N tests" line (it stopped before running)
    counts: Dict[str, int]  # _COUNTS, 0 when not in the summary line
    failed: List[str] = field(default_factory=list)  # "FAIL: ..." / "ERROR: ..." lines
    left_out: List[str] = field(default_factory=list)  # test ids the runner left out
    backend: str = ""  # the runner's PGR-BACKEND line, without the tag

    @property
    def clean(self) -> bool:
        """Ran to its end with no failure, no error and no unexpected success."""
        bad = self.counts["failures"] + self.counts["errors"] + self.counts["unexpected successes"]
        return self.exit_code == 0 and self.ran is not None and bad == 0 and not self.failed

    def tail(self, lines: int = 60) -> str:
        """The last lines of the output, for an assertion message."""
        return "\n".join(self.output.splitlines()[-lines:])

    def summary(self) -> str:
        counts = " ".join(f"{k.replace(' ', '_')}={v}" for k, v in self.counts.items())
        return f"ran={self.ran if self.ran is not None else '?'} {counts} exit={self.exit_code}"


def default_cache_dir() -> Path:
    """Where sdists are kept: $PGRESERVOIR_DJANGO_SUITE_CACHE, else the user's cache dir."""
    explicit = os.environ.get("PGRESERVOIR_DJANGO_SUITE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "pgreservoir", "django-suite")


def django_tests_dir(
    version: str, cache_dir: Optional[Path] = None, timeout: float = 300.0
) -> Path:
    """Django ``version``'s tests/ directory, downloaded and unpacked on first use."""
    cache = cache_dir or default_cache_dir()
    tree = cache / f"django-{version}"
    tests = tree / "tests"
    if (tests / "runtests.py").is_file():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    sdist = _download_sdist(version, cache, timeout)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".unpack-") as scratch:
        try:
            with tarfile.open(sdist) as archive:
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(scratch, filter="data")
                else:  # pragma: no cover - Pythons without extraction filters
                    archive.extractall(scratch)
        except (OSError, tarfile.TarError) as exc:
            sdist.unlink(missing_ok=True)  # a damaged download is fetched again next time
            raise SuiteError(f"cannot unpack {sdist}: {exc}; it was removed, run again") from exc
        found = sorted(Path(scratch).glob("*/tests/runtests.py"))
        if not found:
            raise SuiteError(f"{sdist} has no tests/runtests.py: not Django's sdist?")
        try:
            found[0].parent.parent.rename(tree)
        except OSError:
            if not (tests / "runtests.py").is_file():  # not just a concurrent unpack winning
                raise
    return tests


def _download_sdist(version: str, cache: Path, timeout: float) -> Path:
    sdist = cache / f"django-{version}.tar.gz"
    if sdist.is_file():
        return sdist
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            "--disable-pip-version-check", "-q", "-d", scratch,
            f"django=={version}",
        ]
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SuiteError(
                f"downloading Django {version}'s sdist took over {timeout:.0f}s: {command}"
            ) from exc
        got = sorted(Path(scratch).glob("*.tar.gz"))
        if proc.returncode != 0 or not got:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            errors = [line[:600] for line in lines if line.startswith("ERROR")]
            output = "\n".join(errors or lines[-20:])
            raise SuiteError(
                f"cannot download Django {version}'s sdist (needed for Django's own test"
                f" suite; PyPI must be reachable, or put django-{version}.tar.gz in {cache}):"
                f" {' '.join(command)} exited {proc.returncode}:\n{output}"
            )
        os.replace(got[0], sdist)
    return sdist


def run_suite(
    tests_dir: Path,
    labels: Sequence[str],
    *,
    engine: str = ENGINES["ours"],
    driver: str = "psycopg",
    pool: bool = True,
    parallel: int = 2,
    leave_out: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    timeout: float = 900.0,
    log: Optional[Path] = None,
) -> SuiteRun:
    """Run runtests.py on ``labels``; raises SuiteError if it outlives ``timeout`` seconds."""
    if driver not in ("psycopg", "psycopg2"):
        raise ValueError(f"driver must be 'psycopg' or 'psycopg2', not {driver!r}")
    options = {"pool": True} if pool else {}
    with PostgresServer(max_connections=300) as server, tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pgr_suite_settings.py").write_text(
            _SETTINGS.format(
                engine=engine, user=server.user, host=server.host, port=str(server.port),
                options=options,
            )
        )
        shutil.copy(_SUITE_RUNNER, Path(tmp, "_suite_runner.py"))
        if driver == "psycopg2":
            Path(tmp, "sitecustomize.py").write_text(_BLOCK_PSYCOPG)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([tmp, str(tests_dir)]),
            **{_LEAVE_OUT_ENV: json.dumps(list(leave_out))},
        )
        command = [
            sys.executable, "-u", "runtests.py", "--settings=pgr_suite_settings",
            f"--parallel={parallel}", "--noinput", *extra_args, *labels,
        ]
        out_path = log or Path(tmp, "runtests.log")
        with out_path.open("w") as out:
            # A session of its own: on a timeout the parallel workers go too.
            proc = subprocess.Popen(
                command, cwd=tests_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                tail = "\n".join(out_path.read_text(errors="replace").splitlines()[-60:])
                raise SuiteError(
                    f"Django's suite ran over {timeout:.0f}s and was killed; its output"
                    f" ended with:\n{tail}"
                ) from None
        text = out_path.read_text(errors="replace")
    return _parse(code, text)


def _parse(code: int, text: str) -> SuiteRun:
    ran = re.findall(r"^Ran (\d+) tests?", text, re.M)
    counts = dict.fromkeys(_COUNTS, 0)
    summary = re.findall(r"^(?:OK|FAILED) \((.*)\)$", text, re.M)
    if summary:
        for key, value in re.findall(r"([a-z ]+)=(\d+)", summary[-1]):
            counts[key.strip()] = int(value)
    backend = re.findall(r"^PGR-BACKEND (.*)$", text, re.M)
    return SuiteRun(
        exit_code=code,
        output=text,
        ran=int(ran[-1]) if ran else None,
        counts=counts,
        failed=re.findall(r"^(?:FAIL|ERROR): .*$", text, re.M),
        left_out=re.findall(r"^PGR-LEFT-OUT (\S+)$", text, re.M),
        backend=backend[-1] if backend else "",
    )
