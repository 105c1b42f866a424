"""Ready-made ``reset=`` callables: give every caller a fresh session.

By default a returned connection is rolled back and its ``autocommit``,
isolation level, read-only and deferrable settings are put back; everything
else a caller did to the session stays for the next one (a ``SET``, a
``LISTEN``, a temporary table, an advisory lock, a ``WITH HOLD`` cursor,
prepared statements, psycopg 3's ``row_factory`` and ``prepare_threshold``).
``reset=discard_all`` (``reset=async_discard_all`` for an asyncio pool)
ends all of that at every return, for one round trip (see docs/reset.md).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from .drivers._base import CLIENT_DEFAULTS

__all__ = ["async_discard_all", "discard_all"]

_DISCARD = "DISCARD ALL"


def _is_async(conn: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(conn, "set_autocommit", None))


def discard_all(conn: Any) -> None:
    """``reset=`` for :class:`~pgreservoir.ConnectionPool` (psycopg2 or psycopg 3):
    ``DISCARD ALL``, then the client side.

    The server forgets the session's state: settings (``RESET ALL``, back to
    those of the connection string and the role), ``LISTEN``\\ s, temporary
    tables, advisory locks, cursors (``WITH HOLD`` ones too), prepared
    statements, cached plans. ``DISCARD ALL`` cannot run in a transaction:
    the pool calls ``reset`` on an idle connection (rolled back), and this
    runs it in autocommit mode, putting the mode back after. On the client:
    psycopg2's queued ``notices`` and ``notifies`` are cleared; psycopg 3's
    ``row_factory`` and ``prepare_threshold`` go back to what they were when
    the connection was opened (after ``configure``), and its cache of
    prepared statements is emptied with the server's.
    """
    if _is_async(conn):
        raise TypeError(
            "discard_all() is for blocking connections; an asyncio pool takes "
            "reset=pgreservoir.async_discard_all"
        )
    autocommit = conn.autocommit
    if not autocommit:
        conn.autocommit = True
    try:
        cur = conn.cursor()
        try:
            cur.execute(_DISCARD)
        finally:
            cur.close()
    finally:
        if not autocommit and not conn.closed:
            conn.autocommit = False
    _reset_client(conn)


async def async_discard_all(conn: Any) -> None:
    """``reset=`` for :class:`~pgreservoir.AsyncConnectionPool` (and the psycopg_pool
    drop-in's async pool): :func:`discard_all` for an ``AsyncConnection``."""
    autocommit = conn.autocommit
    if not autocommit:
        await conn.set_autocommit(True)
    try:
        await conn.execute(_DISCARD)
    finally:
        if not autocommit and not conn.closed:
            await conn.set_autocommit(False)
    _reset_client(conn)


def _reset_client(conn: Any) -> None:
    """The client-side part of a session, put back without I/O."""
    for name in ("notices", "notifies"):  # psycopg2's queues (lists, or deques)
        queue = getattr(conn, name, None)
        if queue is not None and not callable(queue):  # psycopg 3's notifies() is a method
            with contextlib.suppress(Exception):
                queue.clear()
    defaults = getattr(conn, CLIENT_DEFAULTS, None)
    if defaults is not None:
        row_factory, prepare_threshold = defaults
        if conn.row_factory is not row_factory:
            conn.row_factory = row_factory
        if conn.prepare_threshold != prepare_threshold:
            conn.prepare_threshold = prepare_threshold
