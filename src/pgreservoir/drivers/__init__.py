"""What a shell needs from a DB-API driver, and how the driver is chosen.

The core never touches a connection; the shells do, only through the small
:class:`Driver` interface below. psycopg2 and psycopg 3 implement it;
``make_driver()`` picks one: psycopg 3 when a ``connection_class`` is given
(psycopg_pool's spelling, e.g. ``connection_class=psycopg.Connection``),
psycopg2 otherwise. Each driver imports its library lazily, so pgreservoir
needs neither installed until a pool uses it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Protocol, Tuple

from .._core import BROKEN, CLEAN, CLOSE, DIRTY
from ..options import DEFAULT_CONNECT_OPTIONS
from ._conninfo import mask_dsn
from ._sockets import Probe

__all__ = [
    "BROKEN",
    "CLEAN",
    "CLOSE",
    "DEFAULT_CONNECT_OPTIONS",
    "DIRTY",
    "ROW_TYPES",
    "AsyncDriver",
    "Driver",
    "make_async_driver",
    "make_driver",
    "mask_dsn",
]


#: Accepted values of the ``rows`` argument of the pools' ``cursor()`` and
#: ``execute()`` helpers: ``"tuple"`` (plain rows), ``"dict"`` (each row a dict
#: keyed by column name) and ``"namedtuple"``. ``None`` keeps the
#: connection's default (the cursor or row factory it was created with).
ROW_TYPES = ("tuple", "dict", "namedtuple")


def check_rows(rows: Optional[str]) -> None:
    """Refuse a ``rows`` value that is not one of :data:`ROW_TYPES` (or None)."""
    if rows is not None and rows not in ROW_TYPES:
        raise ValueError(f"rows must be one of {ROW_TYPES} or None, got {rows!r}")


class Driver(Protocol):
    """The operations a shell performs on connections (never under the pool lock).

    None of them blocks except ``connect``, ``clean`` and ``ping`` (round
    trips: the shell bounds them) and ``close``.
    """

    #: The server ports connections may go to (to recognise them after a fork).
    server_ports: Tuple[int, ...]
    #: libpq's ``target_session_attrs`` for these connection options (None: unset).
    target_session_attrs: Optional[str]

    def connect(self) -> Any:
        """Open a new connection (raises the driver's error on failure)."""

    def close(self, conn: Any) -> None:
        """Close a connection the caller owns, never raising."""

    def force_close(self, conn: Any) -> None:
        """Close a connection another thread may be using, without waiting for it."""

    def interrupt(self, conn: Any) -> None:
        """Shut the connection's socket so a round trip blocked on it fails at once."""

    def fileno(self, conn: Any) -> int:
        """The connection's socket descriptor."""

    def probe(self, conn: Any) -> Probe:
        """A zero-round-trip readability probe of the connection's socket."""

    def adopt(self, conn: Any, owner: Any) -> None:
        """Mark a new connection as pooled by ``owner`` (psycopg 3 relies on it)."""

    def snapshot(self, conn: Any) -> Any:
        """The session settings to restore at every check-in."""

    def verdict(self, conn: Any, baseline: Any) -> int:
        """Classify a returned connection, without I/O: CLEAN, RESTORE (see
        :meth:`restore`), DIRTY, BROKEN or HOLDER_CLOSED (closed by ``close()``)."""

    def restore(self, conn: Any, baseline: Any) -> None:
        """Put back the settings of ``baseline`` on an idle connection, without I/O."""

    def clean(self, conn: Any, baseline: Any) -> None:
        """Roll back and restore settings; raise if the connection is not reusable."""

    def in_transaction(self, conn: Any) -> bool:
        """Whether a transaction is open (or the state is unknown)."""

    def after_readable(self, conn: Any, probe: Probe) -> Optional[bool]:
        """The probe found data on an idle connection: consume it and judge.

        True: the server hung up; False: harmless (a notification); None:
        unsure, a round trip will tell.
        """

    def ping(self, conn: Any) -> None:
        """Round-trip check; raises if the connection does not work."""

    def describe(self) -> str:
        """Where connections go, with every secret masked (for logs and errors)."""

    def redact(self, text: str) -> str:
        """``text`` with any secret of this driver's connection options masked."""

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        """Whether ``exc`` (raised while using ``conn``) means its server connection is gone."""

    def cursor_kwargs(self, rows: Optional[str], cursor_factory: Any) -> Dict[str, Any]:
        """Keyword arguments for ``conn.cursor()`` giving rows of type ``rows``."""

    def parameter_status(self, conn: Any, name: str) -> Optional[str]:
        """A parameter status the server reported (``in_hot_standby``...), without I/O."""

    def client_read_only(self, conn: Any) -> bool:
        """Whether the driver's own read-only attribute is set on ``conn``."""

    def is_read_only_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is SQLSTATE 25006 (a write refused by a read-only server)."""

    def fetch_value(self, conn: Any, query: str) -> Any:
        """Run ``query`` outside any transaction (a round trip); its first column."""


class AsyncDriver(Protocol):
    """The asyncio shell's driver: :class:`Driver` with the round trips as coroutines.

    Only ``connect``, ``clean`` and ``ping`` await; everything else (verdict,
    probe, interrupt, closing) is a quick call a callback can make.
    """

    server_ports: Tuple[int, ...]
    target_session_attrs: Optional[str]

    async def connect(self) -> Any:
        """Open a new connection (raises the driver's error on failure)."""

    def close_now(self, conn: Any) -> None:
        """Close a connection the pool owns, at once, never raising."""

    def force_close(self, conn: Any) -> None:
        """Make a connection a task may be using unusable at once."""

    def interrupt(self, conn: Any) -> None:
        """Shut the connection's socket so a round trip awaiting it fails at once."""

    def fileno(self, conn: Any) -> int:
        """The connection's socket descriptor."""

    def probe(self, conn: Any) -> Probe:
        """A zero-round-trip readability probe of the connection's socket."""

    def adopt(self, conn: Any, owner: Any) -> None:
        """Mark a new connection as pooled by ``owner``."""

    def snapshot(self, conn: Any) -> Any:
        """The session settings to restore at every check-in."""

    def verdict(self, conn: Any, baseline: Any) -> int:
        """Classify a returned connection, without I/O: CLEAN, DIRTY, BROKEN or
        HOLDER_CLOSED."""

    async def clean(self, conn: Any, baseline: Any) -> None:
        """Roll back and restore settings; raise if the connection is not reusable."""

    def in_transaction(self, conn: Any) -> bool:
        """Whether a transaction is open (or the state is unknown)."""

    def after_readable(self, conn: Any, probe: Probe) -> Optional[bool]:
        """As :meth:`Driver.after_readable` (reads only what is there: no waiting)."""

    async def ping(self, conn: Any) -> None:
        """Round-trip check; raises if the connection does not work."""

    def describe(self) -> str:
        """Where connections go, with every secret masked."""

    def redact(self, text: str) -> str:
        """``text`` with any secret of this driver's connection options masked."""

    def is_disconnect(self, exc: BaseException, conn: Any) -> bool:
        """Whether ``exc`` means the connection's server side is gone."""

    def parameter_status(self, conn: Any, name: str) -> Optional[str]:
        """As :meth:`Driver.parameter_status`."""

    def client_read_only(self, conn: Any) -> bool:
        """As :meth:`Driver.client_read_only`."""

    def is_read_only_error(self, exc: BaseException) -> bool:
        """As :meth:`Driver.is_read_only_error`."""

    async def fetch_value(self, conn: Any, query: str) -> Any:
        """As :meth:`Driver.fetch_value`, awaited."""


def make_async_driver(
    conninfo: Any,
    connect_kwargs: Mapping[str, Any],
    *,
    connection_class: Any = None,
    defaults: Optional[Mapping[str, Any]] = None,
    transaction_pooling: bool = False,
) -> AsyncDriver:
    """The asyncio driver: psycopg 3's ``AsyncConnection`` (or ``connection_class``);
    ``transaction_pooling``: server-side prepared statements off unless the keywords
    set ``prepare_threshold``."""
    from ._transaction_pooling import psycopg_kwargs
    from .psycopg_driver import AsyncPsycopgDriver, import_psycopg

    if transaction_pooling and isinstance(connect_kwargs, Mapping):
        connect_kwargs = psycopg_kwargs(dict(connect_kwargs))
    if connection_class is None:
        connection_class = import_psycopg().AsyncConnection
    return AsyncPsycopgDriver(conninfo, connect_kwargs, connection_class, defaults=defaults)


def make_driver(
    dsn: Any,
    connect_kwargs: Mapping[str, Any],
    *,
    connection_class: Any = None,
    defaults: Optional[Mapping[str, Any]] = None,
    args: Tuple[Any, ...] = (),
    transaction_pooling: bool = False,
) -> Driver:
    """The driver for these connection options (validated now, so a typo fails at once).

    ``dsn`` may be a str, None or a callable returning a str, and any libpq
    keyword's value a callable: see :mod:`._params` (rotating credentials).
    ``transaction_pooling``: the server side is a transaction-pooling proxy, so
    the connections must leave no session state behind (see
    :mod:`._transaction_pooling`)."""
    if connection_class is not None:
        from ._transaction_pooling import psycopg_kwargs
        from .psycopg_driver import PsycopgDriver

        if args:
            raise TypeError("psycopg 3 connections take no positional connection arguments")
        if transaction_pooling and isinstance(connect_kwargs, Mapping):
            connect_kwargs = psycopg_kwargs(dict(connect_kwargs))
        return PsycopgDriver(dsn, connect_kwargs, connection_class, defaults=defaults)
    from .psycopg2_driver import Psycopg2Driver

    return Psycopg2Driver(
        dsn, connect_kwargs, defaults=defaults, args=args, transaction_pooling=transaction_pooling
    )
