"""A representative slice of SQLAlchemy's own test suite, run on ReservoirPool, in CI.

The whole suite takes about 10 minutes per driver (its counts are in
docs/sqlalchemy.md); CI runs this slice of it instead, on psycopg2 and on
psycopg 3, from the sdist of the installed SQLAlchemy (fetched once into a
cache outside the repo, see ``_suite_sdist``):

* ``test/engine/test_pool.py`` with QueuePool swapped for ReservoirPool: the
  pool contract (events, counters, timeouts, overflow, recycle,
  invalidation, reset on return, threads);
* ``test/engine/test_reconnect.py``: disconnects, invalidation, pre-ping;
* ``test/orm/test_transaction.py``: Session transactions, savepoints,
  two-phase commits, rollbacks, on the pool.

Every PostgreSQL engine the suite creates gets ``poolclass=ReservoirPool``
from ``tools/sqlalchemy_suite/shim.py``. The suite runs in a subprocess
against its own throwaway PostgreSQL server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import pgreservoir
from pgreservoir.testing import PostgresServer

from ._suite_sdist import TOOLS, SuiteUnavailable, suite_tree

pytestmark = pytest.mark.slow

FILES = (
    "test/engine/test_pool_reservoir.py",
    "test/engine/test_reconnect.py",
    "test/orm/test_transaction.py",
)
# Left out, as docs/sqlalchemy.md explains: they test QueuePool's internals,
# not the pool contract.
_POOL_TEST = "test/engine/test_pool_reservoir.py::QueuePoolTest::"
LEFT_OUT = (
    # Replaces the contents of QueuePool's queue (p._pool.queue = deque(...)),
    # which ReservoirPool does not have.
    _POOL_TEST + "test_connect_checkout_handler_always_gets_info",
    _POOL_TEST + "test_connect_handler_not_called_for_recycled",
    # Asserts that a connection checked out across dispose() is pooled again
    # when returned (incidental to QueuePool, says the test); ReservoirPool
    # closes it, as Pool.dispose() affects only idle connections.
    _POOL_TEST + "test_dispose_closes_pooled",
)
# 458 pass per driver with SQLAlchemy 2.1.9; a floor (not the exact count, which
# changes between releases) so that a run that collects little or nothing fails.
MIN_PASSED = 400
SUITE_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def sdist() -> Path:
    """The unpacked sdist of the installed SQLAlchemy; a failure to fetch it fails the test."""
    try:
        return suite_tree()
    except (SuiteUnavailable, OSError) as exc:
        pytest.fail(f"cannot prepare SQLAlchemy's test suite: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def suite_server() -> Iterator[PostgresServer]:
    """A server set up as SQLAlchemy's suite expects: database ``test``, its two
    test schemas, prepared transactions on (for the two-phase tests)."""
    settings = {"max_prepared_transactions": "10"}
    with PostgresServer(settings=settings, max_connections=300) as server:
        server.create_database("test")
        conn = server.connect(dbname="test")
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE SCHEMA test_schema")
                cur.execute("CREATE SCHEMA test_schema_2")
        finally:
            conn.close()
        yield server


@pytest.mark.timeout(SUITE_TIMEOUT + 1200)  # with the first run's download
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sqlalchemy_suite_slice(
    driver: str, sdist: Path, suite_server: PostgresServer, tmp_path: Path
) -> None:
    """The slice passes on ReservoirPool, except the tests left out above."""
    url = f"postgresql+{driver}://{suite_server.user}@{suite_server.host}:{suite_server.port}/test"
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "shim", "-p", "no:cacheprovider"]
    command += ["-p", "no:pgreservoir", "--dburi", url, "-q", "-rfE", "--tb=short"]
    command += ["--disable-warnings", f"--junitxml={report}"]
    for test in LEFT_OUT:
        command += ["--deselect", test]
    command += FILES
    env = dict(os.environ, RESERVOIR_POOL="1", PYTHONPATH=_pythonpath())
    try:
        done = subprocess.run(
            command, cwd=sdist, env=env, capture_output=True, text=True,
            timeout=SUITE_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        pytest.fail(f"SQLAlchemy's suite ran over {SUITE_TIMEOUT:.0f} s\n{_tail(output)}")
    output, exit_code = done.stdout + done.stderr, done.returncode
    counts = _counts(report, output)
    where = f"SQLAlchemy's suite on {driver} (exit {exit_code}, {counts})"
    assert exit_code == 0, f"{where}\n{_tail(output)}"
    assert counts["failures"] == counts["errors"] == 0, f"{where}\n{_tail(output)}"
    assert counts["passed"] >= MIN_PASSED, f"{where}: too few passed\n{_tail(output)}"
    deselected = re.search(r"(\d+) deselected", output)
    assert deselected is not None, f"{where}: no deselected count\n{_tail(output)}"
    assert int(deselected.group(1)) == len(LEFT_OUT), (
        f"{where}: the left-out tests {LEFT_OUT} no longer all exist; update the list "
        f"and docs/sqlalchemy.md\n{_tail(output)}"
    )


def _pythonpath() -> str:
    """The shim, then this checkout's pgreservoir (so the suite runs the code under test)."""
    parts: List[str] = [str(TOOLS), str(Path(pgreservoir.__file__).resolve().parents[1])]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def _counts(report: Path, output: str) -> Dict[str, int]:
    """tests/failures/errors/skipped/passed from the JUnit report pytest wrote."""
    if not report.exists():
        pytest.fail(f"SQLAlchemy's suite wrote no report\n{_tail(output)}")
    root = ET.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"no <testsuite> in {report}"
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data if isinstance(data, str) else ""


def _tail(output: str, lines: int = 60) -> str:
    return "\n".join(output.splitlines()[-lines:])
