"""Refusals and timeouts are cheap and leave nothing behind (issue 11).

Programs that use psycopg2.pool retry "connection pool exhausted" in a loop,
so a refusal is on their hot path: it must not make garbage for the cycle
collector, nor format what nobody reads. What the error tells (message,
pool name, snapshot, notes) must not change for it.
"""

from __future__ import annotations

import gc
import pickle
import socket
import threading
import traceback
from typing import Any, Callable, Iterator

import psycopg2.pool
import pytest

from pgreservoir import ConnectionPool, PoolTimeout
from pgreservoir import pool as dropin
from pgreservoir.drivers import _sockets
from support import Flavor


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """The cycle collector off, after a full collection: any cycle made meanwhile stays
    for the test's own ``gc.collect()`` to count."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _refuse_many(getconn: Callable[[], Any], times: int = 200) -> int:
    refused = 0
    for _ in range(times):
        try:
            getconn()
        except psycopg2.pool.PoolError:
            refused += 1
    return refused


@pytest.mark.usefixtures("collector_paused")
def test_drop_in_exhausted_makes_no_garbage(postgres_dsn: str) -> None:
    pool = dropin.ThreadedConnectionPool(1, 1, postgres_dsn)
    try:
        held = pool.getconn()
        assert _refuse_many(pool.getconn) == 200
        assert gc.collect() == 0
        pool.putconn(held)
    finally:
        pool.closeall()


@pytest.mark.usefixtures("collector_paused")
def test_connection_pool_refusals_and_timeouts_make_no_garbage(
    postgres_dsn: str, flavor: Flavor
) -> None:
    with ConnectionPool(postgres_dsn, min_size=1, max_size=1, **flavor.pool_kwargs) as pool:
        pool.wait(30)
        held = pool.getconn()
        assert _refuse_many(lambda: pool.getconn(timeout=0)) == 200
        # Timeouts after a wait in line take the other road (the waiter's).
        assert _refuse_many(lambda: pool.getconn(timeout=0.001), times=20) == 20
        assert gc.collect() == 0
        pool.putconn(held)
        assert pool.stats()["timeouts"] == 220


def test_drop_in_exhausted_still_tells_everything(postgres_dsn: str) -> None:
    pool = dropin.ThreadedConnectionPool(
        1, 1, postgres_dsn, pool_options=dropin.PoolOptions(name="orders")
    )
    try:
        held = pool.getconn()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn()
        err = info.value
        assert str(err) == "connection pool exhausted"
        assert err.args == ("connection pool exhausted",)
        assert err.pool_name == "orders"
        assert err.snapshot["in_use"] == 1
        assert err.snapshot["size"] == 1
        assert err.__notes__[0].startswith("pgreservoir: pool 'orders': no connection available")
        assert "PoolOptions(timeout=" in err.__notes__[1]
        err.add_note("mine")
        assert err.__notes__[-1] == "mine"
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is PoolTimeout
        assert str(copy) == "connection pool exhausted"
        assert copy.pool_name == "orders"
        assert copy.snapshot == err.snapshot
        assert copy.__notes__ == err.__notes__
        pool.putconn(held)
    finally:
        pool.closeall()


def test_drop_in_exhausted_is_raised_once_by_the_drop_in(postgres_dsn: str) -> None:
    # Threads retrying "exhausted" in a loop spend the GIL on refusals, and
    # raising is most of a refusal's cost: the shell hands the refusal back
    # and the drop-in raises it once (psycopg2.pool raises from getconn too).
    pool = dropin.ThreadedConnectionPool(1, 1, postgres_dsn)
    try:
        held = pool.getconn()
        with pytest.raises(psycopg2.pool.PoolError) as info:
            pool.getconn()
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert frames[1:] == ["getconn", "_refused"], frames
        assert pool._shell.stats()["timeouts"] == 1
        # A slot being re-opened is still waited for, not refused.
        pool.putconn(held, close=True)
        conn = pool.getconn()
        pool.putconn(conn)
    finally:
        pool.closeall()


def test_drop_in_exhausted_is_decided_without_the_pool_lock(postgres_dsn: str) -> None:
    # Threads retrying "exhausted" must not queue on the lock with the threads
    # returning connections: with every connection out, a refusal does not
    # take it (here it is held by this thread for the whole check).
    pool = dropin.ThreadedConnectionPool(2, 2, postgres_dsn)
    try:
        held = [pool.getconn(), pool.getconn()]
        before = pool._shell.stats()
        outcomes: list[int] = []
        with pool._shell._lock:
            worker = threading.Thread(target=lambda: outcomes.append(_refuse_many(pool.getconn)))
            worker.start()
            worker.join(30.0)
            finished = not worker.is_alive()
        worker.join()
        assert finished, "a refusal waited for the pool's lock"
        assert outcomes == [200]
        after = pool._shell.stats()
        assert after["requests"] - before["requests"] == 200
        assert after["timeouts"] - before["timeouts"] == 200
        # With a connection idle again, it is handed out, never refused.
        pool.putconn(held.pop())
        held.append(pool.getconn())
        for conn in held:
            pool.putconn(conn)
    finally:
        pool.closeall()


def test_the_probe_sees_data_and_hang_ups_without_releasing_the_gil() -> None:
    import ctypes

    ours, theirs = socket.socketpair()
    probe = _sockets.make_probe(ours.fileno())
    try:
        func = getattr(probe, "func", None)
        # A PyDLL function: ctypes keeps the GIL across the call.
        assert func is not None
        assert func._flags_ & vars(ctypes)["_FUNCFLAG_PYTHONAPI"]
        assert not probe(0)
        theirs.send(b"N")
        assert probe(0)
        ours.recv(1)
        assert not probe(0)
        theirs.close()
        assert probe(0)  # EOF reads as readable
    finally:
        _sockets.close_probe(probe)
        ours.close()
        theirs.close()
    owner = probe.epoll  # type: ignore[attr-defined]
    assert owner.closed
