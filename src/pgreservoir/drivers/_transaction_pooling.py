"""Connections for a server side that pools transactions (``transaction_pooling=True``).

Behind PgBouncer in ``pool_mode=transaction`` (or RDS Proxy, Supavisor) each
transaction may run on another server connection, and whatever a session
changes on one stays there for the next client. Two drivers' habits do that:

* psycopg2 sends ``SET default_transaction_isolation`` (``_read_only``,
  ``_deferrable``) as soon as ``isolation_level``, ``readonly`` or
  ``deferrable`` change on an autocommit connection, and so does the pool's
  own restore at check-in. :func:`psycopg2_factory` gives connections whose
  attributes change client-side only: psycopg2 keeps them for the next
  transaction it opens (``BEGIN ISOLATION LEVEL ...``), which runs on one
  server connection from BEGIN to COMMIT, so nothing stays behind. In
  autocommit mode they then have no effect, as no session state can under
  transaction pooling.
* psycopg 3 prepares a statement on the server after ``prepare_threshold``
  executions (5) and later finds it missing on another server connection;
  :func:`psycopg_kwargs` turns that off unless the caller chose a threshold.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

__all__ = ["psycopg2_factory", "psycopg_kwargs"]

_CHARACTERISTICS = ("isolation_level", "readonly", "deferrable")
_classes: Dict[type, type] = {}


def psycopg_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """psycopg 3 connect keywords with server-side prepared statements off, unless set."""
    if "prepare_threshold" in kwargs:
        return kwargs
    return {**kwargs, "prepare_threshold": None}


def _client_side(base: type, name: str) -> property:
    descriptor = getattr(base, name)

    def get(conn: Any) -> Any:
        return descriptor.__get__(conn, type(conn))

    def set_(conn: Any, value: Any) -> None:
        if not conn.autocommit:
            descriptor.__set__(conn, value)  # kept for the next BEGIN: no round trip
            return
        # In autocommit mode psycopg2 would SET it on the server at once: out of
        # autocommit for the change, it only notes it (turning autocommit back on
        # sends nothing).
        conn.autocommit = False
        try:
            descriptor.__set__(conn, value)
        finally:
            conn.autocommit = True

    return property(get, set_, doc=f"{name}, changed client-side only (transaction pooling)")


def psycopg2_factory(base: Any) -> Any:
    """A subclass of the psycopg2 connection class ``base`` whose session characteristics
    never leave a server-side SET behind (see the module notes)."""
    cls = _classes.get(base)
    if cls is not None:
        return cls
    members: Dict[str, Any] = {name: _client_side(base, name) for name in _CHARACTERISTICS}
    base_set_session = base.set_session

    def set_session(
        conn: Any,
        isolation_level: Any = None,
        readonly: Any = None,
        deferrable: Any = None,
        autocommit: Any = None,
    ) -> None:
        was = conn.autocommit
        if was:
            conn.autocommit = False
        try:
            base_set_session(conn, isolation_level, readonly, deferrable)
        finally:
            if was:
                conn.autocommit = True
        if autocommit is not None:
            conn.autocommit = autocommit

    members["set_session"] = set_session
    members["__doc__"] = f"{base.__qualname__} for a transaction-pooling proxy (pgreservoir)"
    cls = type(f"TransactionPooled{base.__name__.capitalize()}", (base,), members)
    _classes[base] = cls
    return cls


def psycopg2_connect_args(
    kwargs: Dict[str, Any], args: Tuple[Any, ...]
) -> Tuple[Dict[str, Any], Tuple[Any, ...]]:
    """psycopg2.connect() arguments with the connection factory made transaction-pooled
    (``connection_factory=`` or the first positional argument; default the plain class)."""
    import psycopg2.extensions

    if args:
        return kwargs, (psycopg2_factory(args[0] or psycopg2.extensions.connection), *args[1:])
    base = kwargs.get("connection_factory") or psycopg2.extensions.connection
    return {**kwargs, "connection_factory": psycopg2_factory(base)}, args
