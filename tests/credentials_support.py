"""What the rotating-credentials tests share: a server that checks passwords, a
login role per test, a secret that changes, and the check that no secret leaks.

The session's shared server trusts every connection, so a password would be
ignored; these tests run on a server of their own, started with a superuser
password (``PostgresServer(password=...)``: TCP connections then need
``scram-sha-256``), where each test creates a login role with a password and
changes it with ``ALTER ROLE ... PASSWORD`` as an operator would.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from typing import Any, Iterable, Iterator, List, Optional

import psycopg2
import pytest

from pgreservoir.testing import PostgresServer

ADMIN_PASSWORD = "admin-Pw-7f3c"


class Secret:
    """A password that changes, as a secrets store or an IAM token endpoint would
    give it out: ``value`` is the current one; each call is counted. ``fail``
    makes the next calls raise it; ``wrong`` makes them return it instead."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0
        self.fail: Optional[BaseException] = None
        self.wrong: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
            if self.fail is not None:
                raise self.fail
            if self.wrong is not None:
                return self.wrong
            return self.value

    def __repr__(self) -> str:
        # What a careless token cache might print: the pool must never call it.
        return f"Secret({self.value!r})"


class Role:
    """A login role on the password server, with its own current password."""

    def __init__(self, server: PostgresServer, name: str, password: str) -> None:
        self.server = server
        self.name = name
        self.password = password
        #: Every password the role has had: none may appear anywhere.
        self.passwords: List[str] = [password]

    @property
    def dsn(self) -> str:
        """Where to connect as this role, with no password in it."""
        return self.server.make_dsn(dbname="postgres", user=self.name, password=None)

    def alter_password(self, new: str) -> None:
        """``ALTER ROLE ... PASSWORD``: from now on only ``new`` authenticates."""
        with self._admin() as cur:
            cur.execute(f'ALTER ROLE "{self.name}" PASSWORD %s', (new,))
        self.password = new
        self.passwords.append(new)

    def backend_pids(self) -> List[int]:
        """The server processes serving this role now."""
        with self._admin() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s ORDER BY pid", (self.name,)
            )
            return [row[0] for row in cur.fetchall()]

    def refuses(self, password: str) -> bool:
        """Whether the server turns a connect with ``password`` away."""
        try:
            psycopg2.connect(self.dsn, password=password).close()
        except psycopg2.OperationalError as exc:
            return "password authentication failed" in str(exc)
        return False

    def _admin(self) -> Any:
        conn = psycopg2.connect(self.server.make_dsn(dbname="postgres"))
        conn.autocommit = True

        class _Cursor:
            def __enter__(self) -> Any:
                self.cur = conn.cursor()
                return self.cur

            def __exit__(self, *exc: object) -> None:
                self.cur.close()
                conn.close()

        return _Cursor()

    def drop(self) -> None:
        with self._admin() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (self.name,),
            )
        with self._admin() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{self.name}"')


@pytest.fixture(scope="session", name="password_server")
def password_server_fixture() -> Iterator[PostgresServer]:
    """A server of its own that checks passwords (scram-sha-256 on TCP)."""
    server = PostgresServer(password=ADMIN_PASSWORD)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(name="role")
def role_fixture(password_server: PostgresServer) -> Iterator[Role]:
    """A login role with a password, dropped after the test."""
    name = f"app_{uuid.uuid4().hex[:10]}"
    first = f"first-{uuid.uuid4().hex[:12]}"
    made = Role(password_server, name, first)
    with made._admin() as cur:
        cur.execute(f'CREATE ROLE "{name}" LOGIN PASSWORD %s', (first,))
    try:
        yield made
    finally:
        made.drop()


def texts_of(records: Iterable[logging.LogRecord]) -> List[str]:
    """Every log record as a handler would write it, traceback included."""
    out = []
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        out.append(formatter.format(record))
    return out


def error_texts(exc: BaseException) -> List[str]:
    """An error, its causes and its formatted traceback, as they could be shown."""
    out = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen: Optional[BaseException] = exc
    while seen is not None:
        out += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return out


def assert_no_secret(secrets: Iterable[str], *texts: Any) -> None:
    """No secret appears in any of ``texts`` (strings, or lists of them)."""
    flat: List[str] = []
    for text in texts:
        flat.extend(text if isinstance(text, list) else [str(text)])
    for secret in secrets:
        for text in flat:
            assert secret not in text, f"a password leaked into: {text[:300]}"
