"""The drivers for psycopg 3: :class:`PsycopgDriver` (``Connection``) and
:class:`AsyncPsycopgDriver` (``AsyncConnection``), on what they share."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Mapping, Optional, Tuple

from .._core import BROKEN, CLEAN, DIRTY, HOLDER_CLOSED, RESTORE
from . import check_rows
from ._base import CLIENT_DEFAULTS, DriverBase, is_lost_sqlstate
from ._conninfo import mask_dsn, server_ports
from ._params import ParamSource
from ._sockets import Probe

__all__ = ["AsyncPsycopgDriver", "PsycopgDriver"]

# Keyword arguments Connection.connect() takes that are not libpq options.
_PSYCOPG_ONLY = frozenset({"autocommit", "prepare_threshold", "row_factory", "cursor_factory",
                           "context"})
# pq.TransactionStatus values (plain ints: compared on every check-in).
_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = range(5)


def _positive(value: Any) -> float:
    """A connect_timeout as seconds (0 if unset, invalid or not positive)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return 0.0
    return seconds if seconds > 0 else 0.0


def import_psycopg() -> Any:
    try:
        import psycopg
        import psycopg.conninfo
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this pool needs psycopg 3: pip install 'pgreservoir[psycopg]' "
            "(or install psycopg[binary] yourself)"
        ) from exc
    return psycopg


class _PsycopgBase(DriverBase):
    """What the sync and async psycopg 3 drivers share: options, the verdict,
    liveness without I/O, classification. ``connection_class`` may be a
    generic alias (``MyConnection[DictRow]``), so it is only ever called,
    never compared with ``issubclass()``."""

    __slots__ = (
        "_cls",
        "_conninfo",
        "_defaults",
        "_kwargs",
        "_notices",
        "_params",
        "_psycopg",
        "_resolve_timeout",
    )

    SETTINGS = ("autocommit", "isolation_level", "read_only", "deferrable")
    # Restored by the shell at check-in (RESTORE), except where the setters
    # are coroutines (AsyncConnection): the clean-up does it then (DIRTY).
    _SETTINGS_CHANGED = RESTORE

    def __init__(
        self,
        conninfo: Any,
        connect_kwargs: Any,
        connection_class: Any,
        *,
        defaults: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Validate the connection options now, so a typo fails at construction.

        ``conninfo`` (a str) and ``connect_kwargs`` (a mapping) may each be a
        callable instead, returning them, and so may the value of any libpq
        keyword (the asyncio driver also awaits coroutine functions): they
        are then called before every connect (see :mod:`._params`), and what
        they return is checked then; what is known now is checked now.
        """
        psycopg = import_psycopg()
        self._psycopg = psycopg
        if not callable(getattr(connection_class, "connect", None)):
            raise TypeError(
                f"connection_class must be a psycopg Connection class, got {connection_class!r}"
            )
        self._cls = connection_class
        self._defaults = dict(defaults or {})
        # id(conn) -> severity of the last notice received outside a query
        # (written by psycopg's notice callback, read by after_readable()).
        self._notices: Dict[int, str] = {}
        self._params = params = ParamSource(
            conninfo, connect_kwargs, reserved=_PSYCOPG_ONLY, dsn_label="conninfo"
        )
        if params.dynamic:
            static_conninfo, static_kwargs = params.static()
            _, _, merged = self._complete(static_conninfo, static_kwargs)
            # What the static part says (target_session_attrs included).
            self._adopt_options(merged)
            self._masked = params.describe(mask_dsn(merged))
            self._conninfo: Any = ""
            self._kwargs: Any = {}
        else:
            self._conninfo, self._kwargs, merged = self._complete(conninfo, connect_kwargs)
            self._adopt_options(merged)
        # The time the asyncio driver gives coroutine functions to return: the
        # connect_timeout known now (a computed one is not known yet).
        given = _positive(merged.get("connect_timeout"))
        self._resolve_timeout = given or _positive(self._defaults.get("connect_timeout")) or 10.0

    def _complete(
        self, conninfo: Any, connect_kwargs: Any
    ) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        """Check connection parameters and add the defaults they lack: the
        conninfo and keywords to connect with, and every libpq option they
        make (to mask, and to know where connections go)."""
        psycopg = self._psycopg
        if conninfo is not None and not isinstance(conninfo, str):
            raise TypeError(
                f"conninfo must be a str (or a callable returning one), got "
                f"{type(conninfo).__name__}"
            )
        if not isinstance(connect_kwargs, Mapping):
            raise TypeError(
                f"kwargs must be a mapping (or a callable returning one), got "
                f"{type(connect_kwargs).__name__}"
            )
        kwargs: Dict[str, Any] = dict(connect_kwargs)
        libpq = {k: v for k, v in kwargs.items() if k not in _PSYCOPG_ONLY and v is not None}
        try:
            merged = psycopg.conninfo.conninfo_to_dict(conninfo or "", **libpq)
            # conninfo_to_dict accepts any keyword; libpq's parser knows the real ones.
            psycopg.conninfo.make_conninfo("", **merged)
        except psycopg.ProgrammingError as exc:
            raise self._invalid(str(exc), conninfo, libpq) from None
        for key, value in self._defaults.items():
            if key not in merged:
                kwargs[key] = value
                merged[key] = value
        return conninfo or "", kwargs, merged

    def _resolved(self, conninfo: Any, kwargs: Any) -> Tuple[str, Dict[str, Any]]:
        """Computed parameters, checked and completed, for this connect."""
        conninfo, kwargs, merged = self._complete(conninfo, kwargs)
        self.server_ports = server_ports(merged)  # the latest, for fork
        return conninfo, kwargs

    def _watch(self, conn: Any) -> None:
        """Record notices that arrive outside a query (a FATAL before a hang-up)."""
        key = id(conn)
        notices = self._notices

        def on_notice(diag: Any) -> None:
            notices[key] = diag.severity_nonlocalized or diag.severity or ""

        conn.add_notice_handler(on_notice)

    def _check_new(self, conn: Any) -> Optional[BaseException]:
        """libpq may have read a FATAL (a backend terminated as the connection
        completed) into its buffer, where no socket probe can see it: parse it."""
        error: Optional[BaseException] = None
        try:
            conn.pgconn.consume_input()
            conn.pgconn.is_busy()  # parses what was read: a FATAL becomes a notice
        except self._psycopg.Error as exc:
            error = exc
        else:
            if self._notices.pop(id(conn), None) == "FATAL":
                error = self._psycopg.OperationalError(
                    "the server closed the connection right after it was opened"
                )
        return error

    def _check_idle(self, conn: Any) -> None:
        if conn.closed or conn.broken or conn.pgconn.transaction_status != _IDLE:
            raise self._psycopg.InterfaceError("connection not idle after rollback")

    def fileno(self, conn: Any) -> int:
        return int(conn.pgconn.socket)

    def adopt(self, conn: Any, owner: Any) -> None:
        # psycopg's `with conn:` closes the connection unless it knows a pool.
        conn._pool = owner

    def snapshot(self, conn: Any) -> Any:
        # Once per connection: what a reset (discard_all) puts back client-side.
        with contextlib.suppress(AttributeError):
            setattr(conn, CLIENT_DEFAULTS, (conn.row_factory, conn.prepare_threshold))
        return super().snapshot(conn)

    # -- check-in ------------------------------------------------------------

    def verdict(self, conn: Any, baseline: Any) -> int:
        if conn.closed:  # broken (lost), or closed by its holder
            return BROKEN if conn.broken else HOLDER_CLOSED
        status = conn.pgconn.transaction_status
        if status == _IDLE:
            if (
                conn.autocommit is baseline[0]
                and conn.isolation_level == baseline[1]
                and conn.read_only == baseline[2]
                and conn.deferrable == baseline[3]
            ):
                return CLEAN
            return self._SETTINGS_CHANGED
        if status in (_INTRANS, _INERROR):
            return DIRTY
        return BROKEN  # ACTIVE (a command still running) or UNKNOWN (connection lost)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken) or conn.pgconn.transaction_status != _IDLE

    # -- liveness ------------------------------------------------------------

    def after_readable(self, conn: Any, probe: Probe) -> Optional[bool]:
        key = id(conn)
        self._notices.pop(key, None)
        pgconn = conn.pgconn
        try:
            # Read what is there (bounded, as for psycopg2); is_busy() parses
            # it: a FATAL becomes a notice, NOTIFYs stay queued in libpq for
            # psycopg to deliver after the next command.
            for _ in range(3):
                pgconn.consume_input()
                pgconn.is_busy()
                if not probe(0):
                    break
        except (OSError, ValueError, self._psycopg.Error):
            return True
        if conn.closed or pgconn.status != 0:  # CONNECTION_OK
            return True
        severity = self._notices.pop(key, None)
        if severity is not None:
            return True if severity == "FATAL" else None
        return False

    # -- errors and helpers ------------------------------------------------------

    def cursor_kwargs(self, rows: Optional[str], cursor_factory: Any) -> Dict[str, Any]:
        if cursor_factory is not None:
            raise TypeError(
                "psycopg 3 cursors take a row factory, not a cursor factory: pass rows= "
                "(or give connect() a row_factory)"
            )
        if rows is None:
            return {}
        check_rows(rows)
        import psycopg.rows

        factories = {
            "tuple": psycopg.rows.tuple_row,
            "dict": psycopg.rows.dict_row,
            "namedtuple": psycopg.rows.namedtuple_row,
        }
        return {"row_factory": factories[rows]}

    @staticmethod
    def _execute_unprepared(cur: Any, query: str) -> None:
        cur.execute(query, prepare=False)

    def parameter_status(self, conn: Any, name: str) -> Optional[str]:
        raw = conn.pgconn.parameter_status(name.encode())  # conn.info allocates an object
        return None if raw is None else str(raw.decode())

    def client_read_only(self, conn: Any) -> bool:
        return conn.read_only is True

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        if not isinstance(exc, self._psycopg.Error):
            return False
        if conn is not None and conn.broken:  # closed, not by close()
            return True
        return is_lost_sqlstate(getattr(exc, "sqlstate", None))


class PsycopgDriver(_PsycopgBase):
    """psycopg 3 ``Connection``, opened with ``connection_class.connect(conninfo, **kwargs)``."""

    __slots__ = ()

    def ping(self, conn: Any) -> None:
        # Never prepared server-side (psycopg prepares a statement run often
        # enough): behind a transaction-pooling proxy the next ping may reach a
        # server connection that does not have it.
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1", prepare=False)
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    def connect(self) -> Any:
        conninfo, kwargs = self._conninfo, self._kwargs
        if self._params.dynamic:
            conninfo, kwargs = self._resolved(*self._params.resolve())
        conn = self._cls.connect(conninfo, **kwargs)
        self._watch(conn)
        error = self._check_new(conn)
        if error is not None:
            self.close(conn)
            raise error
        return conn

    def close(self, conn: Any) -> None:
        self._notices.pop(id(conn), None)
        with contextlib.suppress(Exception):
            # A pool with close_returns would take conn.close() for a return.
            conn._pool = None
            conn.close()

    def force_close(self, conn: Any) -> None:
        # psycopg frees the libpq connection in close(): never do that while
        # another thread is inside a query on it. Shutting the socket makes
        # that query fail at once; the connection is closed now if nobody
        # holds its lock, else when it comes back or is collected.
        self.interrupt(conn)
        lock = getattr(conn, "lock", None)
        if lock is not None and lock.acquire(False):
            try:
                self.close(conn)
            finally:
                lock.release()

    def clean(self, conn: Any, baseline: Any) -> None:
        # rollback() ends a transaction even in autocommit mode (explicit BEGIN).
        if conn.pgconn.transaction_status != _IDLE:
            conn.rollback()
        self.restore(conn, baseline)
        self._check_idle(conn)


class AsyncPsycopgDriver(_PsycopgBase):
    """psycopg 3 ``AsyncConnection``: the round trips are coroutines, for the asyncio shell."""

    __slots__ = ()
    _SETTINGS_CHANGED = DIRTY

    async def connect(self) -> Any:
        conninfo, kwargs = self._conninfo, self._kwargs
        if self._params.dynamic:
            # Within the connect_timeout, and cancelled with the connect.
            resolved = await self._params.resolve_async(self._resolve_timeout)
            conninfo, kwargs = self._resolved(*resolved)
        conn = await self._cls.connect(conninfo, **kwargs)
        self._watch(conn)
        error = self._check_new(conn)
        if error is not None:
            self.close_now(conn)
            raise error
        return conn

    def close_now(self, conn: Any) -> None:
        """Close without awaiting. AsyncConnection.close() only frees the libpq
        connection (no round trip) and so does this, from any callback; the
        connection then reads as closed."""
        self._notices.pop(id(conn), None)
        with contextlib.suppress(Exception):
            conn.pgconn.finish()

    def force_close(self, conn: Any) -> None:
        # A task may be awaiting a query on it (holding the connection's lock):
        # shutting the socket makes that query fail at once, and the libpq
        # connection is freed when it comes back or is collected. Freed now
        # only when no task is inside a query: its socket must not vanish
        # under an awaiting reader.
        self.interrupt(conn)
        lock = getattr(conn, "lock", None)
        if lock is not None and not lock.locked():
            self.close_now(conn)

    async def clean(self, conn: Any, baseline: Any) -> None:
        if conn.pgconn.transaction_status != _IDLE:
            await conn.rollback()
        # On an AsyncConnection the setters are coroutines (client-side all the same).
        for name, value in zip(self.SETTINGS, baseline):
            if getattr(conn, name) != value:
                await getattr(conn, f"set_{name}")(value)
        self._check_idle(conn)

    async def fetch_value(self, conn: Any, query: str) -> Any:
        """As the sync one, awaited."""
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            async with conn.cursor() as cur:
                await cur.execute(query, prepare=False)
                row = await cur.fetchone()
                return None if row is None else row[0]
        finally:
            if not autocommit and not conn.closed:
                await conn.set_autocommit(False)

    async def ping(self, conn: Any) -> None:  # type: ignore[override]
        # As the sync ping (DriverBase.ping), awaited.
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1", prepare=False)  # see PsycopgDriver.ping
        finally:
            if not autocommit and not conn.closed:
                await conn.set_autocommit(False)
