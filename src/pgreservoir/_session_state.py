"""Session state left behind under ``transaction_pooling=True``, noticed and warned about.

Behind a transaction-pooling proxy whatever a session keeps (a ``SET``
without ``LOCAL``, ``LISTEN``, an advisory lock, a temporary table, a
``PREPARE``) stays on the one server connection it ran on and leaks to the
next client. The pool's own habits leave none; user callbacks may. After
``configure()`` (every new connection) and after the first
:data:`RESET_CHECKS` ``reset()`` calls of a pool, one round trip (in the
check_timeout of that step) asks the server what the session holds, and
the first finding of each kind is logged at WARNING, naming the callback.

Through a proxy the question may reach another server connection than the
callback's statements did: PgBouncer reuses the server connection released
last, so while the load is light it usually reaches the same one. Detection
is best effort; the guide (docs/scaling-out.md) says what to write instead.
"""

from __future__ import annotations

from typing import List, Optional, Set

from ._logging import logger

__all__ = ["RESET_CHECKS", "SESSION_STATE_SQL", "SessionStateWatch"]

#: reset() calls checked per pool (configure() is checked every time: once per
#: new connection). Each costs a round trip.
RESET_CHECKS = 16

# Parameters PgBouncer itself sets per client (and that startup packets set):
# a session value of them is expected, not a leak.
_EXPECTED = (
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "standard_conforming_strings",
    "timezone",
)

SESSION_STATE_SQL = (
    "SELECT array_remove(ARRAY["
    "(SELECT 'SET ' || string_agg(name, ', ' ORDER BY name) FROM pg_settings"
    " WHERE source = 'session' AND lower(name) NOT IN ("
    + ", ".join(f"'{name}'" for name in _EXPECTED)
    + ")),"
    "(SELECT 'LISTEN ' || string_agg(c, ', ' ORDER BY c) FROM pg_listening_channels() AS c),"
    "(SELECT count(*) || ' advisory lock(s)' FROM pg_locks"
    " WHERE locktype = 'advisory' AND pid = pg_backend_pid() HAVING count(*) > 0),"
    "(SELECT count(*) || ' temporary table(s)' FROM pg_class"
    " WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r' HAVING count(*) > 0),"
    "(SELECT 'PREPARE ' || string_agg(name, ', ' ORDER BY name) FROM pg_prepared_statements)"
    "], NULL)"
)


class SessionStateWatch:
    """Per pool: which steps still get the check, and what was already reported."""

    __slots__ = ("_name", "_reported", "_resets_left")

    def __init__(self, name: str) -> None:
        self._name = name
        self._resets_left = RESET_CHECKS
        self._reported: Set[str] = set()

    def wants_reset_check(self) -> bool:
        """Whether this reset() gets the check (the first RESET_CHECKS of the pool)."""
        if self._resets_left <= 0:
            return False
        self._resets_left -= 1
        return True

    def found(self, callback: str, state: Optional[List[str]]) -> None:
        """Warn about what ``state`` (the query's answer) says the session keeps."""
        for item in state or ():
            kind = f"{callback}:{item.split(' ', 1)[0]}"
            if kind in self._reported:
                continue
            self._reported.add(kind)
            logger.warning(
                "pool %r: %s() left session state behind (%s): with transaction_pooling="
                "True it stays on one server connection of the proxy and leaks to other "
                "clients; use SET LOCAL inside a transaction, ALTER ROLE/DATABASE ... SET, "
                "or the proxy's own settings instead (see docs/scaling-out.md)",
                self._name,
                callback,
                item,
            )
