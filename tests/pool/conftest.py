"""Fixtures of the pool suites: every test that takes ``flavor`` runs once per driver."""

from __future__ import annotations

import pytest

from support import FLAVORS, Flavor


@pytest.fixture(params=FLAVORS, ids=repr)
def flavor(request: pytest.FixtureRequest) -> Flavor:
    """The driver the pools of this test run on (psycopg2, psycopg 3)."""
    value: Flavor = request.param
    return value
