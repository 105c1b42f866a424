"""What the psycopg2 and psycopg 3 drivers share.

Both speak libpq: the same connection options, secrets, socket, session
settings and SQLSTATEs. What differs (how to connect, read the transaction
status, consume input, spell ``readonly``) stays in each driver; the hot
paths (``verdict``) are written out in each for speed.
"""

from __future__ import annotations

import abc
import contextlib
import os
from typing import Any, Collection, Mapping, Optional, Tuple

from ._conninfo import mask_dsn, parse_error, pool_option_hint, redact, server_ports
from ._sockets import Probe, make_probe, shutdown_fd

__all__ = ["CLIENT_DEFAULTS", "DriverBase", "is_lost_sqlstate"]

#: The attribute where the psycopg 3 drivers note a new connection's
#: client-side defaults (``row_factory``, ``prepare_threshold``, after
#: configure()), for :func:`pgreservoir.discard_all` to put back.
CLIENT_DEFAULTS = "_pgreservoir_client_defaults"


def is_lost_sqlstate(code: Optional[str]) -> bool:
    """Whether a SQLSTATE says the server connection is gone: class 08
    (connection exception) or 57P01-57P03 (admin shutdown, crash shutdown,
    cannot connect now)."""
    code = code or ""
    return code.startswith("08") or code in ("57P01", "57P02", "57P03")


class DriverBase(abc.ABC):
    """Display, redaction, socket operations, settings and the ping, for libpq drivers."""

    __slots__ = ("_masked", "server_ports", "target_session_attrs")

    #: The session settings restored at check-in, as the driver spells them.
    SETTINGS: Tuple[str, ...] = ()

    def _adopt_options(self, merged: Mapping[str, Any]) -> None:
        """Remember where connections go (masked), the server ports and the
        ``target_session_attrs`` libpq will use (the option, else its variable)."""
        self._masked = mask_dsn(merged)
        self.server_ports = server_ports(merged)
        attrs = merged.get("target_session_attrs") or os.environ.get("PGTARGETSESSIONATTRS")
        self.target_session_attrs = str(attrs) if attrs else None

    @abc.abstractmethod
    def parameter_status(self, conn: Any, name: str) -> Optional[str]:
        """A parameter the server reported (``in_hot_standby``...), without I/O."""

    @abc.abstractmethod
    def client_read_only(self, conn: Any) -> bool:
        """Whether the driver itself made the session read-only (its own attribute)."""

    @staticmethod
    def is_read_only_error(exc: BaseException) -> bool:
        """Whether ``exc`` is SQLSTATE 25006: a write refused by a read-only server."""
        return (getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)) == "25006"

    @staticmethod
    def _invalid(
        message: str, source: Optional[str], names: Collection[str] = ()
    ) -> ValueError:
        """The error for options libpq refused, naming the option at fault and
        quoting nothing that may be a secret. ``source``: the connection
        string libpq parsed (None if it built one from keywords); ``names``:
        the keyword arguments' names."""
        return ValueError(
            f"invalid connection options: {parse_error(message, source, names)}"
            f"{pool_option_hint(message)}; pass libpq keywords (host, port, dbname, "
            "user, password, connect_timeout, ...) or a valid connection string"
        )

    @abc.abstractmethod
    def fileno(self, conn: Any) -> int:
        """The connection's socket descriptor."""

    def probe(self, conn: Any) -> Probe:
        return make_probe(self.fileno(conn))

    def interrupt(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            shutdown_fd(self.fileno(conn))

    def snapshot(self, conn: Any) -> Any:
        return tuple(getattr(conn, name) for name in self.SETTINGS)

    def restore(self, conn: Any, baseline: Any) -> None:
        """Put back the settings of ``baseline`` on an idle connection.

        Client-side in both drivers (psycopg2 >= 2.7, psycopg 3): no round trip.
        """
        for name, value in zip(self.SETTINGS, baseline):
            if getattr(conn, name) != value:
                setattr(conn, name, value)

    def ping(self, conn: Any) -> None:
        # In autocommit mode SELECT 1 is a single round trip; otherwise the
        # driver would open a transaction first and we would need a ROLLBACK.
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    def fetch_value(self, conn: Any, query: str) -> Any:
        """Run ``query`` (no parameters) outside any transaction; its first column."""
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True
        try:
            with conn.cursor() as cur:
                self._execute_unprepared(cur, query)
                row = cur.fetchone()
                return None if row is None else row[0]
        finally:
            if not autocommit and not conn.closed:
                conn.autocommit = False

    @staticmethod
    def _execute_unprepared(cur: Any, query: str) -> None:
        cur.execute(query)

    def describe(self) -> str:
        return self._masked

    def redact(self, text: str) -> str:
        return redact(text)
