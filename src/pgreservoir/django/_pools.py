"""The pools of the Django backend: one per database alias, built from
``OPTIONS["pool"]``, and retired without pulling connections from under
their holders.

Django's own pool support keeps one psycopg_pool per alias in a class-level
dict and closes it when the test database is created or dropped and when
TIME_ZONE or USE_TZ change. Here the same registry holds pgreservoir pools;
the difference is in the closing: a pool that still has connections out
(the thread whose time zone just changed keeps using its connection) stops
serving at once, closes its idle connections at once, and closes the rest as
they come back, never by force.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..connection_pool import ConnectionPool
from ..options import OPTION_NAMES

__all__ = ["POOL_KEYS", "DjangoConnectionPool", "Registry", "identity", "pool_arguments"]

#: The keys ``OPTIONS["pool"]`` accepts: the sizes and every pool option.
POOL_KEYS = frozenset({"min_size", "max_size"} | OPTION_NAMES)

#: psycopg_pool keys that make no sense here, with what to do instead.
_REFUSED = {
    "open": "the pool opens when Django first connects; remove 'open'",
    "kwargs": "connection options go in OPTIONS (outside 'pool'), as for any Django backend",
    "conninfo": "connection options go in NAME, USER, HOST... and OPTIONS",
    "connection_class": "Django's backend chooses the connection class",
}


class DjangoConnectionPool(ConnectionPool):
    """The pool of one Django database alias (a :class:`~pgreservoir.ConnectionPool`)."""

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Nothing to do: the pool opened when built. Django's backend calls
        ``open()`` before every checkout (psycopg_pool's pools start closed);
        ``wait=True`` waits for ``min_size`` connections, as psycopg_pool's does."""
        if wait:
            self.wait(timeout)


def pool_arguments(
    value: Any,
    *,
    alias: str,
    configure: Callable[[Any], None],
    health_check: Optional[Callable[[Any], None]],
) -> Dict[str, Any]:
    """``DjangoConnectionPool`` keywords for ``OPTIONS["pool"]`` (True or a dict).

    ``configure`` (Django's per-connection set-up: time zone, role) runs
    before the user's own ``configure``; ``health_check`` (CONN_HEALTH_CHECKS)
    before the user's ``check``. Raises ValueError naming a key it refuses.
    """
    if value is True:
        given: Mapping[str, Any] = {}
    elif isinstance(value, Mapping):
        given = value
    else:
        raise ValueError(
            f'OPTIONS["pool"] of database {alias!r} must be True, False or a dict of pool '
            f"options, got {value!r}"
        )
    for key in given:
        if key in _REFUSED:
            raise ValueError(f'OPTIONS["pool"] of database {alias!r}: {_REFUSED[key]}')
        if key not in POOL_KEYS:
            raise ValueError(
                f'OPTIONS["pool"] of database {alias!r} has an unknown key {key!r}; '
                f"accepted: {', '.join(sorted(POOL_KEYS))}"
            )
    for key in ("configure", "check"):
        if given.get(key) is not None and not callable(given[key]):
            raise ValueError(
                f'OPTIONS["pool"]["{key}"] of database {alias!r} must be a callable, '
                f"got {given[key]!r}"
            )
    kwargs = dict(given)
    kwargs.setdefault("name", f"django-{alias}")
    kwargs["configure"] = _chain(configure, given.get("configure"))
    checks = [c for c in (health_check, given.get("check")) if c is not None]
    kwargs["check"] = _chain(*checks) if checks else None
    return kwargs


def _chain(*steps: Optional[Callable[[Any], None]]) -> Callable[[Any], None]:
    todo = [step for step in steps if step is not None]
    if len(todo) == 1:
        return todo[0]

    def run(conn: Any) -> None:
        for step in todo:
            step(conn)

    return run


def identity(settings_dict: Mapping[str, Any]) -> Tuple[Any, ...]:
    """What a pool's connections are bound to: the process (a forked child must
    not use its parent's pool: Django's parallel test runner forks after it
    set up the databases) and the server, database and user of the settings
    (changed in place by Django when a test worker switches to its clone)."""
    return (
        os.getpid(),
        settings_dict.get("NAME"),
        settings_dict.get("USER"),
        settings_dict.get("HOST"),
        settings_dict.get("PORT"),
    )


class Registry:
    """The live pool of each alias. Thread-safe; shared by every wrapper of a backend
    class (so ``connection.copy()`` shares its original's pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # alias -> (its pool, the identity() it was built for); changed only
        # under _lock (read without it: a dict read is atomic).
        self._live: Dict[str, Tuple[DjangoConnectionPool, Tuple[Any, ...]]] = {}

    def get(self, alias: str) -> Optional[DjangoConnectionPool]:
        """The alias's pool, if one is built."""
        found = self._live.get(alias)
        return None if found is None else found[0]

    def get_or_build(
        self, alias: str, key: Tuple[Any, ...], build: Callable[[], DjangoConnectionPool]
    ) -> DjangoConnectionPool:
        """The alias's pool for ``key`` (see :func:`identity`), built by ``build()``
        if there is none (at most one is built: a pool starts a thread and
        connections, so no throwaway ones). A pool built for another key is
        replaced: retired if this process built it, forgotten if it is a
        parent's (inherited through fork; the parent still owns its connections)."""
        found = self._live.get(alias)
        if found is not None and found[1] == key:
            return found[0]
        stale: Optional[DjangoConnectionPool] = None
        with self._lock:
            found = self._live.get(alias)
            if found is not None and found[1] == key:
                return found[0]
            if found is not None and found[1][0] == key[0]:
                stale = found[0]
            pool = build()
            self._live[alias] = (pool, key)
        if stale is not None:
            _close_when_returned(stale)
        return pool

    def retire(self, alias: str) -> None:
        """Close the alias's pool: idle connections close now, those in use as
        they come back, never by force; the next connect builds a new pool."""
        with self._lock:
            found = self._live.pop(alias, None)
        if found is not None and found[1][0] == os.getpid():
            _close_when_returned(found[0])


def _close_when_returned(pool: DjangoConnectionPool) -> None:
    if pool.stats()["in_use"] == 0:
        # Nothing to wait for: closed before this returns (Django drops or
        # copies the database next). A connection taken meanwhile, by a
        # thread that looked the pool up before it was retired, is waited for.
        pool.close(math.inf)
        return
    # close() stops serving and closes the idle connections, then waits for
    # the holders (the thread whose time zone just changed keeps its
    # connection): that wait is this thread's, however long it lasts.
    threading.Thread(
        target=pool.close, args=(math.inf,), name=f"{pool.name}-retire", daemon=True
    ).start()
