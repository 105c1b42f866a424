"""What the core records for the metrics (issue 17), on a manual clock: wait,
use and connect times in fixed buckets, and the figures exporters read."""

from __future__ import annotations

import pytest

from pgreservoir._core import CLEAN, Entry, Plan
from pgreservoir.stats import BUCKETS, COUNTER_KEYS, GAUGE_KEYS, TIMING_KEYS, DurationHistogram

from .fakes import FakeConn, make_core
from .test_core import T0, checkout, fill, probe, take


def test_a_duration_on_a_bound_counts_in_that_bounds_bucket() -> None:
    # Upper bounds are inclusive, as Prometheus' le and OpenTelemetry's buckets.
    hist = DurationHistogram()
    hist.record(BUCKETS[3])
    hist.record(BUCKETS[3] * 1.01)
    hist.record(1000.0)  # past the last bound: the overflow bucket
    assert hist.counts[3] == 1
    assert hist.counts[4] == 1
    assert hist.counts[-1] == 1
    assert sum(hist.counts) == 3
    assert hist.total_seconds == pytest.approx(BUCKETS[3] * 2.01 + 1000.0)
    assert hist.sums[3] == BUCKETS[3]
    assert hist.max_seconds == 1000.0


def test_quantiles_are_estimated_within_their_bucket_and_capped_by_the_max() -> None:
    hist = DurationHistogram()
    assert hist.quantile_ms(0.5) == 0.0
    for _ in range(99):
        hist.record(0.003)  # (0.0025, 0.005]
    hist.record(0.2)
    p50 = hist.quantile_ms(0.5)
    assert 2.5 < p50 <= 5.0
    assert hist.quantile_ms(1.0) == 200.0
    assert hist.quantile_ms(0.99) <= 5.0


def test_figures_follow_checkouts_waits_and_returns() -> None:
    core = make_core(min_size=1, max_size=1)
    (entry,) = fill(core, 1)
    fig = core.figures()
    assert (fig.idle, fig.used, fig.pending_requests) == (1, 0, 0)
    assert (fig.idle_min, fig.idle_max, fig.max) == (1, 1, 1)
    assert sum(fig.create_counts) == 1

    got = take(core, T0 + 1.0)  # served at once: a zero wait
    waiting = checkout(core, T0 + 1.0, 5.0)
    assert isinstance(waiting, Plan)
    assert waiting.waiter is not None
    fig = core.figures()
    assert (fig.idle, fig.used, fig.pending_requests) == (0, 1, 1)
    assert fig.wait_counts[0] == 1

    # Held 0.3 s, then handed to the waiter, who waited 0.3 s.
    handed = core.checkin(got, FakeConn(), CLEAN, T0 + 1.3)
    assert handed is waiting.waiter
    fig = core.figures()
    assert sum(fig.use_counts) == 1
    assert fig.use_counts[BUCKETS.index(0.5)] == 1  # (0.25, 0.5]
    assert fig.use_sums[BUCKETS.index(0.5)] == pytest.approx(0.3)
    assert sum(fig.wait_counts) == 2
    assert fig.wait_counts[BUCKETS.index(0.5)] == 1
    assert fig.pending_requests == 0
    assert fig.used == 1

    # A caller that gives up after its timeout: a wait, and a timeout.
    late = checkout(core, T0 + 2.0, 0.5)
    assert isinstance(late, Plan)
    assert late.waiter is not None
    plan = core.give_up(late.waiter, T0 + 2.5)
    assert plan.error is not None
    fig = core.figures()
    assert fig.timeouts == 1
    assert sum(fig.wait_counts) == 3
    stats = core.stats()
    assert stats["use_ms_total"] == pytest.approx(300.0)
    assert stats["use_ms_max"] == pytest.approx(300.0)
    assert stats["requests"] == 3
    assert entry is got
    core.check_invariants()


def test_a_connection_the_caller_opens_itself_waited_for_its_connect() -> None:
    # psycopg2.pool semantics: the caller's wait is its own connect.
    core = make_core(min_size=0, max_size=1, inline=True)
    core.start(T0)
    plan = checkout(core, T0, 0.0)
    assert isinstance(plan, Plan)
    ticket = plan.ticket
    assert isinstance(ticket, Entry)
    core.connected(ticket, FakeConn(), T0 + 0.004)
    opened = core.opened(ticket, (False,), probe, T0 + 0.004)
    assert opened.entry is ticket
    fig = core.figures()
    assert fig.wait_counts[BUCKETS.index(0.005)] == 1
    assert fig.create_counts[BUCKETS.index(0.005)] == 1
    assert core.stats()["connect_ms_max"] == pytest.approx(4.0)


def test_stats_has_every_declared_key() -> None:
    core = make_core(min_size=1, max_size=1)
    fill(core, 1)
    assert set(GAUGE_KEYS) | set(COUNTER_KEYS) | set(TIMING_KEYS) <= set(core.stats())
