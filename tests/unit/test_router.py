"""The routing decisions (pgreservoir._routing.Router) with an injected clock: which
replica gets a read, when one is dropped and taken back, and how lag is judged."""

from __future__ import annotations

from typing import List, Optional

from pgreservoir._routing import Router


def _router(count: int = 2, max_lag: Optional[float] = None) -> Router:
    return Router([f"r{i}" for i in range(count)], max_lag=max_lag, stale_after=3.0)


def _picks(router: Router, now: float, n: int) -> List[Optional[int]]:
    return [router.pick(now) for _ in range(n)]


def test_nothing_is_eligible_before_a_check() -> None:
    router = _router()
    assert router.pick(0.0) is None
    assert not router.any_eligible(0.0)


def test_reads_go_round_robin_over_the_eligible() -> None:
    router = _router(3)
    for i in range(3):
        router.checked(i, 0.0, True, 0.0)
    assert _picks(router, 0.5, 6) == [0, 1, 2, 0, 1, 2]
    router.check_failed(1, 1.0, "refused")
    assert _picks(router, 1.5, 4) == [0, 2, 0, 2]
    assert [r["reads"] for r in router.snapshot(1.5)] == [4, 2, 4]


def test_exclude_skips_replicas_already_tried() -> None:
    router = _router()
    router.checked(0, 0.0, True, 0.0)
    router.checked(1, 0.0, True, 0.0)
    assert router.pick(0.1, exclude=[0]) == 1
    assert router.pick(0.1, exclude=[0, 1]) is None


def test_a_check_that_hangs_makes_the_replica_stale() -> None:
    router = _router(1)
    router.checked(0, 10.0, True, 0.0)
    assert router.eligible(0, 13.0)
    assert not router.eligible(0, 13.01), "no report for longer than stale_after"
    router.checked(0, 13.5, True, 0.0)
    assert router.eligible(0, 14.0)


def test_a_failed_checkout_drops_it_until_a_later_check_succeeds() -> None:
    router = _router(1)
    router.checked(0, 0.0, True, 0.0)
    router.checkout_failed(0, 0.5, "refused")
    assert router.pick(0.6) is None
    # A check begun before the failure says nothing about after it.
    router.checked(0, 0.4, True, 0.0)
    assert router.pick(0.7) is None
    router.checked(0, 0.8, True, 0.0)
    assert router.pick(0.9) == 0


def test_late_reports_of_earlier_checks_are_ignored() -> None:
    router = _router(1)
    router.check_failed(0, 2.0, "timeout")
    router.checked(0, 1.0, True, 0.0)  # began before the failure: stale news
    assert not router.eligible(0, 2.5)
    assert router.snapshot(2.5)[0]["last_error"] == "timeout"


def test_lag_beyond_max_lag_excludes_until_caught_up() -> None:
    router = _router(1, max_lag=1.0)
    router.checked(0, 0.0, True, 0.0)
    assert router.eligible(0, 0.1)
    router.checked(0, 1.0, True, 0.5)  # replaying; 0.5 s behind
    assert router.eligible(0, 1.1)
    router.checked(0, 2.0, True, 2.0)  # replay paused since about 0.0
    assert not router.eligible(0, 2.1)
    assert router.snapshot(2.1)[0]["lag"] == 2.0
    router.checked(0, 3.0, True, 0.0)
    assert router.eligible(0, 3.1)


def test_an_idle_primary_is_not_lag() -> None:
    """After a long quiet spell the last replayed transaction is old; a first write's
    WAL being replayed must not read as that much lag."""
    router = _router(1, max_lag=1.0)
    router.checked(0, 0.0, True, 0.0)
    router.checked(0, 3600.0, True, 0.0)  # caught up: nothing to replay
    router.checked(0, 3601.0, True, 3600.5)  # a write arrives: last replay an hour old
    assert router.snapshot(3601.0)[0]["lag"] == 1.0  # bounded by the last catch-up
    assert router.eligible(0, 3601.1)


def test_unknown_lag_is_not_trusted_with_max_lag() -> None:
    router = _router(1, max_lag=5.0)
    router.checked(0, 0.0, True, None)  # replaying, no transaction replayed yet
    assert not router.eligible(0, 0.1)
    plain = _router(1)
    plain.checked(0, 0.0, True, None)
    assert plain.eligible(0, 0.1), "without max_lag, up is enough"


def test_a_server_not_in_recovery_has_no_lag() -> None:
    router = _router(1, max_lag=0.5)
    router.checked(0, 0.0, False, 0.0)
    snap = router.snapshot(0.1)[0]
    assert snap["in_recovery"] is False
    assert snap["lag"] == 0.0
    assert snap["eligible"]
