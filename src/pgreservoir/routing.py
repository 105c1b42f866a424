"""``RoutingPool``: writes to the primary, reads to replicas that are up and caught up.

A facade over one :class:`~pgreservoir.ConnectionPool` per server: the
primary's serves writes (and reads when no replica can), each replica's
serves reads. What it adds is the choice, made by
:class:`pgreservoir._routing.Router` from background health checks: one
thread per replica checks it every ``replica_check_interval`` seconds,
through a one-connection pool of its own (so a check never waits in line
behind the readers), bounded by ``replica_check_timeout``.

Reads fall back to the primary as soon as no replica is eligible, and go
back to a replica at the first checkout after a check finds it up again
(within ``replica_check_interval``): routing is decided per checkout, so no
connection is left pinned to the wrong server. A read that finds its
replica's pool unable to connect (the replica just went down; replica pools
run with ``fail_fast``, so this is known at once when connects are refused)
is sent to the next replica, or the primary, within the same timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ._routing import LAG_QUERY, Router
from .connection_pool import ConnectionPool
from .errors import PoolClosed, PoolError, PoolTimeout
from .options import OPTION_NAMES, check_seconds, next_pool_name

__all__ = ["RoutingPool"]

#: Default seconds between two health checks of a replica.
REPLICA_CHECK_INTERVAL = 1.0
#: Default seconds a health check may take (connect and query); longer counts as down.
REPLICA_CHECK_TIMEOUT = 2.0


def check_routing_arguments(
    primary: Any,
    replicas: Sequence[Any],
    max_replica_lag: Optional[float],
    interval: float,
    timeout: float,
) -> Tuple[List[Any], Optional[float], float, float]:
    """Validate what the routing pools take beyond the pool options."""
    if primary is None:
        raise TypeError("RoutingPool needs the primary's DSN (a str, or a callable returning one)")
    if isinstance(replicas, (str, bytes)):
        raise TypeError("replicas must be a sequence of DSNs, not a single str: use (dsn,)")
    listed = list(replicas)
    lag = None if max_replica_lag is None else check_seconds("max_replica_lag", max_replica_lag)
    interval = check_seconds("replica_check_interval", interval)
    timeout = check_seconds("replica_check_timeout", timeout)
    if interval <= 0 or timeout <= 0:
        raise ValueError(
            "replica_check_interval and replica_check_timeout must be > 0 seconds, got "
            f"{interval:g} and {timeout:g}"
        )
    return listed, lag, interval, timeout


def split_for_checks(options: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """What a replica's health-check pool takes from the caller's keywords: the
    connect keywords (credentials, TLS...) and connection_class, not the pool
    options (no configure(), no sizes); ``tcp_user_timeout`` bounds its
    queries on a dead network unless the caller set it."""
    kept = {k: v for k, v in options.items() if k not in OPTION_NAMES}
    kept.pop("min_size", None)
    kept.pop("max_size", None)
    kept.setdefault("tcp_user_timeout", max(1, int(timeout * 1000)))
    kept["fail_fast"] = True  # a refused connect is a failed check at once
    if "connect_defaults" in options:
        kept["connect_defaults"] = options["connect_defaults"]
    return kept


def set_read_only(conn: Any) -> None:
    """Make the next transactions of ``conn`` read-only (client-side, no round
    trip; the pool puts the setting back at check-in): a read that falls back
    to the primary fails on a write just as it would on a replica."""
    if hasattr(conn, "read_only"):  # psycopg 3
        conn.read_only = True
    else:  # psycopg2
        conn.readonly = True


def live_count(out: Dict[int, Tuple[Any, Any, str]]) -> int:
    """How many connections handed out are still out; forgets the dropped ones."""
    for key in [k for k, entry in out.items() if entry[0]() is None]:
        del out[key]
    return len(out)


class RoutingPool:
    """Writes to the primary, reads to replicas that are up (and caught up).

    ``primary``: a DSN (multi-host allowed, e.g. with
    ``target_session_attrs=read-write``); ``replicas``: a sequence of DSNs.
    Every other keyword is a :class:`~pgreservoir.ConnectionPool` option or
    connect keyword, given to each server's pool (``min_size`` and
    ``max_size`` are per server). ``max_replica_lag`` (seconds): a replica
    further behind gets no reads until it catches up (see docs/routing.md
    for how lag is measured). ``replica_check_interval`` and
    ``replica_check_timeout`` (seconds) pace and bound the health checks.

    ``connection(readonly=True)`` and ``getconn(readonly=True)`` go to a
    replica, round robin over those eligible, or to the primary when none
    is; their connections are read-only wherever they come from.
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
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._interval = interval
        self._check_timeout = timeout
        # id(conn) -> (a weak reference to conn, the pool it came from, its kind).
        # Weak: a connection dropped without putconn() is reclaimed by its
        # pool as any lost connection is; its entry here is then dead (and
        # replaced if the id is reused).
        self._out: Dict[int, Tuple[Any, ConnectionPool, str]] = {}
        self._counts = {"writes": 0, "replica_reads": 0, "fallback_reads": 0}
        labels = [f"{self._name}.replica-{i + 1}" for i in range(len(listed))]
        self._router = Router(labels, max_lag=lag, stale_after=interval + timeout)
        self._pools: List[ConnectionPool] = []
        self._threads: List[threading.Thread] = []
        self._checkers: List[ConnectionPool] = []
        try:
            self._primary = self._add(
                ConnectionPool(primary, name=f"{self._name}.primary", **options)
            )
            self._replicas = [
                self._add(ConnectionPool(dsn, name=label, **{**options, "fail_fast": True}))
                for dsn, label in zip(listed, labels)
            ]
            check_options = split_for_checks(options, timeout)
            self._checkers = [
                ConnectionPool(dsn, min_size=0, max_size=1, name=f"{label}.check", **check_options)
                for dsn, label in zip(listed, labels)
            ]
        except BaseException:
            self._close_all(0.0)
            raise
        for index in range(len(listed)):
            thread = threading.Thread(
                target=self._check_loop, args=(index,), name=f"{labels[index]}-check", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _add(self, pool: ConnectionPool) -> ConnectionPool:
        self._pools.append(pool)
        return pool

    # -- attributes ------------------------------------------------------

    @property
    def name(self) -> str:
        """The routing pool's name; its pools are ``<name>.primary``, ``<name>.replica-N``."""
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def primary(self) -> ConnectionPool:
        """The primary's pool."""
        return self._primary

    @property
    def replicas(self) -> Tuple[ConnectionPool, ...]:
        """The replicas' pools, in the order given."""
        return tuple(self._replicas)

    # -- checkout / check-in --------------------------------------------

    def getconn(self, readonly: bool = False, timeout: Optional[float] = None) -> Any:
        """A connection to the primary, or with ``readonly`` to an eligible replica
        (the primary when there is none); give it back with :meth:`putconn`.

        Waits up to ``timeout`` seconds in all (``None``: the pools' timeout)
        and raises PoolTimeout, TooManyRequests or PoolClosed as the pools do.
        """
        if self._closed:
            raise PoolClosed(f"routing pool {self._name!r} is closed", pool_name=self._name)
        wait = self._primary.timeout if timeout is None else check_seconds("timeout", timeout)
        deadline = time.monotonic() + wait
        if not readonly:
            conn = self._primary.getconn(wait)
            self._register(conn, self._primary, "writes")
            return conn
        tried: List[int] = []
        while True:
            now = time.monotonic()
            with self._lock:
                index = self._router.pick(now, tried)
            if index is None:
                break
            pool = self._replicas[index]
            try:
                conn = self._wait_on_replica(index, pool, deadline)
            except PoolTimeout as exc:
                if exc.__cause__ is None and time.monotonic() >= deadline:
                    raise  # the replica is up but busy: the caller's time is spent
                if exc.__cause__ is not None:
                    with self._lock:
                        self._router.checkout_failed(index, time.monotonic(), str(exc.__cause__))
                tried.append(index)
                continue
            return self._hand_out_read(conn, pool, "replica_reads")
        conn = self._primary.getconn(max(0.0, deadline - time.monotonic()))
        return self._hand_out_read(conn, self._primary, "fallback_reads")

    def _wait_on_replica(self, index: int, pool: ConnectionPool, deadline: float) -> Any:
        """``pool.getconn()`` until ``deadline``, in slices of the checks' bound:
        a read queued behind a replica that the checks drop meanwhile (gone
        silent: its connections hung) moves on instead of waiting out its
        timeout. PoolTimeout otherwise, as the pool raised it."""
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                return pool.getconn(min(left, self._router.stale_after))
            except PoolTimeout as exc:
                if exc.__cause__ is not None or left <= self._router.stale_after:
                    raise
                with self._lock:
                    still = self._router.eligible(index, time.monotonic())
                if not still:
                    raise

    def _hand_out_read(self, conn: Any, pool: ConnectionPool, kind: str) -> Any:
        try:
            set_read_only(conn)
        except BaseException:
            pool.putconn(conn, close=True)
            raise
        self._register(conn, pool, kind)
        return conn

    def _register(self, conn: Any, pool: ConnectionPool, kind: str) -> None:
        ref = weakref.ref(conn)
        with self._lock:
            self._out[id(conn)] = (ref, pool, kind)
            self._counts[kind] += 1

    def putconn(self, conn: Any, close: bool = False) -> None:
        """Give back a connection from :meth:`getconn`, to the pool it came from.

        A connection this routing pool did not hand out, or one given back
        already, is refused with PoolError and nothing changes.
        """
        with self._lock:
            entry = self._out.get(id(conn))
            if entry is None or entry[0]() is not conn:
                raise PoolError(
                    f"routing pool {self._name!r}: this connection was not taken from it, "
                    "or was given back already",
                    pool_name=self._name,
                )
            del self._out[id(conn)]
        entry[1].putconn(conn, close)

    @contextlib.contextmanager
    def connection(self, readonly: bool = False, timeout: Optional[float] = None) -> Iterator[Any]:
        """``with pool.connection(readonly=True) as conn:`` — commit on success,
        roll back on error; the connection always goes back where it came from."""
        conn = self.getconn(readonly, timeout)
        try:
            yield conn
        except BaseException:
            self.putconn(conn, close=bool(conn.closed))
            raise
        try:
            if not conn.closed:
                conn.commit()
        finally:
            self.putconn(conn)

    # -- health checks (one thread per replica) ---------------------------------

    def _check_loop(self, index: int) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                in_recovery, lag = self._check(index)
            except Exception as exc:  # any failure of the check: the replica is down
                with self._lock:
                    self._router.check_failed(index, began, f"{type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    self._router.checked(index, began, in_recovery, lag)
            self._stop.wait(max(0.0, began + self._interval - time.monotonic()))

    def _check(self, index: int) -> Tuple[bool, Optional[float]]:
        checker = self._checkers[index]
        conn = checker.getconn(self._check_timeout)
        broken = True
        try:
            if not conn.autocommit:
                conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(LAG_QUERY)
                row = cur.fetchone()
            broken = False
        finally:
            checker.putconn(conn, close=broken)
        assert row is not None
        return bool(row[0]), None if row[1] is None else float(row[1])

    # -- management ------------------------------------------------------

    def wait(self, timeout: float = 30.0) -> None:
        """Block until the primary's ``min_size`` connections are open and every
        replica has been checked once; PoolTimeout otherwise."""
        deadline = time.monotonic() + check_seconds("timeout", timeout)
        self._primary.wait(timeout)
        while True:
            with self._lock:
                snapshot = self._router.snapshot(time.monotonic())
            if all(r["up"] or r["last_error"] is not None for r in snapshot):
                return
            if time.monotonic() >= deadline:
                raise PoolTimeout(
                    f"routing pool {self._name!r}: replicas not checked within {timeout:g} s",
                    pool_name=self._name,
                )
            self._stop.wait(0.01)

    def stats(self) -> Dict[str, Any]:
        """The routing counters, each replica's health and every pool's stats()."""
        with self._lock:
            replicas = self._router.snapshot(time.monotonic())
            result: Dict[str, Any] = dict(self._counts)
            result["in_use"] = live_count(self._out)
        for entry, pool in zip(replicas, self._replicas):
            entry["pool"] = pool.stats()
        result["primary"] = self._primary.stats()
        result["replicas"] = replicas
        return result

    def close(self, timeout: float = 5.0) -> None:
        """Stop the checks and close every pool (see ConnectionPool.close). Idempotent."""
        timeout = check_seconds("timeout", timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._close_all(timeout)
        for thread in self._threads:
            thread.join(timeout + 1.0)

    def _close_all(self, timeout: float) -> None:
        for checker in self._checkers:
            checker.close(0.0)  # a check hung on a dead network is interrupted
        for pool in self._pools:
            pool.close(timeout)

    def __enter__(self) -> RoutingPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        now = time.monotonic()
        with self._lock:
            up = sum(1 for r in self._router.snapshot(now) if r["eligible"])
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {self._name!r} {state} primary={self._primary!r} "
            f"replicas={len(self._replicas)} eligible={up}>"
        )
