"""Helpers shared by the test modules: waiting on conditions, tiny query shortcuts."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Tuple

#: Upper bound for any single wait in the tests; generous for noisy 2-core VMs.
DEADLINE = 15.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true, failing with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def backend_pid(conn: Any) -> int:
    """The server process serving ``conn`` (psycopg2 or psycopg 3)."""
    return int(conn.info.backend_pid)


def scalar(conn: Any, query: str, params: Any = None) -> Any:
    """Run ``query`` and return the first column of its first row."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
        assert row is not None, f"no row from {query!r}"
        return row[0]


def select_one(dsn: str, **connect_kwargs: Any) -> int:
    """Open a fresh connection to ``dsn``, run ``SELECT 1`` and close it."""
    import psycopg2

    conn = psycopg2.connect(dsn, **connect_kwargs)
    try:
        return int(scalar(conn, "SELECT 1"))
    finally:
        conn.close()


class Flavor:
    """A driver the pool runs on, with what tests need to speak to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "psycopg2":
            import psycopg2
            import psycopg2.errors

            self.errors: Any = psycopg2.errors
            self.Error: Any = psycopg2.Error
            self.OperationalError: Any = psycopg2.OperationalError
            self.pool_kwargs: Dict[str, Any] = {}
        else:
            import psycopg

            self.errors = psycopg.errors
            self.Error = psycopg.Error
            self.OperationalError = psycopg.OperationalError
            self.pool_kwargs = {"connection_class": psycopg.Connection}

    def connect(self, dsn: str) -> Any:
        """A connection made without the pool."""
        if self.name == "psycopg2":
            import psycopg2

            return psycopg2.connect(dsn)
        import psycopg

        return psycopg.connect(dsn)

    def idle(self, conn: Any) -> bool:
        """Whether no transaction is open on ``conn``."""
        if self.name == "psycopg2":
            return bool(conn.get_transaction_status() == 0)
        return bool(conn.info.transaction_status == 0)

    def settings(self, conn: Any) -> Tuple[Any, ...]:
        """autocommit, isolation level, read only, deferrable."""
        read_only = conn.readonly if self.name == "psycopg2" else conn.read_only
        return (conn.autocommit, conn.isolation_level, read_only, conn.deferrable)

    def change_settings(self, conn: Any) -> None:
        """autocommit on, serializable, read only, deferrable."""
        conn.autocommit = True
        if self.name == "psycopg2":
            import psycopg2.extensions

            conn.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE
            conn.readonly = True
        else:
            import psycopg

            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
            conn.read_only = True
        conn.deferrable = True

    def __repr__(self) -> str:
        return self.name


#: Every driver ConnectionPool runs on; pool tests run once per flavor.
FLAVORS = [Flavor("psycopg2"), Flavor("psycopg")]
