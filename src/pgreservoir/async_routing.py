"""``AsyncRoutingPool``: :class:`~pgreservoir.RoutingPool` for asyncio.

The same decisions (:class:`pgreservoir._routing.Router`) over one
:class:`~pgreservoir.AsyncConnectionPool` per server; the health checks
run as one task per replica on the pool's event loop, each bounded by
``replica_check_timeout`` with the loop's timers (a check hung on a dead
network is cancelled, and its connection discarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

from ._async.bounded import Expired, bounded
from ._routing import LAG_QUERY, Router
from .async_connection_pool import AsyncConnectionPool
from .errors import PoolClosed, PoolError, PoolTimeout
from .options import check_seconds, next_pool_name
from .routing import (
    REPLICA_CHECK_INTERVAL,
    REPLICA_CHECK_TIMEOUT,
    check_routing_arguments,
    live_count,
    split_for_checks,
)

__all__ = ["AsyncRoutingPool"]


class AsyncRoutingPool:
    """Writes to the primary, reads to replicas that are up (and caught up), for asyncio.

    Takes what :class:`~pgreservoir.RoutingPool` takes, with
    :class:`~pgreservoir.AsyncConnectionPool`'s options; the methods are
    the same, awaitable. Open it with ``async with`` (or ``await
    pool.open()``): it belongs to the loop it is opened on.
    """

    def __init__(
        self,
        primary: Any,
        replicas: Sequence[Any] = (),
        *,
        max_replica_lag: Optional[float] = None,
        replica_check_interval: float = REPLICA_CHECK_INTERVAL,
        replica_check_timeout: float = REPLICA_CHECK_TIMEOUT,
        **options: Any,
    ) -> None:
        listed, lag, interval, timeout = check_routing_arguments(
            primary, replicas, max_replica_lag, replica_check_interval, replica_check_timeout
        )
        self._name: str = options.pop("name", None) or next_pool_name()
        self._closed = False
        self._interval = interval
        self._check_timeout = timeout
        self._out: Dict[int, Tuple[Any, AsyncConnectionPool, str]] = {}
        self._counts = {"writes": 0, "replica_reads": 0, "fallback_reads": 0}
        labels = [f"{self._name}.replica-{i + 1}" for i in range(len(listed))]
        self._router = Router(labels, max_lag=lag, stale_after=interval + timeout)
        self._tasks: List[asyncio.Task[None]] = []
        self._stop: Optional[asyncio.Event] = None
        self._pools: List[AsyncConnectionPool] = []
        self._checkers: List[AsyncConnectionPool] = []
        self._primary = self._add(
            AsyncConnectionPool(primary, name=f"{self._name}.primary", **options)
        )
        self._replicas = [
            self._add(AsyncConnectionPool(dsn, name=label, **{**options, "fail_fast": True}))
            for dsn, label in zip(listed, labels)
        ]
        check_options = split_for_checks(options, timeout)
        self._checkers = [
            AsyncConnectionPool(dsn, min_size=0, max_size=1, name=f"{label}.check", **check_options)
            for dsn, label in zip(listed, labels)
        ]

    def _add(self, pool: AsyncConnectionPool) -> AsyncConnectionPool:
        self._pools.append(pool)
        return pool

    # -- attributes ------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def primary(self) -> AsyncConnectionPool:
        return self._primary

    @property
    def replicas(self) -> Tuple[AsyncConnectionPool, ...]:
        return tuple(self._replicas)

    # -- life cycle ------------------------------------------------------

    async def open(self) -> None:
        """Open every pool and start the health checks on the running loop."""
        if self._closed:
            raise PoolClosed(f"routing pool {self._name!r} is closed", pool_name=self._name)
        if self._stop is not None:
            return
        self._stop = asyncio.Event()
        for pool in (*self._pools, *self._checkers):
            await pool.open()
        for index in range(len(self._replicas)):
            self._tasks.append(
                asyncio.ensure_future(self._check_loop(index, self._stop))
            )

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until the primary's ``min_size`` connections are open and every
        replica has been checked once; PoolTimeout otherwise."""
        await self.open()
        deadline = time.monotonic() + check_seconds("timeout", timeout)
        await self._primary.wait(timeout)
        while not all(r["up"] or r["last_error"] is not None
                      for r in self._router.snapshot(time.monotonic())):
            if time.monotonic() >= deadline:
                raise PoolTimeout(
                    f"routing pool {self._name!r}: replicas not checked within {timeout:g} s",
                    pool_name=self._name,
                )
            await asyncio.sleep(0.01)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the checks and close every pool. Idempotent."""
        timeout = check_seconds("timeout", timeout)
        if self._closed:
            return
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for checker in self._checkers:
            await checker.close(0.0)
        for pool in self._pools:
            await pool.close(timeout)

    async def __aenter__(self) -> AsyncRoutingPool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- checkout / check-in --------------------------------------------

    async def getconn(self, readonly: bool = False, timeout: Optional[float] = None) -> Any:
        """As :meth:`RoutingPool.getconn`, awaited."""
        if self._closed:
            raise PoolClosed(f"routing pool {self._name!r} is closed", pool_name=self._name)
        await self.open()
        wait = self._primary.timeout if timeout is None else check_seconds("timeout", timeout)
        deadline = time.monotonic() + wait
        if not readonly:
            conn = await self._primary.getconn(wait)
            self._register(conn, self._primary, "writes")
            return conn
        tried: List[int] = []
        while True:
            now = time.monotonic()
            index = self._router.pick(now, tried)
            if index is None:
                break
            pool = self._replicas[index]
            try:
                conn = await self._wait_on_replica(index, pool, deadline)
            except PoolTimeout as exc:
                if exc.__cause__ is None and time.monotonic() >= deadline:
                    raise  # the replica is up but busy: the caller's time is spent
                if exc.__cause__ is not None:
                    self._router.checkout_failed(index, time.monotonic(), str(exc.__cause__))
                tried.append(index)
                continue
            return await self._hand_out_read(conn, pool, "replica_reads")
        conn = await self._primary.getconn(max(0.0, deadline - time.monotonic()))
        return await self._hand_out_read(conn, self._primary, "fallback_reads")

    async def _wait_on_replica(
        self, index: int, pool: AsyncConnectionPool, deadline: float
    ) -> Any:
        """``pool.getconn()`` until ``deadline``, in slices of the checks' bound:
        a read queued behind a replica that the checks drop meanwhile (gone
        silent: its connections hung) moves on instead of waiting out its
        timeout. PoolTimeout otherwise, as the pool raised it."""
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                return await pool.getconn(min(left, self._router.stale_after))
            except PoolTimeout as exc:
                if exc.__cause__ is not None or left <= self._router.stale_after:
                    raise
                if not self._router.eligible(index, time.monotonic()):
                    raise

    async def _hand_out_read(self, conn: Any, pool: AsyncConnectionPool, kind: str) -> Any:
        try:
            await conn.set_read_only(True)
        except BaseException:
            await pool.putconn(conn, close=True)
            raise
        self._register(conn, pool, kind)
        return conn

    def _register(self, conn: Any, pool: AsyncConnectionPool, kind: str) -> None:
        self._out[id(conn)] = (weakref.ref(conn), pool, kind)  # weak: see RoutingPool
        self._counts[kind] += 1

    async def putconn(self, conn: Any, close: bool = False) -> None:
        """As :meth:`RoutingPool.putconn`, awaited."""
        entry = self._out.get(id(conn))
        if entry is None or entry[0]() is not conn:
            raise PoolError(
                f"routing pool {self._name!r}: this connection was not taken from it, "
                "or was given back already",
                pool_name=self._name,
            )
        del self._out[id(conn)]
        await entry[1].putconn(conn, close)

    @contextlib.asynccontextmanager
    async def connection(
        self, readonly: bool = False, timeout: Optional[float] = None
    ) -> AsyncIterator[Any]:
        """``async with pool.connection(readonly=True) as conn:`` — commit on
        success, roll back on error or cancellation."""
        conn = await self.getconn(readonly, timeout)
        try:
            yield conn
        except BaseException:
            await self.putconn(conn, close=bool(conn.closed))
            raise
        try:
            if not conn.closed:
                await conn.commit()
        finally:
            await self.putconn(conn)

    # -- health checks (one task per replica) ------------------------------------

    async def _check_loop(self, index: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            began = time.monotonic()
            try:
                in_recovery, lag = await bounded(
                    self._check(index), loop.time() + self._check_timeout
                )
            except Expired:
                self._router.check_failed(
                    index, began, f"no answer within {self._check_timeout:g} s"
                )
            except Exception as exc:
                self._router.check_failed(index, began, f"{type(exc).__name__}: {exc}")
            else:
                self._router.checked(index, began, in_recovery, lag)
            pause = max(0.0, began + self._interval - time.monotonic())
            with contextlib.suppress(Expired):
                await bounded(stop.wait(), loop.time() + pause)

    async def _check(self, index: int) -> Tuple[bool, Optional[float]]:
        checker = self._checkers[index]
        conn = await checker.getconn(self._check_timeout)
        broken = True
        try:
            if not conn.autocommit:
                await conn.set_autocommit(True)
            cur = await conn.execute(LAG_QUERY)
            row = await cur.fetchone()
            broken = False
        finally:
            # Cancelled mid-query (the check timed out): the connection is
            # discarded, as the pool does with one returned busy.
            await checker.putconn(conn, close=broken)
        assert row is not None
        return bool(row[0]), None if row[1] is None else float(row[1])

    # -- observability ---------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """The routing counters, each replica's health and every pool's stats()."""
        replicas = self._router.snapshot(time.monotonic())
        for entry, pool in zip(replicas, self._replicas):
            entry["pool"] = pool.stats()
        result: Dict[str, Any] = dict(self._counts)
        result["in_use"] = live_count(self._out)
        result["primary"] = self._primary.stats()
        result["replicas"] = replicas
        return result

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {self._name!r} {state} primary={self._primary!r} "
            f"replicas={len(self._replicas)}>"
        )
