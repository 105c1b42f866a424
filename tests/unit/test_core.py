"""The core alone: decisions on a manual clock, no threads, no I/O.

Each test drives the core through the calls a shell makes and checks what it
decided (the Plan) and that its invariants hold after every step.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple, Union

import pytest

from pgreservoir import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from pgreservoir._core import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BROKEN,
    CLEAN,
    CLOSE,
    DIRTY,
    HOLDER_CLOSED,
    PING,
    PROBE,
    Core,
    Entry,
    Plan,
    State,
    Waiter,
)

from .fakes import FakeConn, make_core

T0 = 1000.0


def probe(timeout: int) -> List[Any]:
    return []


def checkout(
    core: Core, now: float, timeout: Optional[float] = None, *, retry: bool = False
) -> Union[Entry, Plan]:
    """core.checkout(), with a quick refusal (a gauges tuple) turned into the
    Plan with its error that the shells act on."""
    got = core.checkout(now, timeout, retry=retry)
    if type(got) is tuple:
        plan = Plan()
        plan.error = core.refused(got)
        return plan
    assert isinstance(got, (Entry, Plan))
    return got


def open_one(core: Core, now: float = T0) -> Entry:
    """Claim a requested open and complete it; the entry, placed by the core."""
    ticket = core.claim_open(now)
    assert isinstance(ticket, Entry), ticket
    core.connected(ticket, FakeConn(), now)
    plan = core.opened(ticket, (False,), probe, now)
    assert plan.error is None
    core.check_invariants()
    return ticket


def fill(core: Core, count: int, now: float = T0) -> List[Entry]:
    plan = core.start(now)
    assert plan.open == count
    return [open_one(core, now) for _ in range(count)]


def take(core: Core, now: float = T0, timeout: Optional[float] = 0.0) -> Entry:
    got = checkout(core, now, timeout)
    if isinstance(got, Plan):
        assert got.entry is not None, got
        got = got.entry
    core.check_invariants()
    return got


def give(
    core: Core, entry: Entry, verdict: int = CLEAN, now: float = T0
) -> Union[Waiter, Plan, None]:
    conn = entry.conn if entry.conn is not None else entry.ref()
    result = core.checkin(entry, conn, verdict, now)
    core.check_invariants()
    return result


def test_start_requests_min_size_and_opens_fill_idle() -> None:
    core = make_core(min_size=3, max_size=5)
    fill(core, 3)
    g = core.gauges()
    assert (g["size"], g["idle"], g["opening"]) == (3, 3, 0)
    assert core.filled()
    assert core.claim_open(T0) is None


def test_nothing_is_requested_before_start() -> None:
    core = make_core(min_size=2)
    ticket = core.reserve(T0)  # a facade filling the pool itself
    core.connected(ticket, FakeConn(), T0)
    core.opened(ticket, (False,), probe, T0)
    assert core.gauges()["size"] == 1
    assert core.claim_open(T0) is None  # not started: no background refill yet
    assert core.start(T0).open == 1


def test_fast_path_is_lifo_and_marks_the_probe() -> None:
    core = make_core(min_size=2)
    _a, b = fill(core, 2)
    first = checkout(core, T0 + 1, 0.0)
    assert first is b  # the most recently placed
    assert first.state is State.IN_USE
    assert first.vet == PROBE
    assert give(core, first, now=T0 + 2) is None
    assert checkout(core, T0 + 3, 0.0) is b


def test_round_robin_order_hands_out_the_oldest_first() -> None:
    core = make_core(min_size=2, lifo=False)
    a, b = fill(core, 2)
    assert checkout(core, T0, 0.0) is a
    give(core, a)
    assert checkout(core, T0, 0.0) is b
    assert checkout(core, T0, 0.0) is a


def test_idle_long_or_suspect_connections_are_pinged() -> None:
    core = make_core(min_size=2, check_idle_after=60.0)
    a, b = fill(core, 2)
    assert take(core, T0 + 59).vet == PROBE
    assert take(core, T0 + 61).vet == PING  # idle more than check_idle_after
    give(core, b, now=T0 + 62)
    give(core, a, now=T0 + 62)
    core.mark_suspect(T0 + 63)
    assert take(core, T0 + 64).vet == PING  # returned before a disconnect was seen


def test_waiter_gets_the_next_return_in_line_order() -> None:
    core = make_core(min_size=1, max_size=1)
    (a,) = fill(core, 1)
    held = take(core)
    w1 = checkout(core, T0 + 1, 5.0)
    w2 = checkout(core, T0 + 2, 5.0)
    assert isinstance(w1, Plan)
    assert isinstance(w2, Plan)
    assert w1.waiter is not None
    assert w2.waiter is not None
    assert w1.open == 0  # the pool is at max_size: nothing to open
    served = give(core, held, now=T0 + 3)
    assert served is w1.waiter  # the returner hands it over, it cannot keep it
    assert w1.waiter.entry is a
    assert a.state is State.IN_USE
    assert core.gauges()["waiting"] == 1
    # Nobody can barge past the remaining waiter while it waits.
    barge = checkout(core, T0 + 3, 0.0)
    assert isinstance(barge, Plan)
    assert isinstance(barge.error, PoolTimeout)


def test_waiter_that_times_out_leaves_the_line_or_keeps_what_it_got() -> None:
    core = make_core(min_size=1, max_size=1)
    fill(core, 1)
    held = take(core)
    plan = checkout(core, T0, 1.0)
    assert isinstance(plan, Plan)
    assert plan.waiter is not None
    out = core.give_up(plan.waiter, T0 + 1)
    assert isinstance(out.error, PoolTimeout)
    assert core.gauges()["waiting"] == 0
    assert core.stats()["timeouts"] == 1
    # Served at the very moment it gave up: it keeps the connection.
    plan = checkout(core, T0 + 2, 1.0)
    assert isinstance(plan, Plan)
    assert plan.waiter is not None
    give(core, held, now=T0 + 3)
    out = core.give_up(plan.waiter, T0 + 3)
    assert out.error is None
    assert out.entry is held
    core.check_invariants()


def test_interrupted_waiter_passes_its_connection_on() -> None:
    core = make_core(min_size=1, max_size=1)
    fill(core, 1)
    held = take(core)
    first = checkout(core, T0, 5.0)
    second = checkout(core, T0, 5.0)
    assert isinstance(first, Plan)
    assert isinstance(second, Plan)
    assert first.waiter is not None
    assert second.waiter is not None
    assert give(core, held) is first.waiter
    # The first waiter is interrupted before it runs: the connection goes on.
    out = core.give_up(first.waiter, T0 + 1, interrupted=True)
    assert out.wake == [second.waiter]
    assert second.waiter.entry is held
    assert out.error is None
    core.check_invariants()
    # Interrupted while still in line: it just leaves.
    give(core, held)
    third = checkout(core, T0, 0.0)
    assert third is held
    fourth = checkout(core, T0, 5.0)
    assert isinstance(fourth, Plan)
    assert fourth.waiter is not None
    out = core.give_up(fourth.waiter, T0, interrupted=True)
    assert out.error is None
    assert not out.wake
    assert core.gauges()["waiting"] == 0
    core.check_invariants()


def test_growth_requests_one_open_per_uncovered_waiter_up_to_max() -> None:
    core = make_core(min_size=0, max_size=3)
    core.start(T0)
    plans = [checkout(core, T0, 5.0) for _ in range(5)]
    assert [p.open for p in plans if isinstance(p, Plan)] == [1, 1, 1, 0, 0]
    assert core.gauges()["size"] == 3
    ticket = core.claim_open(T0)
    assert isinstance(ticket, Entry)
    core.connected(ticket, FakeConn(), T0)
    placed = core.opened(ticket, (False,), probe, T0)
    first = plans[0]
    assert isinstance(first, Plan)
    assert placed.wake == [first.waiter]  # the oldest waiter gets the new one
    core.check_invariants()


def test_num_workers_bounds_connects_in_flight() -> None:
    core = make_core(min_size=4, max_size=4, num_workers=2)
    core.start(T0)
    assert isinstance(core.claim_open(T0), Entry)
    assert isinstance(core.claim_open(T0), Entry)
    assert core.claim_open(T0) is None  # two in flight already
    core.check_invariants()


def test_failed_connects_back_off_and_only_one_probe_runs() -> None:
    core = make_core(min_size=2, max_size=2, num_workers=2)
    core.start(T0)
    ticket = core.claim_open(T0)
    assert isinstance(ticket, Entry)
    plan = core.open_failed(ticket, OSError("refused"), T0)
    assert plan.events
    assert plan.events[0][0] == "connect_error"
    core.check_invariants()
    # The failed slot is requested again, after a backoff.
    delay = core.claim_open(T0)
    assert isinstance(delay, float)
    assert BACKOFF_INITIAL * 0.8 <= delay <= BACKOFF_INITIAL * 1.2
    ticket = core.claim_open(T0 + delay)
    assert isinstance(ticket, Entry)
    # While failing, a single attempt at a time.
    assert core.claim_open(T0 + 10) is None
    now = T0 + delay
    wait = 0.0
    for _attempt in range(2, 12):
        core.open_failed(ticket, OSError("refused"), now)
        delay = core.claim_open(now)
        assert isinstance(delay, float)
        wait = delay
        assert wait <= BACKOFF_MAX * 1.2
        now += wait
        ticket = core.claim_open(now)
        assert isinstance(ticket, Entry)
    assert wait >= BACKOFF_MAX * 0.8  # capped
    core.connected(ticket, FakeConn(), now)
    plan = core.opened(ticket, (False,), probe, now)
    assert plan.events[0][0] == "reconnected"
    assert isinstance(core.claim_open(now), Entry)  # healthy: no more backoff
    core.check_invariants()


def test_fail_fast_refuses_waiting_but_keeps_probing() -> None:
    core = make_core(min_size=0, max_size=2, fail_fast=True, timeout=5.0)
    core.start(T0)
    plan = checkout(core, T0, None)
    assert isinstance(plan, Plan)
    assert plan.waiter is not None
    assert plan.open == 1
    ticket = core.claim_open(T0)
    assert isinstance(ticket, Entry)
    failed = core.open_failed(ticket, OSError("refused"), T0)
    assert failed.wake == [plan.waiter]
    assert isinstance(plan.waiter.error, PoolTimeout)
    assert isinstance(plan.waiter.error.__cause__, OSError)
    # Nobody waits now, yet a connect attempt stays requested (the jam of
    # old: fail-fast refused every later caller forever).
    assert core.gauges()["opening"] == 1
    refused = checkout(core, T0 + 0.01, None)
    assert isinstance(refused, Plan)
    assert isinstance(refused.error, PoolTimeout)
    assert "refused" in str(refused.error)
    wait = core.claim_open(T0 + 0.01)
    assert isinstance(wait, float)
    ticket = core.claim_open(T0 + 1)
    assert isinstance(ticket, Entry)
    core.connected(ticket, FakeConn(), T0 + 1)
    core.opened(ticket, (False,), probe, T0 + 1)
    assert isinstance(checkout(core, T0 + 1, None), Entry)  # served again
    core.check_invariants()


def test_dirty_returns_are_reserved_for_cleaning() -> None:
    core = make_core(min_size=1)
    (a,) = fill(core, 1)
    take(core)
    plan = give(core, a, DIRTY)
    assert isinstance(plan, Plan)
    assert plan.clean is a
    assert a.state is State.RESERVED
    back = core.cleaned(a, T0 + 1)
    assert not back
    assert a.state.value == "idle"
    take(core)
    plan = give(core, a, DIRTY)
    assert isinstance(plan, Plan)
    failed = core.cleaned(a, T0 + 2, "RuntimeError: rollback failed")
    assert failed.close == [a]
    assert a.state.value == "closed"
    assert failed.open == 1  # refill to min_size
    # Logged by the next housekeeping, not by the returning caller.
    assert not failed.events
    assert ("reset_failed", "RuntimeError: rollback failed") in core.housekeep(T0 + 3).events
    core.check_invariants()


def test_discards_decided_on_a_callers_path_are_logged_by_housekeeping() -> None:
    core = make_core(min_size=1, max_size=1)
    (a,) = fill(core, 1)
    take(core)
    returned = give(core, a, BROKEN, T0 + 1)
    assert isinstance(returned, Plan)
    assert returned.close == [a]
    assert not returned.events  # the returning thread logs nothing
    later = core.housekeep(T0 + 2)
    assert ("closed", "returned broken or in an unknown state") in later.events
    assert not core.housekeep(T0 + 3).events  # once
    # A burst is capped, and the rest counted.
    for i in range(100):
        core._log_later("closed", f"burst {i}")
    burst = core.housekeep(T0 + 4).events
    assert len(burst) == 65
    assert burst[-1] == ("closed", "36 more connections")
    # What close() finds is logged by it.
    core._log_later("closed", "last")
    assert ("closed", "last") in core.close(T0 + 5).events


@pytest.mark.parametrize("verdict", [BROKEN, CLOSE])
def test_broken_or_closed_returns_free_their_slot(verdict: int) -> None:
    core = make_core(min_size=0, max_size=2)
    fill(core, 0)
    core.start(T0)
    checkout(core, T0, 5.0)
    a = open_one(core)
    assert a.state is State.IN_USE
    plan = give(core, a, verdict)
    assert isinstance(plan, Plan)
    assert plan.close == [a]
    assert core.gauges()["size"] == 0
    assert core.stats()["connections_lost"] == (1 if verdict == BROKEN else 0)


def test_closed_by_its_holder_is_a_quiet_discard_that_suspects_no_sibling() -> None:
    core = make_core(min_size=2, max_size=2)
    a, b = fill(core, 2)
    take(core)
    take(core)
    give(core, b, CLEAN, T0 + 1)
    plan = give(core, a, HOLDER_CLOSED, T0 + 2)
    assert isinstance(plan, Plan)
    assert plan.close == [a]
    assert not plan.events  # routine: not logged
    assert plan.open == 1  # refill
    stats = core.stats()
    assert (stats["returns_closed"], stats["returns_broken"], stats["connections_lost"]) == (
        1,
        0,
        0,
    )
    assert take(core, T0 + 3).vet == PROBE  # the sibling gets no round trip
    # A broken return, by contrast, is lost and makes the siblings suspect.
    core2 = make_core(min_size=2, max_size=2)
    c, d = fill(core2, 2)
    take(core2)
    take(core2)
    give(core2, d, CLEAN, T0 + 1)
    give(core2, c, BROKEN, T0 + 2)
    assert core2.stats()["connections_lost"] == 1
    assert take(core2, T0 + 3).vet == PING


def test_decline_reports_the_wait_since_the_checkout_began() -> None:
    core = make_core(min_size=1, max_size=1, timeout=5.0)
    (a,) = fill(core, 1)
    take(core)
    plan = checkout(core, T0 + 1, 5.0)
    assert isinstance(plan, Plan)
    assert plan.waiter is not None
    give(core, a, CLEAN, T0 + 5.999)  # handed to the waiter at its deadline
    assert plan.waiter.entry is a
    declined = core.decline(a, T0 + 6, T0 + 1)
    assert isinstance(declined.error, PoolTimeout)
    assert "after 5.00 s" in str(declined.error)
    assert core.stats()["timeouts"] == 1
    assert a.state is State.IDLE  # back unchanged, for the next taker
    core.check_invariants()


def test_foreign_and_double_returns_change_nothing() -> None:
    core = make_core(min_size=1)
    (a,) = fill(core, 1)
    take(core)
    before = core.stats()
    plan = core.checkin(None, FakeConn(), BROKEN, T0)
    assert isinstance(plan, Plan)
    assert isinstance(plan.error, PoolError)
    assert "unkeyed" in str(plan.error)
    assert core.stats() == before
    give(core, a)
    before = core.stats()
    again = core.checkin(a, a.conn, CLEAN, T0)
    assert isinstance(again, Plan)
    assert isinstance(again.error, PoolError)
    assert core.stats() == before
    core.check_invariants()


def test_expired_idle_connections_are_retired_at_checkout() -> None:
    core = make_core(min_size=2, max_lifetime=100.0)
    a, b = fill(core, 2)
    # rng is 0.5: each lifetime is 100 * (1 - 0.025)
    assert a.expires == pytest.approx(T0 + 97.5)
    plan = checkout(core, T0 + 98, 0.0)
    assert isinstance(plan, Plan)
    assert set(plan.close) == {a, b}
    assert isinstance(plan.error, PoolTimeout)
    assert plan.open == 2  # refill
    core.check_invariants()


def test_housekeeping_retires_surplus_and_expired_idle() -> None:
    core = make_core(min_size=1, max_size=3, max_idle=10.0)
    core.start(T0)
    plans = [checkout(core, T0, 5.0) for _ in range(3)]
    entries = [open_one(core) for _ in range(2)]
    entries.append(open_one(core))
    assert all(e.state is State.IN_USE for e in entries)
    assert all(isinstance(p, Plan) for p in plans)
    for entry in entries:
        give(core, entry, now=T0 + 1)
    assert not core.housekeep(T0 + 5).close
    plan = core.housekeep(T0 + 12)
    assert len(plan.close) == 2
    assert core.gauges()["size"] == 1
    core.check_invariants()


def test_background_probe_reserves_only_untouched_idle_entries() -> None:
    core = make_core(min_size=2)
    a, b = fill(core, 2)
    plan = core.housekeep(T0 + 1)
    assert {e for e, _ in plan.poll} == {a, b}
    polled = plan.poll
    # b is handed out and returned between the probe and the report.
    take(core, T0 + 2)
    give(core, b, now=T0 + 2)
    found = core.suspect(polled, T0 + 3)
    assert found.check == [a]
    assert a.state is State.RESERVED
    dead = core.checked(a, False, T0 + 4)
    assert dead.close == [a]
    assert dead.open == 1
    core.check_invariants()


def test_keepalive_reserves_due_idle_connections() -> None:
    core = make_core(min_size=2, check_idle_interval=30.0)
    a, b = fill(core, 2)
    assert not core.housekeep(T0 + 10).check
    plan = core.housekeep(T0 + 31)
    assert set(plan.check) == {a, b}
    core.checked(a, True, T0 + 32)
    core.checked(b, True, T0 + 32)
    assert core.gauges()["idle"] == 2
    assert not core.housekeep(T0 + 40).check
    core.check_invariants()


def test_close_fails_waiters_closes_idle_and_abandons_connects() -> None:
    core = make_core(min_size=2, max_size=4)
    _a, _b = fill(core, 2)
    held = take(core)
    take(core)
    waiting = checkout(core, T0, 5.0)
    assert isinstance(waiting, Plan)
    assert waiting.waiter is not None
    ticket = core.claim_open(T0)  # a connect in flight for the waiter
    assert isinstance(ticket, Entry)
    plan = core.close(T0 + 1)
    assert plan.wake == [waiting.waiter]
    assert isinstance(waiting.waiter.error, PoolClosed)
    assert not core.settled()  # two still in use
    core.check_invariants()
    # The connect returns after close(): nothing more to do but close it.
    late = core.connected(ticket, FakeConn(), T0 + 2)
    assert late.close == [ticket]
    back = give(core, held, now=T0 + 2)
    assert isinstance(back, Plan)
    assert back.close == [held]
    forced = core.abandon(T0 + 3)
    assert len(forced.force) == 1
    assert core.settled()
    assert core.gauges()["size"] == 0
    assert not core.close(T0 + 4).wake  # idempotent
    refused = checkout(core, T0 + 5, 0.0)
    assert isinstance(refused, Plan)
    assert isinstance(refused.error, PoolClosed)
    core.check_invariants()


def test_a_clean_in_progress_at_close_is_interrupted_and_closed_once() -> None:
    core = make_core(min_size=1)
    (a,) = fill(core, 1)
    take(core)
    plan = give(core, a, DIRTY)
    assert isinstance(plan, Plan)
    assert plan.clean is a
    core.close(T0)
    assert not core.settled()
    forced = core.abandon(T0 + 5)
    assert forced.interrupt == [a.conn]
    assert not forced.close  # the cleaning thread closes it, once
    assert core.gauges()["size"] == 0
    done = core.cleaned(a, T0 + 6, "interrupted")
    assert done.close == [a]
    assert core.stats()["connections_closed"] == 1
    core.check_invariants()


def test_resize_shrinks_idle_now_and_busy_on_return() -> None:
    core = make_core(min_size=3, max_size=3)
    _a, _b, _c = fill(core, 3)
    x = take(core)
    y = take(core)
    plan = core.resize(1, 1, T0)
    assert len(plan.close) == 1  # the idle one
    assert core.gauges()["size"] == 2
    out = give(core, x)
    assert isinstance(out, Plan)
    assert out.close == [x]
    assert give(core, y) is None  # at max_size now: kept
    core.check_invariants()


def test_max_waiting_and_zero_timeout() -> None:
    core = make_core(min_size=1, max_size=1, max_waiting=1)
    fill(core, 1)
    take(core)
    assert isinstance(checkout(core, T0, 0.0), Plan)
    first = checkout(core, T0, 5.0)
    assert isinstance(first, Plan)
    assert first.waiter is not None
    second = checkout(core, T0, 5.0)
    assert isinstance(second, Plan)
    assert isinstance(second.error, TooManyRequests)
    assert core.stats()["rejected"] == 1


def test_inline_mode_gives_the_caller_a_ticket_when_there_is_room() -> None:
    core = make_core(min_size=0, max_size=1, inline=True)
    core.start(T0)
    plan = checkout(core, T0, 0.0)
    assert isinstance(plan, Plan)
    assert plan.ticket is not None
    assert plan.ticket.for_caller
    ticket = plan.ticket
    core.connected(ticket, FakeConn(), T0)
    opened = core.opened(ticket, (False,), probe, T0)
    assert opened.entry is ticket
    assert ticket.state is State.IN_USE
    full = checkout(core, T0, 0.0)
    assert isinstance(full, Plan)
    assert isinstance(full.error, PoolTimeout)
    core.check_invariants()


def test_after_fork_forgets_everything_and_accepts_late_returns() -> None:
    core = make_core(min_size=2, max_size=3)
    a, b = fill(core, 2)
    held = take(core)
    core.start(T0)
    checkout(core, T0, 5.0)
    checkout(core, T0, 5.0)
    in_flight = core.claim_open(T0)
    assert isinstance(in_flight, Entry)
    conn = held.conn
    conns, tickets = core.after_fork()
    assert set(map(id, conns)) == {id(a.conn), id(b.conn)}
    assert tickets == [in_flight]
    assert core.gauges()["size"] == 0
    core.check_invariants()
    late = core.checkin(None, conn, CLEAN, T0)
    assert isinstance(late, Plan)
    assert late.error is None
    assert late.close
    assert core.start(T0).open == 2


def test_after_fork_opens_nothing_until_the_first_checkout() -> None:
    core = make_core(min_size=2, max_size=3)
    fill(core, 2)
    core.after_fork()
    assert core.filled()  # nothing to wait for
    assert not core.housekeep(T0 + 1).open
    assert core.claim_open(T0 + 1) is None
    # The first checkout, even one that does not wait, asks for min_size.
    plan = checkout(core, T0 + 2, 0.0)
    assert isinstance(plan, Plan)
    assert isinstance(plan.error, PoolTimeout)
    assert plan.open == 2
    assert not core.filled()
    core.check_invariants()
    # One that waits gets one opened for it (min_size covers it).
    plan = checkout(core, T0 + 3, 5.0)
    assert isinstance(plan, Plan)
    assert plan.waiter is not None
    assert plan.open == 0
    open_one(core, T0 + 3)
    assert plan.waiter.entry is not None


def test_gc_collected_connections_free_their_slot() -> None:
    import gc

    core = make_core(min_size=0, max_size=1)
    core.start(T0)
    checkout(core, T0, 5.0)
    entry = open_one(core)
    entry.conn = None  # handed out: the pool holds it only weakly
    gc.collect()
    plan = core.housekeep(T0 + 1)
    assert core.gauges()["size"] == 0
    assert core.stats()["connections_leaked"] == 1
    assert plan.events
    assert plan.events[0][0] == "leak"
    core.check_invariants()


def test_a_plain_refusal_is_decided_quickly_and_its_error_made_outside() -> None:
    core = make_core(min_size=1, max_size=1, inline=True)
    fill(core, 1)
    take(core)
    got = core.checkout(T0, 0.0)
    # Only the gauges, under the lock; the error is built from them after.
    assert got == (1, 1, 1, 0, 1, 0, 0)
    assert core.stats()["timeouts"] == 1
    assert core.stats()["requests"] == 2
    err = core.refused(got)
    assert isinstance(err, PoolTimeout)
    assert err.snapshot["in_use"] == 1
    assert "size 1/1" in str(err)
    # A pool whose own timeout is 0 refuses the same way.
    plain = make_core(min_size=1, max_size=1, timeout=0.0)
    fill(plain, 1)
    take(plain)
    assert type(plain.checkout(T0, None)) is tuple
    # Anything else to decide (a failing server, a waiting line, room to open
    # inline, a retry) takes the plan path.
    core.checkout(T0, 5.0)
    assert isinstance(core.checkout(T0, 0.0, retry=True), Plan)


def test_a_refusal_without_the_lock_refuses_only_what_checkout_would() -> None:
    core = make_core(min_size=2, max_size=2, inline=True)
    assert core.refuse_unlocked() is None  # not started: the first checkout opens
    fill(core, 2)
    # An idle connection is never refused: the caller takes the lock and gets it.
    assert core.refuse_unlocked() is None
    held = [take(core), take(core)]
    gauges = core.refuse_unlocked()
    assert gauges == core.checkout(T0, 0.0) == (2, 2, 2, 0, 2, 0, 0)
    stats = core.stats()
    assert (stats["requests"], stats["timeouts"]) == (4, 2)  # both refusals counted
    assert core.figures().timeouts == 2  # and in the metrics
    assert "size 2/2" in str(core.refused(gauges))
    # A slot being re-opened (a broken connection returned): take the lock.
    give(core, held.pop(), BROKEN)
    assert core.gauges()["opening"] == 1
    assert core.refuse_unlocked() is None
    core.close(T0)
    assert core.refuse_unlocked() is None  # closed: checkout() says so
    core.check_invariants()


def test_errors_name_the_pool_and_its_state() -> None:
    core = make_core(min_size=1, max_size=1, name="orders")
    fill(core, 1)
    take(core)
    plan = checkout(core, T0, 0.0)
    assert isinstance(plan, Plan)
    assert isinstance(plan.error, PoolTimeout)
    err = plan.error
    assert "'orders'" in str(err)
    assert "size 1/1" in str(err)
    assert err.pool_name == "orders"
    assert err.snapshot["in_use"] == 1


def test_invariants_hold_through_a_random_walk() -> None:
    import random

    rng = random.Random(7)
    core = make_core(min_size=1, max_size=4, max_lifetime=50.0, max_idle=5.0)
    core.start(T0)
    now = T0
    held: List[Entry] = []
    waiters: List[Waiter] = []
    tickets: List[Entry] = []
    for _ in range(5000):
        now += rng.random()
        action = rng.randrange(8)
        if action == 0:
            got = checkout(core, now, rng.choice([0.0, 5.0]))
            if isinstance(got, Entry):
                held.append(got)
            elif got.entry is not None:
                held.append(got.entry)
            elif got.waiter is not None:
                waiters.append(got.waiter)
        elif action == 1 and held:
            entry = held.pop(rng.randrange(len(held)))
            out = core.checkin(entry, entry.conn, rng.choice([CLEAN, CLEAN, DIRTY, BROKEN]), now)
            if isinstance(out, Waiter):
                assert out.entry is not None
                held.append(out.entry)
                waiters.remove(out)
            elif isinstance(out, Plan):
                if out.clean is not None:
                    core.cleaned(out.clean, now, None if rng.random() < 0.8 else "failed")
                for w in out.wake:
                    waiters.remove(w)
                    if w.entry is not None:
                        held.append(w.entry)
        elif action == 2:
            got2 = core.claim_open(now)
            if isinstance(got2, Entry):
                tickets.append(got2)
        elif action == 3 and tickets:
            ticket = tickets.pop(0)
            if rng.random() < 0.8:
                core.connected(ticket, FakeConn(), now)
                out = core.opened(ticket, (False,), probe, now)
            else:
                out = core.open_failed(ticket, OSError("x"), now)
            for w in out.wake:
                waiters.remove(w)
                if w.entry is not None:
                    held.append(w.entry)
        elif action == 4 and waiters:
            w = waiters.pop(0)
            out = core.give_up(w, now, interrupted=rng.random() < 0.5)
            if out.entry is not None:
                held.append(out.entry)
            for other in out.wake:
                waiters.remove(other)
                if other.entry is not None:
                    held.append(other.entry)
        elif action == 5:
            out = core.housekeep(now)
            for entry, _ in out.poll[:1]:
                found = core.suspect([(entry, entry.taken_at)], now)
                for checked in found.check:
                    core.checked(checked, rng.random() < 0.9, now)
            for checked in out.check:
                core.checked(checked, True, now)
        elif action == 6 and held:
            entry = held.pop()
            core.lose(entry, now)
        core.check_invariants()
        assert len({id(e) for e in held}) == len(held), "handed out twice"
        assert not math.isnan(now)
    assert core.stats()["requests"] > 0


def test_a_new_connection_reusing_a_collected_ones_id_frees_the_old_slot() -> None:
    # A connection handed out and garbage-collected leaves its entry in_use
    # until housekeeping; a new connection can get the same id() before that.
    import gc

    core = make_core(min_size=0, max_size=2)
    core.start(T0)
    checkout(core, T0, 5.0)
    old = open_one(core)
    old.conn = None  # handed out: only the caller held it
    gc.collect()
    checkout(core, T0, 5.0)
    ticket = core.claim_open(T0)
    assert isinstance(ticket, Entry)
    core.connected(ticket, FakeConn(), T0)
    ticket.key = old.key  # as if the new connection got the freed address
    plan = core.opened(ticket, (False,), probe, T0)
    assert old.state is State.CLOSED
    assert core.stats()["connections_leaked"] == 1
    assert plan.wake  # the new one went to the waiter, under its own entry
    assert core.in_use[old.key] is ticket
    core.check_invariants()


def test_a_null_pool_keeps_no_idle_connection() -> None:
    core = make_core(min_size=0, max_size=2, keep_idle=False)
    core.start(T0)
    first = checkout(core, T0, 5.0)
    second = checkout(core, T0, 5.0)
    third = checkout(core, T0, 5.0)
    assert all(isinstance(p, Plan) and p.waiter is not None for p in (first, second, third))
    a, b = open_one(core), open_one(core)
    assert a.state is State.IN_USE
    assert b.state is State.IN_USE
    # A return while someone waits goes to the waiter...
    assert isinstance(third, Plan)
    assert give(core, a) is third.waiter
    # ... and with nobody waiting it is closed, not kept.
    out = give(core, b)
    assert isinstance(out, Plan)
    assert out.close == [b]
    assert not out.events  # routine: not logged
    assert core.gauges()["size"] == 1
    core.check_invariants()


# ----------------------------------------------------------------------
# Bounded barging (barge_window)
# ----------------------------------------------------------------------

WINDOW = 0.010
# Just past the window (clear of float rounding at T0 + WINDOW).
PAST = WINDOW + 1e-6


def waiting(core: Core, now: float, timeout: float = 5.0) -> Waiter:
    plan = checkout(core, now, timeout)
    assert isinstance(plan, Plan)
    assert plan.waiter is not None, plan
    core.check_invariants()
    return plan.waiter


def leased_from_the_line(core: Core, now: float) -> Entry:
    """The pool's one connection, just handed to a waiter (so its lease is fresh)."""
    held = take(core, now)
    w = waiting(core, now)
    assert give(core, held, now=now + PAST) is w  # the head has waited out the window
    assert w.entry is held
    return held


def one_just_leased() -> Tuple[Core, Entry, float]:
    """A one-connection pool with a WINDOW, its connection just handed from the
    line (a fresh lease) and in use; and the time then."""
    core = make_core(min_size=1, max_size=1, barge_window=WINDOW)
    fill(core, 1)
    return core, leased_from_the_line(core, T0), T0 + PAST


def test_within_the_window_a_returned_connection_is_the_next_askers() -> None:
    core, held, t = one_just_leased()
    w = waiting(core, t)
    # The returner gets it straight back: no hand-off, the waiter stays in line.
    assert give(core, held, now=t + 0.001) is None
    assert checkout(core, t + 0.001, 0.0) is held
    assert core.gauges()["waiting"] == 1
    assert w.entry is None
    # Once the head has waited out the window, the next return goes to it.
    assert give(core, held, now=t + PAST) is w
    assert w.entry is held
    core.check_invariants()


def test_a_connection_goes_to_the_line_once_it_has_had_its_share_of_the_window() -> None:
    core, held, t = one_just_leased()
    w = waiting(core, t + 0.004)
    # One waiter on one connection: kept from the line for at most
    # window * 1 / 1 * 0.5 = 5 ms since it was last handed from the line.
    assert give(core, held, now=t + 0.004) is None
    assert take(core, t + 0.004) is held
    assert give(core, held, now=t + 0.0051) is w
    core.check_invariants()


def test_a_connection_goes_to_the_line_after_a_spell_of_checkouts() -> None:
    core, held, t = one_just_leased()
    w = waiting(core, t)
    # The clock stands still: neither the window nor the time share runs
    # out, but after four checkouts kept from the line the fifth return is
    # the waiter's.
    for _ in range(4):
        assert give(core, held, now=t) is None
        assert take(core, t) is held
    assert give(core, held, now=t) is w
    assert w.entry is held
    # Its spell starts afresh with the new holder.
    w2 = waiting(core, t)
    assert give(core, held, now=t) is None
    assert w2.entry is None
    core.check_invariants()


def test_a_retry_at_the_head_of_the_line_keeps_the_window_of_the_oldest_wait() -> None:
    # Eight connections: a connection's time share (40 ms / waiting) is long,
    # so only the window decides here.
    core = make_core(min_size=8, max_size=8, barge_window=WINDOW)
    fill(core, 8)
    for _ in range(7):
        take(core)
    held = leased_from_the_line(core, T0)
    t = T0 + PAST
    w = waiting(core, t)
    # A caller whose connection was dead goes to the head of the line...
    retry = checkout(core, t + 0.009, 5.0, retry=True)
    assert isinstance(retry, Plan)
    assert retry.waiter is not None
    assert list(core._waiters) == [retry.waiter, w]
    # ...but the window still runs from w's wait: past it, the next return
    # goes to the line (the retry first) instead of idling for 9 ms more.
    assert give(core, held, now=t + 0.0105) is retry.waiter
    core.check_invariants()


def test_an_arrival_takes_an_idle_connection_only_while_the_head_is_within_its_window() -> None:
    core, held, t = one_just_leased()
    w = waiting(core, t)
    assert give(core, held, now=t) is None
    # Past the head's window, the idle connection is the head's; the arrival
    # is refused (timeout 0) or waits behind it.
    plan = checkout(core, t + PAST, 0.0)
    assert isinstance(plan, Plan)
    assert isinstance(plan.error, PoolTimeout)
    assert plan.wake == [w]
    assert w.entry is held
    core.check_invariants()


def test_a_waiter_whose_window_ends_claims_what_was_left_idle_in_line_order() -> None:
    core = make_core(min_size=2, max_size=2, barge_window=WINDOW)
    fill(core, 2)
    b = take(core, T0)
    a = leased_from_the_line(core, T0)
    t = T0 + PAST
    older = waiting(core, t)
    younger = waiting(core, t + 0.001)
    assert give(core, a, now=t + 0.002) is None  # idle: nobody comes back for it
    # The younger one's window ends first in this script; the older is
    # still served first, and woken, since it does not know.
    plan = core.claim(younger, t + 0.001 + PAST)
    assert plan.wake == [older]
    assert older.entry is a
    assert younger.entry is None
    core.check_invariants()
    give(core, b, now=t + 0.003)  # b came back idle too
    plan = core.claim(younger, t + 0.002 + PAST)
    assert not plan.wake  # the claimer is running: it is not woken
    assert younger.entry is b
    assert core.gauges()["waiting"] == 0
    core.check_invariants()
    # A claim after being served changes nothing.
    assert not core.claim(younger, t + 1.0)


# Claims only where they can matter (lazy_claims, the blocking shell's core)


def lazy_core(size: int) -> Core:
    core = make_core(min_size=size, max_size=size, barge_window=WINDOW)
    core.lazy_claims = True
    fill(core, size)
    return core


def test_a_waiter_behind_a_head_past_its_window_is_not_timed() -> None:
    core = lazy_core(1)
    held = take(core, T0)
    head = waiting(core, T0)
    assert head.timed  # alone in line: its window matters
    within = waiting(core, T0 + 0.005)
    assert within.timed  # the head is within its window: barging may go on
    behind = waiting(core, T0 + PAST)
    assert not behind.timed  # the head is past it: nothing can go idle for this one
    # A retry goes to the head, dated as the head it passes: past the window.
    retry = checkout(core, T0 + PAST, 5.0, retry=True)
    assert isinstance(retry, Plan)
    assert retry.waiter is not None
    assert not retry.waiter.timed
    # Without lazy claims (the asyncio shell), every waiter is timed.
    eager = make_core(min_size=1, max_size=1, barge_window=WINDOW)
    fill(eager, 1)
    take(eager, T0)
    waiting(eager, T0)
    assert waiting(eager, T0 + PAST).timed
    give(core, held, now=T0 + PAST)


def test_no_connection_is_left_idle_for_an_untimed_head() -> None:
    core = lazy_core(2)
    a = take(core, T0)
    b = leased_from_the_line(core, T0)
    t = T0 + PAST
    older = waiting(core, t)  # the line was empty: timed
    assert older.timed
    # Someone joins behind a head within its window: timed too.
    younger = waiting(core, t + 0.001)
    assert younger.timed
    # Within the head's window, on a fresh lease: a return idles for whoever
    # asks first (the head will claim it at its window's end).
    assert give(core, b, now=t + 0.002) is None
    assert core.gauges()["idle"] == 1
    # The older one gives up (interrupted) while b is idle: the younger, now
    # head, is timed and keeps its claim; nothing is handed yet.
    plan = core.give_up(older, t + 0.003, interrupted=True)
    assert not plan.wake
    assert core.gauges()["idle"] == 1
    assert younger.entry is None
    core.check_invariants()
    # Served by its claim, it leaves the line empty.
    assert not core.claim(younger, t + 0.001 + PAST).wake
    assert younger.entry is b
    core.check_invariants()
    give(core, a, now=t + 0.02)


def test_a_return_to_an_untimed_head_goes_to_it_not_to_idle() -> None:
    core = lazy_core(2)
    a = take(core, T0)
    b = leased_from_the_line(core, T0)
    t = T0 + PAST
    head = waiting(core, t)
    assert give(core, b, now=t + 0.001) is None  # idle within the head's window
    # Past the head's window, an arrival first serves the head from idle,
    # then joins the line, now empty: timed.
    plan = checkout(core, t + PAST, 5.0)
    assert isinstance(plan, Plan)
    assert plan.wake == [head]
    assert head.entry is b
    assert plan.waiter is not None
    assert plan.waiter.timed
    # Behind a head past its window and with nothing idle: untimed.
    behind = waiting(core, t + 2 * PAST)
    assert not behind.timed
    core.check_invariants()
    # The first waiter is served; the untimed one heads the line. A return on
    # a fresh lease, within its window, which would idle for a timed head,
    # goes to it: nobody would come to claim it.
    assert give(core, b, now=t + 2 * PAST) is plan.waiter
    assert give(core, b, now=t + 2 * PAST) is behind
    assert core.gauges()["idle"] == 0
    core.check_invariants()
    give(core, a, now=t + 0.05)
    give(core, b, now=t + 0.05)
    core.check_invariants()


def test_fail_fast_serves_waiters_from_idle_connections_before_failing_the_rest() -> None:
    core = make_core(min_size=1, max_size=2, barge_window=WINDOW, fail_fast=True)
    fill(core, 1)
    held = leased_from_the_line(core, T0)
    t = T0 + PAST
    first = waiting(core, t)  # covered by an open, requested now
    second = waiting(core, t)
    ticket = core.claim_open(t)
    assert isinstance(ticket, Entry)
    assert give(core, held, now=t) is None  # idle, within the window
    # The open fails: the idle connection still serves the head of the line.
    plan = core.open_failed(ticket, OSError("refused"), t)
    assert set(plan.wake) == {first, second}
    assert first.entry is held
    assert first.error is None
    assert isinstance(second.error, PoolTimeout)
    core.check_invariants()


def test_a_waiter_passed_until_its_time_ran_out_is_served_not_timed_out() -> None:
    core = make_core(min_size=1, max_size=1, barge_window=1.0)
    fill(core, 1)
    held = take(core)
    w = waiting(core, T0, timeout=0.1)
    assert give(core, held, now=T0) is None  # fresh lease, head within the window
    out = core.give_up(w, T0 + 0.1)
    assert out.error is None
    assert out.entry is held
    assert core.stats()["timeouts"] == 0
    core.check_invariants()


def test_an_interrupted_waiter_leaves_an_idle_connection_idle() -> None:
    core = make_core(min_size=1, max_size=1, barge_window=1.0)
    fill(core, 1)
    held = take(core)
    w = waiting(core, T0)
    give(core, held, now=T0)
    out = core.give_up(w, T0, interrupted=True)
    assert out.entry is None
    assert w.entry is None
    assert core.gauges() == {**core.gauges(), "idle": 1, "waiting": 0, "in_use": 0}
    core.check_invariants()


def test_window_zero_and_null_pools_hand_every_return_to_the_line() -> None:
    for core in (
        make_core(min_size=1, max_size=1, barge_window=0.0),
        make_core(min_size=0, max_size=1, barge_window=60.0, keep_idle=False),
    ):
        plan = core.start(T0)
        entry = open_one(core) if plan.open else None
        if entry is None:
            ticket = checkout(core, T0, 0.0)
            assert isinstance(ticket, Plan)
        held = take(core) if entry is not None else None
        if held is None:
            continue
        w = waiting(core, T0)
        assert give(core, held, now=T0) is w


def test_growth_does_not_open_for_waiters_an_idle_connection_covers() -> None:
    core = make_core(min_size=1, max_size=3, barge_window=WINDOW)
    fill(core, 1)
    held = leased_from_the_line(core, T0)
    t = T0 + PAST
    w = waiting(core, t)
    # The waiter was covered by an open when it joined; once that open is
    # done and the returned connection idles, nothing more is requested.
    assert core.stats()["size"] == 2
    assert give(core, held, now=t) is None
    open_one(core, t)  # the open requested for w serves w
    assert w.entry is not None
    assert core.stats()["size"] == 2
    assert core.housekeep(t).open == 0


def test_resize_repaces_the_window() -> None:
    core, held, t = one_just_leased()
    core.resize(1, 4, t)
    w = waiting(core, t + 0.004)
    assert w is not None
    # Four connections' worth of pace for one waiter: 20 ms, past the window
    # itself, which still bounds the wait.
    assert give(core, held, now=t + 0.009) is None
    take(core, t + 0.009)
    assert give(core, held, now=t + 0.004 + PAST) is w


@pytest.mark.parametrize("window", [0.0, 0.3, 2.0])
def test_barging_invariants_hold_through_a_random_walk(window: float) -> None:
    import random

    rng = random.Random(11)
    core = make_core(min_size=1, max_size=3, max_lifetime=40.0, max_idle=5.0, barge_window=window)
    core.start(T0)
    now = T0
    held: List[Entry] = []
    waiters: List[Waiter] = []
    tickets: List[Entry] = []

    def woken(plan: Plan) -> None:
        for w in plan.wake:
            waiters.remove(w)
            if w.entry is not None:
                held.append(w.entry)

    for _ in range(6000):
        now += rng.random() * 0.2
        action = rng.randrange(7)
        if action == 0:
            got = checkout(core, now, rng.choice([0.0, 5.0]))
            if isinstance(got, Entry):
                held.append(got)
            else:
                woken(got)
                if got.entry is not None:
                    held.append(got.entry)
                elif got.waiter is not None:
                    waiters.append(got.waiter)
        elif action == 1 and held:
            entry = held.pop(rng.randrange(len(held)))
            overdue = bool(core._waiters) and now - core._waiters[0].since >= window
            out = core.checkin(entry, entry.conn, rng.choice([CLEAN, CLEAN, CLEAN, DIRTY]), now)
            if isinstance(out, Waiter):
                held.append(out.entry)  # type: ignore[arg-type]
                waiters.remove(out)
            elif isinstance(out, Plan):
                if out.clean is not None:
                    woken(core.cleaned(out.clean, now))
            elif overdue:
                raise AssertionError("a return went idle past the head's window")
        elif action == 2:
            ticket = core.claim_open(now)
            if isinstance(ticket, Entry):
                tickets.append(ticket)
        elif action == 3 and tickets:
            ticket = tickets.pop(0)
            core.connected(ticket, FakeConn(), now)
            woken(core.opened(ticket, (False,), probe, now))
        elif action == 4 and waiters:
            w = rng.choice(waiters)
            if now - w.since >= window:  # its window ended: the shell claims
                plan = core.claim(w, now)
                woken(plan)
                if w.entry is not None:
                    waiters.remove(w)
                    held.append(w.entry)
                # Nothing is left idle for a waiter past its window.
                assert w.entry is not None or not core._idle
        elif action == 5 and waiters:
            w = waiters.pop(rng.randrange(len(waiters)))
            out = core.give_up(w, now, interrupted=rng.random() < 0.5)
            woken(out)
            if out.entry is not None:
                held.append(out.entry)
        elif action == 6:
            core.housekeep(now)
        core.check_invariants()
        assert len({id(e) for e in held}) == len(held), "handed out twice"
        in_line = list(core._waiters)
        assert in_line == sorted(in_line, key=lambda w: w.since) or window == 0.0
    assert core.stats()["requests"] > 0
