"""The test runner that _django_suite gives Django's own suite (``TEST_RUNNER``).

Django's DiscoverRunner, plus two things the run's caller checks in the output:

* tests named in ``PGRESERVOIR_SUITE_LEAVE_OUT`` (a JSON list of test ids)
  are left out of the run, each one printed as ``PGR-LEFT-OUT <id>``, so a
  caller can tell a stale name (never found) from a test left out;
* once the test databases are set up, a ``PGR-BACKEND`` line says which
  backend class, driver and pool the ``default`` alias really got.

This file is copied next to the run's settings module; it is not imported
by our own tests.
"""

from __future__ import annotations

import json
import os
import unittest
from typing import Any, Iterator, List, Tuple

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.test.runner import DiscoverRunner

LEAVE_OUT_ENV = "PGRESERVOIR_SUITE_LEAVE_OUT"


def _cases(tests: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(tests, unittest.TestSuite):
        for test in tests:
            yield from _cases(test)
    else:
        yield tests


class LeaveOutRunner(DiscoverRunner):
    """DiscoverRunner that leaves out the tests named in the environment."""

    def load_tests_for_label(
        self, label: str, discover_kwargs: dict[str, str]
    ) -> unittest.TestSuite:
        left_out = set(json.loads(os.environ.get(LEAVE_OUT_ENV, "[]")))
        kept: List[unittest.TestCase] = []
        for test in _cases(super().load_tests_for_label(label, discover_kwargs)):
            if test.id() in left_out:
                print(f"PGR-LEFT-OUT {test.id()}", flush=True)
            else:
                kept.append(test)
        return unittest.TestSuite(kept)

    def setup_databases(self, **kwargs: Any) -> List[Tuple[BaseDatabaseWrapper, str, bool]]:
        databases = super().setup_databases(**kwargs)
        wrapper = connections["default"]
        try:
            pool = type(wrapper.pool).__name__  # type: ignore[attr-defined]
        except Exception as exc:  # Django's own backend refuses a pool on psycopg2
            pool = f"none ({type(exc).__name__})"
        print(
            f"PGR-BACKEND class={type(wrapper).__module__}.{type(wrapper).__name__}"
            f" driver={'psycopg' if is_psycopg3 else 'psycopg2'} pool={pool}",
            flush=True,
        )
        return databases
