"""The backend's ``DatabaseWrapper``: Django's PostgreSQL one, connecting through a pool.

Everything is Django's (``django.db.backends.postgresql``: operations,
schema editor, introspection, ``contrib.postgres``...) except where a
connection comes from and goes to. With ``OPTIONS["pool"]`` set, each
checkout takes a connection from the alias's :class:`DjangoConnectionPool`
and ``close()`` gives it back, on psycopg 3 *and* psycopg2 (Django picks
psycopg 3 when it is installed, as its own backend does). Django's hook
points are kept, so what Django does around its own pool still happens:
``pool`` and ``close_pool()``, the pool closed around CREATE/DROP DATABASE
and when TIME_ZONE or USE_TZ change, the time zone and ``assume_role`` set
once per new connection (the pool's ``configure``), ``CONN_HEALTH_CHECKS``
as the pool's ``check``, and CONN_MAX_AGE refused as Django refuses it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.postgresql import base as _postgresql
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.utils.asyncio import async_unsafe

from ._pools import POOL_KEYS, DjangoConnectionPool, Registry, identity, pool_arguments

__all__ = ["DatabaseWrapper", "DjangoConnectionPool"]

# connect() pins the pool it takes from, so that every step of one connect
# (checkout, init_connection_state, the return) sees the same pool even if
# another thread retires the alias's pool meanwhile.
_UNPINNED: Any = object()


def _ping(conn: Any) -> None:
    """CONN_HEALTH_CHECKS: a round trip before every hand-out."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1")


class DatabaseWrapper(_postgresql.DatabaseWrapper):
    """Django's PostgreSQL ``DatabaseWrapper``, taking its connections from a pgreservoir pool."""

    # One registry for every wrapper of this class: a pool per alias, shared by
    # the per-thread wrappers and connection.copy().
    _reservoir_registry = Registry()
    # Per wrapper: the pool the current connection came from (None: opened
    # directly), and the pool pinned while connect() runs.
    _reservoir_source: Optional[DjangoConnectionPool] = None
    _reservoir_pinned: Any = _UNPINNED

    # -- the pool ------------------------------------------------------------

    @property
    def pool(self) -> Optional[DjangoConnectionPool]:
        """The alias's pool (built on first use), or None without ``OPTIONS["pool"]``."""
        pinned = self._reservoir_pinned
        if pinned is not _UNPINNED:
            return pinned  # type: ignore[no-any-return]
        return self._reservoir_pool()

    def _reservoir_pool(self) -> Optional[DjangoConnectionPool]:
        if self.alias == NO_DB_ALIAS or not self.settings_dict["OPTIONS"].get("pool"):
            return None
        return self._reservoir_registry.get_or_build(
            self.alias, identity(self.settings_dict), self._build_pool
        )

    def _build_pool(self) -> DjangoConnectionPool:
        settings = self.settings_dict
        if settings.get("CONN_MAX_AGE", 0) != 0:
            # Django's own pool refuses it with this message, in the same error.
            raise ImproperlyConfigured(
                "Pooling doesn't support persistent connections. Set CONN_MAX_AGE to 0 "
                f"for database {self.alias!r} (the pool keeps the connections open), or "
                'remove OPTIONS["pool"].'
            )
        health_check: Optional[Callable[[Any], None]] = (
            _ping if settings.get("CONN_HEALTH_CHECKS") else None
        )
        try:
            pool_kwargs = pool_arguments(
                settings["OPTIONS"]["pool"],
                alias=self.alias,
                configure=self._reservoir_configure,
                health_check=health_check,
            )
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        connect_kwargs = self.get_connection_params()
        connection_class = None
        if is_psycopg3:
            connection_class = self.Database.Connection
            # Pooled connections rest in autocommit, Django's own mode; it
            # sets AUTOCOMMIT at every checkout.
            connect_kwargs["autocommit"] = True
        misplaced = set(connect_kwargs) & POOL_KEYS
        if misplaced:
            raise ImproperlyConfigured(
                f"database {self.alias!r}: {', '.join(sorted(misplaced))} in OPTIONS is a "
                'pool option: move it into OPTIONS["pool"]'
            )
        try:
            return DjangoConnectionPool(
                None, connection_class=connection_class, **pool_kwargs, **connect_kwargs
            )
        except (TypeError, ValueError) as exc:  # a pool option or connection option refused
            raise ImproperlyConfigured(f"database {self.alias!r}: {exc}") from exc

    def _reservoir_configure(self, conn: Any) -> None:
        """The pool's ``configure``: once per new connection, Django's own set-up
        (the time zone, then ``assume_role``), in a pool thread."""
        if not is_psycopg3:
            # psycopg2 connects outside autocommit: the SETs below would leave
            # a transaction open, and the pool's baseline would not be Django's mode.
            conn.autocommit = True
        self._configure_timezone(conn)  # type: ignore[attr-defined]
        role = self.settings_dict["OPTIONS"].get("assume_role")
        if role:
            # Not Django's _configure_role(): it quotes the role through this
            # wrapper's own cursor, which would take a connection from the pool
            # being filled (a deadlock). The role is a literal, quoted by the driver.
            cur = self.Database.ClientCursor(conn) if is_psycopg3 else conn.cursor()
            with cur:
                cur.execute("SET ROLE %s", [role])

    def close_pool(self) -> None:
        """Close the alias's pool (Django calls it before CREATE/DROP DATABASE and
        when TIME_ZONE or USE_TZ change): idle connections close now, those in
        use when they come back; the next connect builds a new pool."""
        if self.alias != NO_DB_ALIAS and self.settings_dict["OPTIONS"].get("pool"):
            self._reservoir_registry.retire(self.alias)

    # -- connections -----------------------------------------------------------

    def get_connection_params(self) -> Dict[str, Any]:
        """Django's connection parameters, without the ``pool`` key: Django's
        backend refuses it on psycopg2 ("requires psycopg >= 3"); ours pools both."""
        settings = self.settings_dict
        if "pool" not in settings["OPTIONS"]:
            return super().get_connection_params()
        options = {k: v for k, v in settings["OPTIONS"].items() if k != "pool"}
        self.settings_dict = {**settings, "OPTIONS": options}
        try:
            return super().get_connection_params()
        finally:
            self.settings_dict = settings

    @async_unsafe
    def connect(self) -> None:
        """Django's connect(), with one pool pinned for all of it."""
        self._reservoir_pinned = self._reservoir_pool()
        try:
            super().connect()
        finally:
            self._reservoir_pinned = _UNPINNED

    def get_new_connection(self, conn_params: Any) -> Any:
        """A connection from the pool (or a new one without a pool), set up by Django."""
        pool = self.pool
        conn = super().get_new_connection(conn_params)
        self._reservoir_source = pool
        return conn

    def _close(self) -> None:
        conn = self.connection
        if conn is None:
            return None
        source = self._reservoir_source
        if source is None:
            with self.wrap_database_errors:
                return conn.close()  # type: ignore[no-any-return]
        # Back to the pool it came from, even if the alias has a new pool by
        # now. In a transaction or in error: rolled back and its settings
        # restored before anyone else gets it.
        self._reservoir_source = None
        self.connection = None
        with self.wrap_database_errors:
            source.putconn(conn)
        return None

    def close_if_health_check_failed(self) -> None:
        """A pooled connection is checked by the pool at every checkout (no dead
        one is handed out; with CONN_HEALTH_CHECKS, a round trip too)."""
        if self._reservoir_source is not None:
            return
        BaseDatabaseWrapper.close_if_health_check_failed(self)
