"""What the engine needs from a DB-API driver, and its psycopg2 implementation.

The engine never imports a driver: it calls the few operations of
:class:`Driver` (connect, classify a returned connection, clean it, check it is
alive, close it). psycopg2 is the driver today; psycopg 3 can come later
behind the same interface.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
from typing import Any, Dict, Mapping, Optional, Protocol, Tuple

__all__ = [
    "BROKEN",
    "CLEAN",
    "DEFAULT_CONNECT_OPTIONS",
    "DIRTY",
    "Driver",
    "Psycopg2Driver",
    "mask_dsn",
]

# Verdicts on a returned connection, ordered by how much work they need.
CLEAN = 0  # idle, settings unchanged: straight back to the pool
DIRTY = 1  # in a transaction, in error, or settings changed: roll back / restore
BROKEN = 2  # closed, broken or in an unknown state: discard

# Defaults applied by ConnectionPool unless the caller sets the option (as a
# keyword or in the DSN). connect_timeout bounds a connect against a paused or
# black-holed server (libpq waits forever by default); the keepalives make the
# kernel notice a dead peer in about a minute instead of two hours.
DEFAULT_CONNECT_OPTIONS: Mapping[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 5,
}

# Keyword arguments psycopg2.connect() accepts that are not libpq options.
_PSYCOPG2_ONLY = ("connection_factory", "cursor_factory", "async", "async_")


class Driver(Protocol):
    """The operations the engine performs on connections (all outside its lock)."""

    def connect(self) -> Any:
        """Open a new connection (raises the driver's error on failure)."""

    def close(self, conn: Any) -> None:
        """Close a connection, never raising."""

    def force_close(self, conn: Any) -> None:
        """Close a connection that another thread may be using, without waiting for it."""

    def snapshot(self, conn: Any) -> Any:
        """The session settings to restore at every check-in."""

    def verdict(self, conn: Any, baseline: Any) -> int:
        """Classify a returned connection: CLEAN, DIRTY or BROKEN; no I/O."""

    def clean(self, conn: Any, baseline: Any) -> None:
        """Roll back and restore settings; raise if the connection is not reusable."""

    def in_transaction(self, conn: Any) -> bool:
        """Whether a transaction is open (or the state is unknown)."""

    def looks_dead(self, conn: Any) -> bool:
        """Zero-round-trip liveness check: closed flag, or the server already hung up."""

    def ping(self, conn: Any) -> None:
        """Round-trip liveness check; raises if the connection does not work."""

    def describe(self) -> str:
        """Where connections go, with any password masked (for logs and errors)."""

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        """Whether ``exc`` (raised while using ``conn``) means the server connection is gone."""


def mask_dsn(params: Mapping[str, Any]) -> str:
    """Render connection parameters as a DSN with the password replaced by ``***``."""
    parts = []
    for key, value in params.items():
        shown = "***" if key == "password" else str(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


class Psycopg2Driver:
    """:class:`Driver` for psycopg2 (either the ``psycopg2`` or ``psycopg2-binary`` wheel)."""

    __slots__ = ("_args", "_dsn", "_kwargs", "_masked", "_psycopg2")

    def __init__(
        self,
        dsn: Optional[str],
        connect_kwargs: Mapping[str, Any],
        *,
        defaults: Optional[Mapping[str, Any]] = None,
        args: Tuple[Any, ...] = (),
    ) -> None:
        """Validate the connection options now, so a typo fails at construction.

        ``dsn``/``args``/``connect_kwargs`` are what the caller would pass to
        ``psycopg2.connect()``; ``defaults`` fill libpq options the caller did not set.
        """
        try:
            import psycopg2
            import psycopg2.extensions
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "pgreservoir needs psycopg2: pip install 'pgreservoir[binary]' "
                "(or install psycopg2 or psycopg2-binary yourself)"
            ) from exc
        self._psycopg2 = psycopg2
        kwargs: Dict[str, Any] = dict(connect_kwargs)
        libpq_kwargs = {
            k: v for k, v in kwargs.items() if k not in _PSYCOPG2_ONLY and v is not None
        }
        if args and dsn is None and isinstance(args[0], str):
            # psycopg2.connect(dsn, connection_factory, cursor_factory) positionally.
            dsn, args = args[0], args[1:]
        try:
            merged = psycopg2.extensions.parse_dsn(
                psycopg2.extensions.make_dsn(dsn, **libpq_kwargs)
            )
        except psycopg2.ProgrammingError as exc:
            raise ValueError(
                f"invalid connection options: {_strip_password(str(exc)).strip()}; "
                "pass libpq keywords (host, port, dbname, user, password, "
                "connect_timeout, ...) or a valid DSN"
            ) from None
        for key, value in (defaults or {}).items():
            if key not in merged:
                kwargs[key] = value
                merged[key] = str(value)
        self._dsn = dsn
        self._args = args
        self._kwargs = kwargs
        self._masked = mask_dsn(merged)

    # -- opening and closing -------------------------------------------------

    def connect(self) -> Any:
        if self._dsn is None:
            conn = self._psycopg2.connect(*self._args, **self._kwargs)
        else:
            conn = self._psycopg2.connect(self._dsn, *self._args, **self._kwargs)
        # libpq may have read more than ReadyForQuery into its buffer: a backend
        # terminated as the connection completed leaves its FATAL there, where
        # no select() can see it. poll() processes it (into conn.notices).
        try:
            conn.poll()
        except self._psycopg2.Error:
            self.close(conn)
            raise
        return conn

    def close(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def force_close(self, conn: Any) -> None:
        # conn.close() waits for a query running in another thread to finish
        # (psycopg2 holds the connection's mutex during a query). Shutting the
        # socket down first makes that query fail at once, so close() returns.
        try:
            fd = conn.fileno()
            sock = socket.socket(fileno=os.dup(fd))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
        except (OSError, ValueError, self._psycopg2.Error):
            pass
        self.close(conn)

    # -- check-in ------------------------------------------------------------

    def snapshot(self, conn: Any) -> Any:
        return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)

    def verdict(self, conn: Any, baseline: Any) -> int:
        if conn.closed:
            return BROKEN
        # get_transaction_status() is a plain C call; conn.info allocates an object.
        status = conn.get_transaction_status()
        if status == 0:  # TRANSACTION_STATUS_IDLE
            if (
                conn.autocommit is baseline[0]
                and conn.isolation_level == baseline[1]
                and conn.readonly is baseline[2]
                and conn.deferrable is baseline[3]
            ):
                return CLEAN
            return DIRTY
        if status in (2, 3):  # INTRANS, INERROR
            return DIRTY
        return BROKEN  # ACTIVE (a command still running) or UNKNOWN (connection lost)

    def clean(self, conn: Any, baseline: Any) -> None:
        if conn.get_transaction_status() != 0:
            conn.rollback()
            if conn.get_transaction_status() != 0:
                # An explicit BEGIN in autocommit mode: psycopg2's rollback() is a
                # no-op there, so end the server-side transaction ourselves.
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        if conn.autocommit is not baseline[0]:
            conn.autocommit = baseline[0]
        # These three are client-side in psycopg2 >= 2.7: no round trip.
        if conn.isolation_level != baseline[1]:
            conn.isolation_level = baseline[1]
        if conn.readonly is not baseline[2]:
            conn.readonly = baseline[2]
        if conn.deferrable is not baseline[3]:
            conn.deferrable = baseline[3]
        if conn.closed or conn.get_transaction_status() != 0:
            raise self._psycopg2.InterfaceError("connection not idle after rollback")

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.closed) or conn.get_transaction_status() != 0

    # -- liveness ------------------------------------------------------------

    def looks_dead(self, conn: Any) -> bool:
        if conn.closed:
            return True
        notices = conn.notices
        before = notices[-1] if notices else None
        try:
            fd = conn.fileno()
            # An idle connection has nothing to read unless the server hung up
            # or sent a notification. poll() consumes what is there; on a
            # terminated backend the first read takes the FATAL message and
            # the next one sees EOF and raises, so poll while still readable
            # (bounded: a stream of NOTIFYs must not keep us here).
            # Notifications stay queued in conn.notifies for the caller.
            for _ in range(3):
                readable, _, _ = select.select((fd,), (), (), 0)
                if not readable:
                    break
                conn.poll()
            if conn.closed:
                return True
            # libpq files a message that arrives outside a query as a notice:
            # the FATAL a terminated backend sends, or the WARNING of a crash
            # restart, with the EOF possibly not there yet. A FATAL is final;
            # anything else new is rare on an idle connection: ask the server.
            notices = conn.notices
            latest = notices[-1] if notices else None
            if latest is not None and latest is not before:
                if latest.startswith("FATAL"):
                    return True
                self.ping(conn)
        except (OSError, ValueError, self._psycopg2.Error):
            return True
        return bool(conn.closed)

    def ping(self, conn: Any) -> None:
        # In autocommit mode SELECT 1 is a single round trip; otherwise psycopg2
        # would send BEGIN first and we would need a ROLLBACK after it.
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    def describe(self) -> str:
        return self._masked

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        if not isinstance(exc, self._psycopg2.Error):
            return False
        if conn is not None and conn.closed:
            return True
        code = getattr(exc, "pgcode", None) or ""
        # Class 08: connection exception; 57P01-57P03: admin shutdown, crash
        # shutdown, cannot connect now.
        return code.startswith("08") or code in ("57P01", "57P02", "57P03")


def _strip_password(message: str) -> str:
    # libpq error texts can echo the DSN; never let a password through.
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", message)
