"""The blocking shell over the core, with a fake driver (threads, no server)."""

from __future__ import annotations

import pickle
import random
import threading
import time
import weakref
from typing import Any, Callable, Dict, List

import psycopg2.pool
import pytest

from pgreservoir import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from pgreservoir._core import DIRTY
from pgreservoir._core.records import State
from pgreservoir._sync.shell import SyncPool
from pgreservoir.stats import WaitHistogram

from .fakes import Clock, FakeConn, FakeDriver, check_invariant, make_shell

DEADLINE = 10.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def start_getter(engine: SyncPool, results: List[Any], timeout: float = 5.0) -> threading.Thread:
    def run() -> None:
        try:
            results.append(engine.acquire(timeout))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_min_size_opened_in_background_and_wait_returns() -> None:
    engine = make_shell(min_size=3)
    engine.wait(DEADLINE)
    assert engine.stats()["size"] == 3
    assert engine.stats()["idle"] == 3
    check_invariant(engine)
    engine.close(5.0)


def test_lifo_reuse_and_no_double_hand_out() -> None:
    engine = make_shell(min_size=2)
    engine.wait(DEADLINE)
    a = engine.acquire()
    b = engine.acquire()
    assert a is not b
    engine.release(a)
    engine.release(b)
    assert engine.acquire() is b  # most recently returned first
    check_invariant(engine)
    engine.close(5.0)


def test_waiters_are_served_first_in_first_out() -> None:
    engine = make_shell(max_size=1)
    held = engine.acquire()
    order: List[Any] = []
    threads = []
    for i in range(5):
        results: List[Any] = []
        threads.append((i, start_getter(engine, results), results))
        wait_until(_waiting_is(engine, i + 1), f"waiter {i} in line")
    conn = held
    for i, thread, results in threads:
        engine.release(conn)
        thread.join(DEADLINE)
        assert results
        assert results[0] is held
        order.append(i)
        conn = results[0]
    assert order == [0, 1, 2, 3, 4]
    engine.release(conn)
    check_invariant(engine)
    engine.close(5.0)


def test_returning_thread_cannot_barge_past_a_waiter() -> None:
    engine = make_shell(max_size=1)
    conn = engine.acquire()
    results: List[Any] = []
    thread = start_getter(engine, results)
    wait_until(lambda: engine.stats()["waiting"] == 1, "the waiter")
    engine.release(conn)
    # The connection already belongs to the waiter: the returner gets nothing.
    with pytest.raises(PoolTimeout):
        engine.acquire(0)
    thread.join(DEADLINE)
    assert results == [conn]
    check_invariant(engine)
    engine.release(conn)
    engine.close(5.0)


def test_timeout_message_names_pool_size_and_waiters() -> None:
    engine = make_shell(max_size=1, name="orders")
    engine.acquire()
    with pytest.raises(PoolTimeout) as info:
        engine.acquire(0.05)
    message = str(info.value)
    assert "'orders'" in message
    assert "size 1/1" in message
    assert "waiting" in message
    assert info.value.pool_name == "orders"
    assert info.value.snapshot["in_use"] == 1
    assert isinstance(info.value, psycopg2.pool.PoolError)
    stats = engine.stats()
    assert stats["timeouts"] == 1
    assert stats["waiting"] == 0
    check_invariant(engine)
    engine.close(0.0)


def test_max_waiting_rejects_at_once() -> None:
    engine = make_shell(max_size=1, max_waiting=2)
    engine.acquire()
    results: List[Any] = []
    threads = [start_getter(engine, results, timeout=DEADLINE) for _ in range(2)]
    wait_until(lambda: engine.stats()["waiting"] == 2, "two waiters")
    with pytest.raises(TooManyRequests, match="max_waiting=2"):
        engine.acquire(DEADLINE)
    assert engine.stats()["rejected"] == 1
    engine.close(0.0)
    for thread in threads:
        thread.join(DEADLINE)
    assert all(isinstance(r, PoolClosed) for r in results)


def test_grows_only_while_callers_wait() -> None:
    engine = make_shell(min_size=1, max_size=4)
    engine.wait(DEADLINE)
    a = engine.acquire()
    engine.release(a)
    b = engine.acquire()
    assert engine.stats()["size"] == 1  # reused, no growth
    c = engine.acquire(DEADLINE)  # has to wait: one connection is opened for it
    assert c is not b
    assert engine.stats()["size"] == 2
    check_invariant(engine)
    engine.close(0.0)


def test_waiter_served_by_a_returned_connection_while_connect_hangs() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=1, max_size=2)
    engine.wait(DEADLINE)
    held = engine.acquire()
    driver.connect_gate = threading.Event()  # the next connect hangs
    results: List[Any] = []
    thread = start_getter(engine, results, timeout=DEADLINE)
    wait_until(lambda: engine.stats()["opening"] == 1, "a connect in progress")
    # The hanging connect holds no lock: returning and taking still work.
    engine.release(held)
    thread.join(DEADLINE)
    assert results == [held]
    driver.connect_gate.set()
    wait_until(lambda: engine.stats()["idle"] == 1, "the late connection parked idle")
    check_invariant(engine)
    engine.close(0.0)


def test_expired_connection_replaced_at_checkout_and_at_return() -> None:
    clock = Clock()
    engine = make_shell(clock=clock, min_size=1, max_lifetime=100.0)
    engine.wait(DEADLINE)
    first = engine.acquire()
    engine.release(first)
    clock.advance(101)
    second = engine.acquire(DEADLINE)
    assert second is not first
    assert first.closed
    clock.advance(101)
    engine.release(second)  # expired while out: closed on return
    assert second.closed
    wait_until(lambda: engine.stats()["idle"] == 1, "refill to min_size")
    assert engine.stats()["connections_closed"] == 2
    check_invariant(engine)
    engine.close(5.0)


def test_lifetime_has_jitter() -> None:
    clock = Clock()
    engine = make_shell(clock=clock, min_size=20, max_size=20, max_lifetime=100.0)
    engine.wait(DEADLINE)
    expiries = {round(e.expires - e.created, 6) for e in engine.core._idle}
    assert len(expiries) > 1
    assert all(95.0 <= x <= 100.0 for x in expiries)
    engine.close(5.0)


def test_dirty_return_is_cleaned_and_kept() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    conn.in_transaction = True
    engine.release(conn)
    assert driver.cleaned == 1
    assert not conn.in_transaction
    assert engine.acquire() is conn
    check_invariant(engine)
    engine.close(0.0)


def test_changed_settings_are_put_back_at_check_in_without_a_clean_up() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    baseline = conn.autocommit
    conn.autocommit = not baseline
    engine.release(conn)
    assert driver.restored == 1
    assert driver.cleaned == 0  # no reserved slot, no watchdog, no round trip
    assert conn.autocommit is baseline
    assert engine.acquire() is conn
    check_invariant(engine)
    engine.close(0.0)


def test_changed_settings_go_through_reset_when_there_is_one() -> None:
    driver = FakeDriver()
    resets: List[Any] = []
    engine = make_shell(driver, min_size=1, reset=resets.append)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    conn.autocommit = not conn.autocommit
    engine.release(conn)
    assert resets == [conn]
    assert driver.cleaned == 1
    assert driver.restored == 0
    check_invariant(engine)
    engine.close(0.0)


def test_clean_return_does_no_work() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    engine.release(conn)
    assert driver.cleaned == 0
    engine.close(5.0)


def test_failed_rollback_discards_and_frees_the_slot() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=0, max_size=1)
    conn = engine.acquire(DEADLINE)
    conn.in_transaction = True
    driver.fail_clean = True
    engine.release(conn)
    assert conn.closed
    assert engine.stats()["size"] == 0
    driver.fail_clean = False
    other = engine.acquire(DEADLINE)  # the slot is usable again
    assert other is not conn
    check_invariant(engine)
    engine.close(0.0)


def test_broken_return_discarded_and_refilled() -> None:
    engine = make_shell(min_size=2)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    conn.closed = 2  # what psycopg2 sets when a query finds the server gone
    engine.release(conn)
    wait_until(lambda: engine.stats()["idle"] == 2, "refill")
    stats = engine.stats()
    assert stats["connections_lost"] == 1
    assert stats["connections_opened"] == 3
    check_invariant(engine)
    engine.close(5.0)


def test_dead_idle_connection_never_handed_out() -> None:
    clock = Clock()
    engine = make_shell(clock=clock, min_size=2)
    engine.wait(DEADLINE)
    for entry in engine.core._idle:
        entry.conn.dead = True
    clock.advance(1.0)
    conn = engine.acquire(DEADLINE)
    assert not conn.dead
    assert engine.stats()["connections_lost"] == 2
    check_invariant(engine)
    engine.close(0.0)


def test_every_hand_out_is_probed_and_idle_ones_pinged() -> None:
    clock = Clock()
    driver = FakeDriver()
    engine = make_shell(driver, clock=clock, min_size=1, check_idle_after=10.0)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    engine.release(conn)
    probes = driver.probes
    assert engine.acquire() is conn  # returned a moment ago: still probed
    assert driver.probes == probes + 1
    assert driver.pings == 0
    engine.release(conn)
    conn.dead = True  # the server hung up right after the return
    fresh = engine.acquire(DEADLINE)
    assert fresh is not conn
    assert conn.closed
    engine.release(fresh)
    clock.advance(11)
    engine.release(engine.acquire())  # idle past check_idle_after: one round trip
    assert driver.pings == 1
    engine.close(0.0)


def test_foreign_and_double_return_raise_and_change_nothing() -> None:
    engine = make_shell(min_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    before = engine.stats()
    with pytest.raises(PoolError, match="unkeyed"):
        engine.release(FakeConn())
    assert engine.stats() == before
    engine.release(conn)
    before = engine.stats()
    with pytest.raises(PoolError, match="already returned"):
        engine.release(conn)
    assert engine.stats() == before
    check_invariant(engine)
    engine.close(5.0)


def test_configure_failure_discards_the_connection() -> None:
    def configure(conn: Any) -> None:
        conn.in_transaction = True  # leaves a transaction open

    engine = make_shell(min_size=0, max_size=1, configure=configure)
    with pytest.raises(PoolTimeout) as info:
        engine.acquire(0.3)
    assert "configure() left a transaction open" in str(info.value.__cause__)
    assert engine.stats()["connect_errors"] >= 1
    check_invariant(engine)
    engine.close(0.0)


def test_reset_runs_on_every_return_and_failure_discards() -> None:
    calls: List[Any] = []

    def reset(conn: Any) -> None:
        calls.append(conn)
        if len(calls) == 2:
            raise RuntimeError("reset failed")

    engine = make_shell(min_size=1, reset=reset)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    engine.release(conn)
    assert calls == [conn]
    assert not conn.closed
    conn = engine.acquire()
    engine.release(conn)
    assert conn.closed
    check_invariant(engine)
    engine.close(5.0)


def test_connect_errors_become_the_timeout_cause() -> None:
    driver = FakeDriver()
    driver.fail_connect = OSError("Connection refused")
    engine = make_shell(driver, min_size=1)
    with pytest.raises(PoolTimeout, match="Connection refused") as info:
        engine.acquire(0.3)
    assert isinstance(info.value.__cause__, OSError)
    driver.fail_connect = None
    assert engine.acquire(DEADLINE) is not None  # recovers by itself
    engine.close(0.0)


def test_shrinks_to_min_size_after_max_idle() -> None:
    clock = Clock()
    engine = make_shell(clock=clock, min_size=1, max_size=3, max_idle=10.0)
    conns = [engine.acquire(DEADLINE) for _ in range(3)]
    for conn in conns:
        engine.release(conn)
    assert engine.stats()["size"] == 3
    engine.housekeep()
    assert engine.stats()["size"] == 3  # not idle long enough yet
    clock.advance(11)
    engine.housekeep()
    assert engine.stats()["size"] == 1
    check_invariant(engine)
    engine.close(5.0)


def test_resize_shrinks_and_grows() -> None:
    engine = make_shell(min_size=4, max_size=4)
    engine.wait(DEADLINE)
    held = [engine.acquire() for _ in range(3)]
    engine.resize(1, 2)
    assert engine.stats()["size"] == 3  # the idle one closed now; busy ones still count
    engine.release(held[0])  # above max_size: closed on return
    assert held[0].closed
    engine.release(held[1])  # at max_size: kept
    assert not held[1].closed
    engine.release(held[2])
    assert engine.stats()["size"] == 2
    engine.resize(3, 5)
    engine.wait(DEADLINE)
    assert engine.stats()["size"] == 3
    assert engine.core.max_size == 5
    check_invariant(engine)
    engine.close(5.0)


def test_close_wakes_waiters_and_closes_everything() -> None:
    engine = make_shell(min_size=2, max_size=2)
    engine.wait(DEADLINE)
    idle_conn = engine.acquire()
    engine.release(idle_conn)
    held = [engine.acquire(), engine.acquire()]
    results: List[Any] = []
    thread = start_getter(engine, results, timeout=DEADLINE)
    wait_until(lambda: engine.stats()["waiting"] == 1, "a waiter")
    engine.close(timeout=0.05)
    thread.join(DEADLINE)
    assert isinstance(results[0], PoolClosed)
    assert all(c.closed for c in held)  # forced after the timeout
    with pytest.raises(PoolClosed):
        engine.acquire()
    engine.release(held[0])  # a late return of a forced connection is accepted
    engine.close(5.0)  # idempotent
    assert engine.stats()["size"] == 0
    assert not engine.background_alive


def test_close_waits_for_connections_in_use() -> None:
    engine = make_shell(min_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire()
    closer = threading.Thread(target=engine.close, args=(DEADLINE,))
    closer.start()
    wait_until(lambda: engine.core.closed, "close started")
    assert not conn.closed
    engine.release(conn)  # closed on return
    closer.join(DEADLINE)
    assert not closer.is_alive()
    assert conn.closed


def test_inline_mode_opens_in_the_caller_and_raises_connect_errors() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, inline=True, start=False, min_size=2, max_size=3)
    engine.fill()
    assert engine.stats()["idle"] == 2
    engine.start()
    conns = [engine.acquire(0) for _ in range(3)]
    assert len({id(c) for c in conns}) == 3
    with pytest.raises(PoolTimeout):
        engine.acquire(0)
    engine.release(conns[0])
    driver.fail_connect = OSError("refused")
    engine.release(conns[1], close=True)
    assert engine.acquire(0) is conns[0]  # the idle one first
    with pytest.raises(OSError, match="refused"):
        engine.acquire(0)  # then room for one more: opened inline, and that fails
    check_invariant(engine)
    engine.close(0.0)


def test_many_threads_no_double_hand_out_no_leak() -> None:
    engine = make_shell(min_size=2, max_size=6, timeout=DEADLINE)
    owners: dict[int, int] = {}
    guard = threading.Lock()
    errors: List[BaseException] = []
    counts = [0] * 24

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            for _ in range(300):
                conn = engine.acquire()
                with guard:
                    assert id(conn) not in owners, "handed to two callers"
                    owners[id(conn)] = index
                if rng.random() < 0.1:
                    conn.in_transaction = True
                with guard:
                    del owners[id(conn)]
                engine.release(conn, close=rng.random() < 0.02)
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []
    assert all(c == 300 for c in counts)
    stats = engine.stats()
    assert stats["in_use"] == 0
    assert stats["size"] <= 6
    assert stats["requests"] == 24 * 300
    check_invariant(engine)
    engine.close(5.0)
    assert engine.stats()["size"] == 0


def test_wait_histogram_percentiles() -> None:
    hist = WaitHistogram()
    assert hist.percentile_ms(0.5, 0) == 0.0
    for _ in range(10):
        hist.record(0.010)
    hist.record(1.0)
    # 89 requests were served without waiting: p50 is 0
    assert hist.percentile_ms(0.5, 89) == 0.0
    p99 = hist.percentile_ms(0.99, 89)
    assert 10.0 <= p99 <= 12.0
    assert hist.percentile_ms(1.0, 89) == 1000.0
    assert hist.max_seconds == 1.0


def test_errors_pickle() -> None:
    err = PoolTimeout("pool 'x': no connection", pool_name="x", snapshot={"size": 1})
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is PoolTimeout
    assert str(copy) == str(err)
    assert copy.pool_name == "x"
    assert copy.snapshot == {"size": 1}


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"min_size": -1}, ValueError, "min_size must be >= 0"),
        ({"max_size": 0}, ValueError, "max_size must be >= 1"),
        ({"min_size": 5, "max_size": 2}, ValueError, "must not exceed"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime must be > 0"),
        ({"max_idle": float("nan")}, ValueError, "max_idle"),
        ({"max_waiting": -2}, ValueError, "max_waiting"),
        ({"max_size": 2.5}, TypeError, "max_size must be an int"),
        ({"max_size": True}, TypeError, "max_size must be an int"),
        ({"configure": 3}, TypeError, "configure must be a callable"),
    ],
)
def test_bad_options_rejected(options: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make_shell(start=False, **options)


def _waiting_is(target: Any, count: int) -> Callable[[], bool]:
    return lambda: bool(target.stats()["waiting"] == count)


def test_fail_fast_wakes_waiters_when_a_connect_fails() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=0, max_size=2, fail_fast=True, timeout=DEADLINE)
    conn = engine.acquire()
    driver.fail_connect = OSError("Connection refused")
    results: List[Any] = []
    thread = start_getter(engine, results, timeout=DEADLINE)
    thread.join(DEADLINE)
    assert isinstance(results[0], PoolTimeout)
    assert isinstance(results[0].__cause__, OSError)
    with pytest.raises(PoolTimeout, match="Connection refused"):
        engine.acquire(DEADLINE)  # known unreachable: no wait at all
    engine.release(conn)
    assert engine.acquire(DEADLINE) is conn  # an idle connection is still served
    engine.close(0.0)


def test_a_dead_connection_makes_its_idle_siblings_get_a_round_trip() -> None:
    clock = Clock()
    driver = FakeDriver()
    engine = make_shell(driver, clock=clock, min_size=3, max_size=3)
    engine.wait(DEADLINE)
    a, b, c = (engine.acquire() for _ in range(3))
    engine.release(a)
    engine.release(b)
    c.dead = True
    engine.release(c)  # broken: siblings become suspect
    clock.advance(1.0)
    engine.acquire()
    assert driver.pings == 1
    engine.close(0.0)


def test_garbage_collected_connection_is_reaped() -> None:
    import gc

    engine = make_shell(min_size=0, max_size=1)
    engine.acquire(DEADLINE)  # dropped at once
    gc.collect()
    engine.housekeep()
    stats = engine.stats()
    assert stats["in_use"] == 0
    assert stats["size"] == 0
    assert stats["connections_leaked"] == 1
    check_invariant(engine)
    assert engine.acquire(DEADLINE) is not None
    engine.close(0.0)


def test_closed_connections_are_not_reported_as_collected() -> None:
    import gc

    engine = make_shell(min_size=0, max_size=1)
    engine.release(engine.acquire(DEADLINE), close=True)
    gc.collect()
    engine.housekeep()
    assert engine.stats()["connections_leaked"] == 0
    engine.close(0.0)


def test_a_connection_left_idle_goes_to_the_waiter_when_its_window_ends() -> None:
    # The clock stands still: the returned connection idles (its holder may
    # keep it within the window) and only the waiter's own wake-up at the
    # end of its window (real time) can serve it, long before its timeout.
    clock = Clock()
    engine = make_shell(clock=clock, max_size=1, barge_window=0.3, timeout=60.0)
    held = engine.acquire()
    results: List[Any] = []
    thread = start_getter(engine, results, timeout=60.0)
    wait_until(_waiting_is(engine, 1), "the waiter in line")
    engine.release(held)
    assert engine.stats()["idle"] == 1  # not handed over: within the window
    thread.join(DEADLINE)
    assert results == [held]
    assert engine.stats()["timeouts"] == 0
    engine.release(held)
    check_invariant(engine)
    engine.close(5.0)


def test_a_hot_loop_cannot_starve_a_waiter() -> None:
    # One connection; a thread takes it back as soon as it returns it. With a
    # window, the waiters still get it, in turn, every time.
    engine = make_shell(max_size=1, barge_window=0.005, timeout=30.0)
    done = threading.Event()
    hot_loops = [0]

    def hot() -> None:
        while not done.is_set():
            conn = engine.acquire()
            hot_loops[0] += 1
            engine.release(conn)

    served: List[Any] = []

    def patient() -> None:
        for _ in range(20):
            conn = engine.acquire()
            served.append(conn)
            engine.release(conn)

    hot_thread = threading.Thread(target=hot, daemon=True)
    hot_thread.start()
    wait_until(lambda: hot_loops[0] > 100, "the hot loop running")
    waiters = [threading.Thread(target=patient, daemon=True) for _ in range(3)]
    for thread in waiters:
        thread.start()
    for thread in waiters:
        thread.join(DEADLINE * 2)
    done.set()
    hot_thread.join(DEADLINE)
    assert len(served) == 60
    assert not hot_thread.is_alive()
    stats = engine.stats()
    assert stats["timeouts"] == 0
    assert stats["in_use"] == 0
    assert stats["size"] == 1
    check_invariant(engine)
    engine.close(5.0)


@pytest.mark.parametrize("window", [0.0, 0.002, 0.05])
def test_many_threads_with_a_window_never_double_hand_out_or_lose_a_slot(window: float) -> None:
    engine = make_shell(max_size=3, barge_window=window, timeout=30.0)
    holders: Dict[int, int] = {}
    lock = threading.Lock()
    errors: List[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                conn = engine.acquire()
                with lock:
                    assert id(conn) not in holders, "handed to two callers"
                    holders[id(conn)] = seed
                if rng.random() < 0.1:
                    time.sleep(0.0005)
                with lock:
                    del holders[id(conn)]
                engine.release(conn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 3)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert errors == []
    stats = engine.stats()
    assert stats["requests"] == 12 * 300
    assert stats["in_use"] == 0
    assert stats["waiting"] == 0
    assert stats["size"] == 3
    check_invariant(engine)
    engine.close(5.0)


# ---------------------------------------------------------------------------
# Issue 15: slots stranded by an exception a signal handler raised
# ---------------------------------------------------------------------------
# Each test strands a slot as an exception landing in that window would:
# it calls the core as the shell does and drops what it got.


def _housekeep_until(engine: SyncPool, predicate: Callable[[], bool], what: str) -> None:
    """Run housekeeping until ``predicate()``: the maintenance thread's own pass
    may hold an entry for a moment (its idle-socket probe list), so one pass
    alone may find it still referenced."""

    def done() -> bool:
        engine.housekeep()
        return predicate()

    wait_until(done, what)


def _strand_checkout(engine: SyncPool) -> Any:
    """A checkout whose answer (an entry still holding its connection) is
    dropped; a weak reference to that connection."""
    with engine._lock:
        got: Any = engine.core.checkout(engine.clock(), 1.0)
    assert type(got).__name__ == "Entry"
    assert got.conn is not None
    return weakref.ref(got.conn)


def test_an_entry_stranded_between_checkout_and_hand_out_is_freed() -> None:
    driver = FakeDriver()
    engine = make_shell(driver, min_size=1, max_size=1)
    engine.wait(DEADLINE)
    stranded = _strand_checkout(engine)
    _housekeep_until(engine, lambda: engine.stats()["in_use"] == 0, "the entry freed")
    stats = engine.stats()
    assert stats["in_use"] == 0
    assert stats["size"] + stats["opening"] >= 1
    assert stranded() is None
    # Closed by the pool, not left to the collector:
    assert ("closed", "a check or clean-up of it was interrupted") in engine.events  # type: ignore[attr-defined]
    check_invariant(engine)
    conn = engine.acquire(DEADLINE)  # the only slot serves again
    engine.release(conn)
    engine.close(0.0)


def test_an_entry_whose_holder_lives_is_not_freed() -> None:
    engine = make_shell(min_size=1, max_size=1)
    engine.wait(DEADLINE)
    with engine._lock:
        held: Any = engine.core.checkout(engine.clock(), 1.0)
    engine.housekeep()
    assert engine.stats()["in_use"] == 1
    assert held.conn is not None
    assert not held.conn.closed
    engine._hand_back(held)
    assert engine.stats()["idle"] == 1
    check_invariant(engine)
    engine.close(0.0)


def test_a_clean_up_stranded_before_it_started_is_freed() -> None:
    engine = make_shell(min_size=1, max_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire(DEADLINE)
    conn.in_transaction = True  # DIRTY: the core reserves it for a clean-up
    entry = engine.entry_of(conn)
    with engine._lock:
        plan: Any = engine.core.checkin(entry, conn, DIRTY, engine.clock())
    assert plan.clean is not None
    del plan, entry
    _housekeep_until(engine, lambda: bool(conn.closed), "the reserved entry freed")
    check_invariant(engine)
    got = engine.acquire(DEADLINE)
    assert got is not conn
    assert conn.closed
    engine.release(got)
    engine.close(0.0)


def test_a_waiter_whose_thread_left_is_taken_out_of_line() -> None:
    engine = make_shell(min_size=1, max_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire(DEADLINE)
    with engine._lock:
        plan: Any = engine.core.checkout(engine.clock(), 5.0)
    assert plan.waiter is not None
    del plan
    _housekeep_until(engine, lambda: engine.stats()["waiting"] == 0, "the waiter freed")
    engine.release(conn)  # to idle, not to a caller who is gone
    assert engine.stats()["idle"] == 1
    engine.close(0.0)


def test_a_slot_lost_from_every_container_mid_call_is_counted_out() -> None:
    engine = make_shell(min_size=1, max_size=1)
    engine.wait(DEADLINE)
    with engine._lock:
        engine.core._idle.pop()  # an exception right after this, inside checkout()
    engine.housekeep()
    check_invariant(engine)
    conn = engine.acquire(DEADLINE)
    engine.release(conn)
    engine.close(0.0)


def test_a_waiter_taken_out_of_line_by_a_cut_short_call_times_out() -> None:
    engine = make_shell(min_size=1, max_size=1)
    engine.wait(DEADLINE)
    conn = engine.acquire(DEADLINE)
    with engine._lock:
        plan: Any = engine.core.checkout(engine.clock(), 5.0)
        engine.core._waiters.popleft()  # _hand_off() cut short after this
        # ... and a connection idle (as within a barging window).
        entry = engine.core.in_use.pop(id(conn))
        entry.conn, entry.state = conn, State.IDLE
        engine.core._idle.append(entry)
    with pytest.raises(PoolTimeout):
        engine._wait(plan.waiter, engine.clock())
    engine.close(0.0)
