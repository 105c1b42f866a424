"""What people write by hand around a pool, built in: ``connection()``,
``cursor()``, ``execute()``, ``health_check()`` and ``stats()``.

:class:`PoolHelpers` is a mixin shared by :class:`~pgreservoir.ConnectionPool`
and the psycopg2-compatible classes of :mod:`pgreservoir.pool`. It relies on
two primitives only, ``_helper_acquire(timeout)`` and ``_helper_release(conn)``
(by default the engine's acquire/release), so each facade keeps its own
error vocabulary: a compat pool raises psycopg2's messages from these helpers
too. The helpers call the primitives, never each other's public names, so a
user subclass that defines its own ``connection`` or ``execute`` does not
change how the others behave.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from ._sync.shell import SyncPool
from .drivers import ROW_TYPES
from .options import check_seconds

__all__ = ["ROW_TYPES", "PoolHelpers"]

class PoolHelpers:
    """Context managers and one-call helpers on top of a pool's checkout/check-in."""

    _shell: SyncPool

    # -- primitives (facades override these to translate errors) -----------

    def _helper_acquire(self, timeout: Optional[float]) -> Any:
        """Take a connection for a helper (``timeout`` None: the pool's default)."""
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        return self._shell.acquire(timeout)

    def _helper_release(self, conn: Any, close: bool = False) -> None:
        """Give back a connection taken by :meth:`_helper_acquire`."""
        self._shell.release(conn, close)

    # -- context managers ---------------------------------------------------

    @contextlib.contextmanager
    def connection(self, timeout: Optional[float] = None) -> Iterator[Any]:
        """``with pool.connection() as conn:`` — commit on success, roll back on error.

        The connection always goes back to the pool, even if the commit fails;
        an open transaction left by an exception is rolled back by the pool
        when it takes the connection back. If the exception says the server
        connection is gone, the connection is closed instead, and the pool's
        idle connections get a round trip before their next use (they
        probably went with it). So is one whose write was refused as read-only
        (SQLSTATE 25006) when the pool wants a writable server
        (``target_session_attrs=read-write``). ``timeout`` as for ``getconn``.
        """
        conn = self._helper_acquire(timeout)
        try:
            yield conn
        except BaseException as exc:
            shell = self._shell
            lost = shell.driver.is_disconnect(exc, conn) or shell.refused_for_role(exc, conn)
            if lost:
                shell.mark_suspect()
            self._helper_release(conn, lost)
            raise
        try:
            if not conn.closed:
                conn.commit()
        finally:
            self._helper_release(conn)

    @contextlib.contextmanager
    def cursor(
        self,
        *,
        rows: Optional[str] = None,
        autocommit: bool = False,
        cursor_factory: Any = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Any]:
        """``with pool.cursor(rows="dict") as cur:`` — a cursor on a pooled connection.

        ``rows`` picks the row type (see :data:`ROW_TYPES`); ``cursor_factory``
        any other psycopg2 cursor class. With ``autocommit=False`` (default) the
        block is one transaction: committed when it ends normally, rolled back
        on an exception. With ``autocommit=True`` every statement commits by
        itself. The cursor is closed, the connection returned, and its
        ``autocommit`` (and other session characteristics) restored by the
        pool. The connection is ``cur.connection``.
        """
        kwargs = self._shell.driver.cursor_kwargs(rows, cursor_factory)
        if not isinstance(autocommit, bool):
            raise TypeError(f"autocommit must be a bool, got {autocommit!r}")
        conn = self._helper_acquire(timeout)
        try:
            if conn.autocommit is not autocommit:
                conn.autocommit = autocommit
            cur = conn.cursor(**kwargs)
            try:
                yield cur
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
            if not autocommit:
                conn.commit()
        finally:
            # An exception (or a failed commit) leaves a transaction open: the
            # pool rolls it back, and restores autocommit, as it takes it back.
            self._helper_release(conn)

    # -- one-call helpers ---------------------------------------------------

    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        rows: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Union[List[Any], int]:
        """Run one statement on a pooled connection and commit it.

        Returns the rows (a list) if the statement produces rows (``SELECT``,
        ``... RETURNING``), otherwise the number of rows affected (``-1`` when
        the server does not say). On an error the transaction is rolled back
        and the error propagates. ``rows`` as for :meth:`cursor`.
        """
        kwargs = self._shell.driver.cursor_kwargs(rows, None)
        conn = self._helper_acquire(timeout)
        try:
            with conn.cursor(**kwargs) as cur:
                cur.execute(query, params)
                result: Union[List[Any], int] = (
                    cur.fetchall() if cur.description is not None else cur.rowcount
                )
            conn.commit()
            return result
        finally:
            self._helper_release(conn)

    def health_check(self, timeout: Optional[float] = None) -> Tuple[bool, str]:
        """Whether the pool can serve, with a message for humans.

        Takes a connection (waiting as ``getconn`` would) and runs
        ``SELECT version()`` on it: a real round trip to the server. Returns
        ``(True, "healthy: PostgreSQL 15.4 ... (pool ...)")`` or
        ``(False, "unhealthy: <error> (pool ...)")``; never raises for a
        database or pool error. If the query breaks the connection (the
        server dropped it since its last use), the pool discards it and the
        check is made once more on another connection: one stale connection
        says nothing about whether the pool can serve.
        """
        for attempt in (1, 2):
            try:
                conn = self._helper_acquire(timeout)
            except Exception as exc:
                return False, self._unhealthy(exc)
            try:
                version = self._server_version(conn)
            except Exception as exc:
                if attempt == 1 and conn.closed:
                    continue  # broken: discarded by the release below; try another
                return False, self._unhealthy(exc)
            finally:
                self._helper_release(conn)
            shell = self._shell
            return True, f"healthy: {version} (pool {shell.name!r}: {shell.describe()})"
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _server_version(conn: Any) -> str:
        """``SELECT version()`` in autocommit mode: one round trip, no transaction left."""
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version()")
                row = cur.fetchone()
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
        return str(row[0]) if row else "unknown server version"

    def _unhealthy(self, exc: BaseException) -> str:
        shell = self._shell
        text = " ".join(str(exc).split()) or "(no message)"
        cause = exc.__cause__
        if cause is not None and " ".join(str(cause).split()) not in text:
            # The drop-in's "connection pool exhausted" says nothing of why.
            text += f"; caused by {type(cause).__name__}: {' '.join(str(cause).split())}"
        where = f"pool {shell.name!r}: {shell.describe()}"
        return f"unhealthy: {type(exc).__name__}: {shell.driver.redact(text)} ({where})"

    def stats(self) -> Dict[str, Any]:
        """Gauges (size, idle, in_use, waiting...) and counters since the pool opened.

        The keys are listed in :mod:`pgreservoir.stats`.
        """
        return self._shell.stats()  # type: ignore[no-any-return]
