"""A slice of Django's own test suite on ENGINE "pgreservoir.django", pooled.

Django's sdist (the installed Django's version) is fetched with pip into a
cache outside the repository (tests/django/_django_suite.py) and its
runtests.py run on the labels below, against a server of our own, with
``OPTIONS: {"pool": True}`` on both aliases and ``--parallel 2`` (forked
workers, each on its own clone of the databases), once on psycopg 3 and
once on psycopg2. The slice covers what a pool can break: connection set-up
and teardown, transactions and savepoints, on-commit hooks, row locks across
threads, a second database, live-server threads, async code, time zones,
schema changes and migrations, fixtures and bulk loads. The whole of what
docs/django.md lists is run by hand with scripts/django_suite.py.

Every test must pass but for the documented left-out ones (they test
psycopg_pool or Django's refusal to pool psycopg2, not Django on a pool);
they are left out by name and the run must have found each of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
from _django_suite import ENGINES, SuiteError, django_tests_dir, run_suite
from django.utils.version import get_version

LABELS = (
    "backends",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "get_or_create",
    "db_utils",
    "handlers",
    "basic",
    "test_utils",
    "servers",
    "async",
    "multiple_database",
    "timezones",
    "queries",
    "expressions",
    "postgres_tests",
    "schema",
    "migrations.test_executor",
    "migrations.test_multidb",
    "fixtures",
    "bulk_create",
    "raw_query",
)

#: Measured on Django 5.2.20: 2778 tests on psycopg 3, 2779 on psycopg2 (the
#: left-out ones not counted); a run far below this
#: lost labels (an import error, a renamed module) and must not pass.
MIN_TESTS = 2500

#: The documented left-out tests (docs/django.md), by driver, with the reason.
LEFT_OUT: Dict[str, Dict[str, str]] = {
    "psycopg": {
        "backends.postgresql.tests.Tests.test_connect_pool": (
            "asserts psycopg_pool's own PoolTimeout class; ours raises pgreservoir.PoolTimeout"
        ),
        "backends.postgresql.tests.Tests.test_pooling_health_checks": (
            "reads psycopg_pool's private pool._check; ours has pool.options.check"
        ),
    },
    "psycopg2": {
        "backends.postgresql.tests.Tests.test_connect_pool_setting_ignored_for_psycopg2": (
            "asserts Django's refusal to pool psycopg2, which this backend exists to lift"
        ),
    },
}

#: Django's suite through runtests.py; measured at 33-37 s a driver here.
SUITE_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def django_tests() -> Path:
    """The installed Django's tests/ directory (downloaded once, then cached)."""
    try:
        return django_tests_dir(get_version())
    except SuiteError as exc:
        pytest.fail(f"Django's own suite is not available: {exc}", pytrace=False)


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT + 120)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_djangos_own_suite_passes_on_the_pooled_backend(django_tests: Path, driver: str) -> None:
    left_out = LEFT_OUT[driver]
    try:
        run = run_suite(
            django_tests, LABELS, engine=ENGINES["ours"], driver=driver, pool=True,
            parallel=2, leave_out=sorted(left_out), timeout=SUITE_TIMEOUT,
        )
    except SuiteError as exc:
        pytest.fail(str(exc), pytrace=False)
    report = (
        f"Django {get_version()} suite on {driver}: {run.summary()}\n"
        + "\n".join(run.failed)
        + f"\n--- the end of runtests.py's output:\n{run.tail(80)}"
    )
    print(report.splitlines()[0])  # the counts, for pytest -rP
    # The run was on our backend, on this driver, with our pool.
    assert run.backend == (
        f"class=pgreservoir.django.base.DatabaseWrapper driver={driver}"
        " pool=DjangoConnectionPool"
    ), report
    assert run.clean, report
    assert run.ran is not None, report
    assert run.ran >= MIN_TESTS, report
    # Each documented left-out test still exists and was left out, none else.
    assert sorted(run.left_out) == sorted(left_out), report
