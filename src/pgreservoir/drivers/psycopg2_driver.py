"""The :class:`~pgreservoir.drivers.Driver` for psycopg2 (``psycopg2`` or ``psycopg2-binary``)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Mapping, Optional, Tuple

from .._core import BROKEN, CLEAN, DIRTY, HOLDER_CLOSED, RESTORE
from . import check_rows
from ._base import DriverBase, is_lost_sqlstate
from ._conninfo import mask_dsn, server_ports
from ._params import ParamSource
from ._sockets import Probe
from ._transaction_pooling import psycopg2_connect_args

__all__ = ["Psycopg2Driver"]

# Keyword arguments psycopg2.connect() accepts that are not libpq options.
_PSYCOPG2_ONLY = ("connection_factory", "cursor_factory", "async", "async_")


def _import_psycopg2() -> Any:
    try:
        import psycopg2
        import psycopg2.extensions
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this pool needs psycopg2: pip install 'pgreservoir[binary]' (or install "
            "psycopg2 or psycopg2-binary yourself); for psycopg 3 pass "
            "connection_class=psycopg.Connection"
        ) from exc
    return psycopg2


class Psycopg2Driver(DriverBase):
    """psycopg2 connections, opened with ``psycopg2.connect(dsn, *args, **kwargs)``."""

    __slots__ = ("_args", "_defaults", "_dsn", "_kwargs", "_params", "_psycopg2")

    SETTINGS = ("autocommit", "isolation_level", "readonly", "deferrable")

    def __init__(
        self,
        dsn: Any,
        connect_kwargs: Mapping[str, Any],
        *,
        defaults: Optional[Mapping[str, Any]] = None,
        args: Tuple[Any, ...] = (),
        transaction_pooling: bool = False,
    ) -> None:
        """Validate the connection options now, so a typo fails at construction.

        ``dsn``/``args``/``connect_kwargs`` are what the caller would pass to
        ``psycopg2.connect()``; ``defaults`` fill libpq options the caller did
        not set. ``dsn`` and the value of any libpq keyword may be callables
        (rotating credentials, see :mod:`._params`): called at every connect,
        their results checked then; what is known now is checked now.
        ``transaction_pooling``: connections whose session characteristics
        change client-side only (see :mod:`._transaction_pooling`).
        """
        psycopg2 = _import_psycopg2()
        self._psycopg2 = psycopg2
        if args and dsn is None and isinstance(args[0], str):
            # psycopg2.connect(dsn, connection_factory, cursor_factory) positionally.
            dsn, args = args[0], args[1:]
        if dsn is not None and not (isinstance(dsn, str) or callable(dsn)):
            raise TypeError(
                f"the DSN must be a str (or a callable returning one), got {type(dsn).__name__}"
            )
        if transaction_pooling:
            connect_kwargs, args = psycopg2_connect_args(dict(connect_kwargs), args)
        self._args = args
        self._defaults = dict(defaults or {})
        self._params = params = ParamSource(dsn, connect_kwargs, reserved=_PSYCOPG2_ONLY)
        if params.dynamic:
            static_dsn, static_kwargs = params.static()
            _, _, merged = self._complete(static_dsn, static_kwargs)
            # What the static part says (target_session_attrs included).
            self._adopt_options(merged)
            self._masked = params.describe(mask_dsn(merged))
            self._dsn: Optional[str] = None
            self._kwargs: Dict[str, Any] = {}
        else:
            self._dsn, self._kwargs, merged = self._complete(dsn, connect_kwargs)
            self._adopt_options(merged)

    def _complete(
        self, dsn: Optional[str], connect_kwargs: Mapping[str, Any]
    ) -> Tuple[Optional[str], Dict[str, Any], Dict[str, Any]]:
        """Check connection options and add the defaults they lack: the DSN and
        keywords to connect with, and every libpq option they make (to mask)."""
        psycopg2 = self._psycopg2
        kwargs: Dict[str, Any] = dict(connect_kwargs)
        libpq_kwargs = {
            k: v for k, v in kwargs.items() if k not in _PSYCOPG2_ONLY and v is not None
        }
        # From here on nothing may quote the DSN unmasked: it may hold a password.
        try:
            if dsn is not None:
                psycopg2.extensions.parse_dsn(dsn)
        except psycopg2.ProgrammingError as exc:
            raise self._invalid(str(exc), dsn) from None
        try:
            # The DSN is valid: what libpq refuses now came from the keywords.
            merged: Dict[str, Any] = psycopg2.extensions.parse_dsn(
                psycopg2.extensions.make_dsn(dsn, **libpq_kwargs)
            )
        except psycopg2.ProgrammingError as exc:
            raise self._invalid(str(exc), None, libpq_kwargs) from None
        for key, value in self._defaults.items():
            if key not in merged:
                kwargs[key] = value
                merged[key] = str(value)
        return dsn, kwargs, merged

    # -- opening and closing -------------------------------------------------

    def connect(self) -> Any:
        dsn, kwargs = self._dsn, self._kwargs
        if self._params.dynamic:
            dsn, kwargs = self._params.resolve()
            dsn, kwargs, merged = self._complete(dsn, kwargs)
            self.server_ports = server_ports(merged)  # the latest, for fork
        if dsn is None:
            conn = self._psycopg2.connect(*self._args, **kwargs)
        else:
            conn = self._psycopg2.connect(dsn, *self._args, **kwargs)
        # libpq may have read more than ReadyForQuery into its buffer: a backend
        # terminated as the connection completed leaves its FATAL there, where
        # no socket probe can see it. poll() processes it (into conn.notices).
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
        self.interrupt(conn)
        self.close(conn)

    def fileno(self, conn: Any) -> int:
        return int(conn.fileno())

    def adopt(self, conn: Any, owner: Any) -> None:
        pass  # psycopg2 connections do not know about pools

    def parameter_status(self, conn: Any, name: str) -> Optional[str]:
        value: Optional[str] = conn.get_parameter_status(name)
        return value

    def client_read_only(self, conn: Any) -> bool:
        return conn.readonly is True

    # -- check-in ------------------------------------------------------------

    def verdict(self, conn: Any, baseline: Any) -> int:
        closed = conn.closed
        if closed:
            # 1: closed by close(); 2: the connection broke (libpq lost it).
            return HOLDER_CLOSED if closed == 1 else BROKEN
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
            return RESTORE
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
        self.restore(conn, baseline)
        if conn.closed or conn.get_transaction_status() != 0:
            raise self._psycopg2.InterfaceError("connection not idle after rollback")

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.closed) or conn.get_transaction_status() != 0

    # -- liveness ------------------------------------------------------------

    def after_readable(self, conn: Any, probe: Probe) -> Optional[bool]:
        notices = conn.notices
        before = notices[-1] if notices else None
        try:
            # poll() consumes what is there; on a terminated backend the first
            # read takes the FATAL message and the next one sees EOF and
            # raises, so poll while still readable (bounded: a stream of
            # NOTIFYs must not keep us here). Notifications stay queued in
            # conn.notifies for the caller.
            for _ in range(3):
                conn.poll()
                if conn.closed or not probe(0):
                    break
        except (OSError, ValueError, self._psycopg2.Error):
            return True
        if conn.closed:
            return True
        # libpq files a message that arrives outside a query as a notice: the
        # FATAL a terminated backend sends, or the WARNING of a crash restart,
        # with the EOF possibly not there yet. A FATAL is final; anything else
        # new is rare on an idle connection: a round trip will tell.
        notices = conn.notices
        latest = notices[-1] if notices else None
        if latest is not None and latest is not before:
            return True if latest.startswith("FATAL") else None
        return False

    # -- errors and helpers ------------------------------------------------------

    def cursor_kwargs(self, rows: Optional[str], cursor_factory: Any) -> Dict[str, Any]:
        if rows is None:
            return {} if cursor_factory is None else {"cursor_factory": cursor_factory}
        check_rows(rows)
        if cursor_factory is not None:
            raise TypeError("pass either rows= or cursor_factory=, not both")
        import psycopg2.extras

        factories = {
            "tuple": self._psycopg2.extensions.cursor,
            "dict": psycopg2.extras.RealDictCursor,
            "namedtuple": psycopg2.extras.NamedTupleCursor,
        }
        return {"cursor_factory": factories[rows]}

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        if not isinstance(exc, self._psycopg2.Error):
            return False
        if conn is not None and conn.closed == 2:  # broken; 1 is a close() by its holder
            return True
        return is_lost_sqlstate(getattr(exc, "pgcode", None))
