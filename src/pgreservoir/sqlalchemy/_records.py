"""The shell's driver for SQLAlchemy: the pooled objects are ``_ConnectionRecord``s.

SQLAlchemy's pool contract is built on its connection records: a record is
made by ``Pool._create_connection()`` (which calls the creator and fires the
``connect`` and ``first_connect`` events) and may replace its DBAPI
connection by itself (``pool_recycle``, invalidation, ``pool_pre_ping``). So
the pgreservoir shell pools the *records*, and everything it does to a
connection (the zero-round-trip probe, the ping, interrupting a round trip)
reads the record's current DBAPI connection each time.

Resetting a returned connection (rollback, the ``reset`` event) is
SQLAlchemy's job and happens before the record comes back: the shell only
discards records whose connection broke. DBAPI connections that are not
psycopg2 or psycopg 3 ones (SQLAlchemy's mock DBAPIs) are pooled without
probes or pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, Callable, Dict, Optional, Set, Tuple

from ..drivers import BROKEN, CLEAN
from ..drivers._sockets import Probe, close_probe, make_probe, shutdown_fd

__all__ = ["AsyncRecordDriver", "RecordDriver", "RecordProbe"]

# What kind of libpq connection a DBAPI connection is, by its class.
_PSYCOPG2 = 1
_PSYCOPG = 2
_kinds: Dict[type, int] = {}


def _kind(conn: Any) -> int:
    """_PSYCOPG2, _PSYCOPG or 0 (another DBAPI: no socket probe)."""
    cls = type(conn)
    kind = _kinds.get(cls)
    if kind is None:
        module = cls.__module__ or ""
        if module.startswith("psycopg2"):
            kind = _PSYCOPG2
        elif module.startswith("psycopg") and hasattr(conn, "pgconn"):
            kind = _PSYCOPG
        else:
            kind = 0
        _kinds[cls] = kind
    return kind


def driver_connection(record: Any) -> Any:
    """The record's driver-level connection (psycopg's for an asyncio adapter), or None."""
    return None if record.dbapi_connection is None else record.driver_connection


def _none() -> Any:
    return None


def _fileno(conn: Any, kind: int) -> int:
    return int(conn.fileno() if kind == _PSYCOPG2 else conn.pgconn.socket)


class RecordProbe:
    """A zero-round-trip readability probe that follows the record's connection.

    SQLAlchemy may replace a record's DBAPI connection (recycle, invalidation,
    pre-ping): the probe then re-targets the new socket instead of polling a
    descriptor that may now belong to something else.
    """

    __slots__ = ("_inner", "_record", "_ref")

    def __init__(self, record: Any) -> None:
        self._record = record
        self._ref: Callable[[], Any] = _none
        self._inner: Optional[Probe] = None

    def __call__(self, timeout: int) -> Any:
        record = self._record
        if record.dbapi_connection is not self._ref():
            self._retarget(record.dbapi_connection)
        inner = self._inner
        return 0 if inner is None else inner(0)

    def _retarget(self, dbapi_conn: Any) -> None:
        close_probe(self._inner)
        self._inner = None
        self._ref = _none
        conn = None if dbapi_conn is None else self._record.driver_connection
        if conn is not None:
            # Weakly held: a connection SQLAlchemy dropped must be collectable.
            try:
                self._ref = weakref.ref(dbapi_conn)
            except TypeError:
                self._ref = lambda: dbapi_conn
            kind = _kind(conn)
            if kind:
                with contextlib.suppress(Exception):  # closed already: no probe
                    self._inner = make_probe(_fileno(conn, kind))

    @property
    def epoll(self) -> RecordProbe:
        """What ``close_probe()`` closes (this probe's own descriptor)."""
        return self

    def close(self) -> None:
        close_probe(self._inner)
        self._inner = None
        self._ref = _none


class _RecordOps:
    """What both shells need, done on SQLAlchemy connection records, without I/O."""

    __slots__ = ("_pool", "_where", "server_ports", "target_session_attrs")

    def __init__(self, pool: Any, where: str) -> None:
        """``pool``: the SQLAlchemy pool whose records these are; ``where``:
        the masked URL, for logs and errors."""
        self._pool = pool
        self._where = where
        self.server_ports: Tuple[int, ...] = ()
        # SQLAlchemy's creator makes the connections, from arguments the pool
        # does not see: no role is asked for, so no stale-role check runs.
        self.target_session_attrs: Optional[str] = None

    # -- connections -----------------------------------------------------------

    def force_close(self, record: Any) -> None:
        # Only pool close() forces connections still in use: they belong to
        # their holders, who return them (and they are closed then).
        pass

    def interrupt(self, record: Any) -> None:
        conn = driver_connection(record)
        if conn is not None:
            kind = _kind(conn)
            if kind:
                with contextlib.suppress(Exception):
                    shutdown_fd(_fileno(conn, kind))

    def fileno(self, record: Any) -> int:
        conn = driver_connection(record)
        kind = _kind(conn) if conn is not None else 0
        return _fileno(conn, kind) if kind else -1

    def probe(self, record: Any) -> Probe:
        return RecordProbe(record)

    def adopt(self, record: Any, owner: Any) -> None:
        pass

    def snapshot(self, record: Any) -> Any:
        return None

    # -- check-in ----------------------------------------------------------------

    def verdict(self, record: Any, baseline: Any) -> int:
        conn = driver_connection(record)
        if conn is None:
            # Invalidated: SQLAlchemy reconnects it at its next checkout.
            return CLEAN
        kind = _kind(conn)
        if kind == _PSYCOPG2:
            return BROKEN if conn.closed else CLEAN
        if kind == _PSYCOPG:
            return BROKEN if conn.closed or conn.broken else CLEAN
        return CLEAN

    def restore(self, record: Any, baseline: Any) -> None:
        pass

    def in_transaction(self, record: Any) -> bool:
        return False

    # -- liveness ------------------------------------------------------------------

    def after_readable(self, record: Any, probe: Probe) -> Optional[bool]:
        """Data on an idle socket: read it; a hang-up is final, else a round trip tells."""
        conn = driver_connection(record)
        if conn is None:
            return False
        kind = _kind(conn)
        try:
            if kind == _PSYCOPG2:
                conn.poll()
                if conn.closed:
                    return True
            elif kind == _PSYCOPG:
                pgconn = conn.pgconn
                pgconn.consume_input()
                pgconn.is_busy()
                if conn.closed or pgconn.status != 0:  # CONNECTION_OK
                    return True
        except Exception:
            return True
        return None  # a notification, a notice, or a FATAL before the EOF: ping

    # -- descriptions --------------------------------------------------------------

    def describe(self) -> str:
        return self._where

    def redact(self, text: str) -> str:
        from ..drivers._conninfo import redact

        return redact(text)

    def is_disconnect(self, exc: BaseException, record: Any) -> bool:
        return False

    # -- server roles (unused: see target_session_attrs) -----------------------

    def parameter_status(self, record: Any, name: str) -> Optional[str]:
        return None

    def client_read_only(self, record: Any) -> bool:
        return False

    @staticmethod
    def is_read_only_error(exc: BaseException) -> bool:
        return False

    def cursor_kwargs(self, rows: Optional[str], cursor_factory: Any) -> Dict[str, Any]:
        return {}


def _in_transaction(conn: Any) -> bool:
    """Whether a psycopg2 or psycopg connection has a transaction open."""
    if _kind(conn) == _PSYCOPG2:
        return bool(conn.get_transaction_status() != 0)
    return bool(conn.pgconn.transaction_status != 0)


def _pingable(record: Any) -> Any:
    """The psycopg connection to ping, or None (no connection, or another DBAPI)."""
    conn = driver_connection(record)
    return conn if conn is not None and _kind(conn) else None


class RecordDriver(_RecordOps):
    """The blocking shell's driver for SQLAlchemy connection records."""

    __slots__ = ()

    def connect(self) -> Any:
        # Through SQLAlchemy: creator=, connect_args, do_connect, the dialect's
        # on-connect hooks and the connect / first_connect events all apply.
        return self._pool._create_connection()

    def close(self, record: Any) -> None:
        with contextlib.suppress(Exception):
            record.close()  # fires the close event

    def clean(self, record: Any, baseline: Any) -> None:
        pass  # SQLAlchemy reset the connection before returning it

    def ping(self, record: Any) -> None:
        self.fetch_value(record, "SELECT 1")

    def fetch_value(self, record: Any, query: str) -> Any:
        conn = _pingable(record)
        if conn is None:
            return None
        # In autocommit mode the query is one round trip, and opens no
        # transaction. A transaction left open (reset_on_return=None) stays
        # as it is: the query runs inside it.
        autocommit = conn.autocommit or _in_transaction(conn)
        if not autocommit:
            conn.autocommit = True
        try:
            cur = conn.cursor()
            try:
                cur.execute(query)
                row = cur.fetchone()
            finally:
                cur.close()
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False
        return row[0] if row else None


class AsyncRecordDriver(_RecordOps):
    """The asyncio shell's driver for the records of an asyncio engine.

    SQLAlchemy's asyncio adapters run their I/O through its greenlet bridge:
    making a record, or closing one, must happen inside ``greenlet_spawn``.
    """

    __slots__ = ("_closing",)

    def __init__(self, pool: Any, where: str) -> None:
        super().__init__(pool, where)
        self._closing: Set[Any] = set()  # close tasks in flight (held, so not collected)

    async def connect(self) -> Any:
        from sqlalchemy.util.concurrency import greenlet_spawn

        return await greenlet_spawn(self._pool._create_connection)

    def close_now(self, record: Any) -> None:
        from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet

        if in_greenlet():
            with contextlib.suppress(Exception):
                record.close()
            return
        # The shell closes from its own tasks, outside the bridge: close in a
        # task of our own, which fires the close event there.
        try:
            task = asyncio.get_running_loop().create_task(greenlet_spawn(record.close))
        except RuntimeError:  # no loop any more: drop the socket at least
            self._drop(record)
            return
        self._closing.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: Any) -> None:
        self._closing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed close is not worth a warning

    @staticmethod
    def _drop(record: Any) -> None:
        conn = driver_connection(record)
        if conn is not None and _kind(conn) == _PSYCOPG:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    async def clean(self, record: Any, baseline: Any) -> None:
        pass  # SQLAlchemy reset the connection before returning it

    async def ping(self, record: Any) -> None:
        await self.fetch_value(record, "SELECT 1")

    async def fetch_value(self, record: Any, query: str) -> Any:
        conn = _pingable(record)
        if conn is None:
            return None
        began = not conn.autocommit and not _in_transaction(conn)
        cur = await conn.execute(query)
        row = await cur.fetchone()
        if began:
            await conn.rollback()
        return row[0] if row else None
