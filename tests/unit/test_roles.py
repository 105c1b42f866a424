"""Stale roles in the core: the role check's judgement and what a STALE_ROLE return
or check does (no I/O, manual clock)."""

from __future__ import annotations

from typing import Optional

import pytest

from pgreservoir._core import (
    CLEAN,
    PING,
    PROBE,
    STALE_ROLE,
    CloseReason,
    Plan,
    role_check_for,
)

from .test_core import T0, fill, give, take


@pytest.mark.parametrize(
    ("attrs", "wanted"),
    [
        ("read-write", "read-write"),
        (" Read-Write ", "read-write"),
        ("primary", "primary"),
        (None, None),
        ("", None),
        ("any", None),
        ("read-only", None),
        ("standby", None),
        ("prefer-standby", None),
    ],
)
def test_the_role_follows_target_session_attrs(attrs: Optional[str], wanted: Optional[str]) -> None:
    check = role_check_for(attrs)
    assert (check.wanted if check else None) == wanted


@pytest.mark.parametrize(
    ("attrs", "hot_standby", "read_only", "client_read_only", "stale"),
    [
        ("read-write", "off", "off", False, False),
        ("read-write", "on", "off", False, True),  # a standby
        ("read-write", "off", "on", False, True),  # fenced
        ("read-write", "off", "on", True, False),  # psycopg2's own readonly SET
        ("read-write", None, None, False, False),  # before PostgreSQL 14: nothing reported
        ("primary", "on", "off", False, True),
        ("primary", "off", "on", False, False),  # a fenced primary is still a primary
    ],
)
def test_stale_judgement(
    attrs: str,
    hot_standby: Optional[str],
    read_only: Optional[str],
    client_read_only: bool,
    stale: bool,
) -> None:
    check = role_check_for(attrs)
    assert check is not None
    assert check.stale(hot_standby, read_only, client_read_only) is stale


def test_a_stale_return_is_discarded_and_its_siblings_revalidated() -> None:
    from .fakes import make_core

    core = make_core(min_size=2, max_size=2)
    a, b = fill(core, 2)
    take(core)
    take(core)
    give(core, b, CLEAN, T0 + 1)
    plan = give(core, a, STALE_ROLE, T0 + 2)
    assert isinstance(plan, Plan)
    assert plan.close == [a]
    assert plan.open == 1  # refilled (through libpq's target_session_attrs)
    assert ("closed", CloseReason.STALE_ROLE.value) in core._later
    stats = core.stats()
    assert stats["connections_stale_role"] == 1
    assert stats["connections_lost"] == 0  # not dead: in the wrong role
    assert take(core, T0 + 3).vet == PING  # the sibling gets a round trip before use
    core.check_invariants()


def test_a_stale_background_check_discards() -> None:
    from .fakes import make_core

    core = make_core(min_size=2, max_size=2)
    a, b = fill(core, 2)
    plan = core.suspect([(a, a.taken_at)], T0 + 1)
    assert plan.check == [a]
    plan = core.checked(a, True, T0 + 2, stale=True)
    assert plan.close == [a]
    assert core.stats()["connections_stale_role"] == 1
    assert take(core, T0 + 3).vet == PING
    core.check_invariants()
    assert b.vet in (PROBE, PING)
