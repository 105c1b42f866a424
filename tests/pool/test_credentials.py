"""Rotating credentials on ConnectionPool (psycopg2 and psycopg 3) and on the
psycopg_pool drop-in: the DSN or a connect keyword given as a callable is
called at every connect, and a real password change on the server
(``ALTER ROLE ... PASSWORD``) goes by with the pool serving throughout and no
password in any log record, error, repr or stats."""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any, List, Set

import pytest

from credentials_support import (  # noqa: F401 - the fixtures are used by name
    Role,
    Secret,
    assert_no_secret,
    error_texts,
    password_server_fixture,
    role_fixture,
    texts_of,
)
from pgreservoir import ConnectionPool, ConnectParametersError, PoolTimeout
from support import DEADLINE, Flavor, backend_pid, scalar, wait_until


def _pool(flavor: Flavor, role: Role, **kwargs: Any) -> ConnectionPool:
    return ConnectionPool(role.dsn, connect_timeout=5, **flavor.pool_kwargs, **kwargs)


class _Reader(threading.Thread):
    """Reads through the pool in a loop until stopped; notes every backend it
    was served by and every error."""

    def __init__(self, pool: Any) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.stop = threading.Event()
        self.pids: List[int] = []
        self.errors: List[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.pool.connection(timeout=DEADLINE) as conn:
                    self.pids.append(backend_pid(conn))
                    scalar(conn, "SELECT 1")
            except Exception as exc:  # the test asserts there are none
                self.errors.append(exc)
                return

    def finish(self) -> None:
        self.stop.set()
        self.join(DEADLINE)
        assert not self.is_alive(), "the reader hung"


def _rotate_while_serving(pool: Any, role: Role, secret: Secret, caplog: Any) -> None:
    """The operator's rotation, with a reader on the pool throughout: the server
    gets the new password, the secret store gives it out, the pool is drained.
    The reader never fails and ends up on connections made with the new one."""
    reader = _Reader(pool)
    reader.start()
    wait_until(lambda: len(reader.pids) >= 5, "reads on the first password")
    old_pids = set(role.backend_pids())
    assert old_pids, "the pool's connections are open"

    role.alter_password("second-" + role.name)
    assert role.refuses(role.passwords[0]), "the old password still works"
    # Open connections stay authenticated: the pool goes on serving on them.
    served = len(reader.pids)
    wait_until(lambda: len(reader.pids) > served + 5, "reads after the password change")
    assert set(reader.pids) <= old_pids

    secret.value = role.password
    calls = secret.calls
    pool.drain()
    wait_until(
        lambda: bool(role.backend_pids()) and not set(role.backend_pids()) & old_pids,
        "every connection replaced by one made with the new password",
    )
    served = len(reader.pids)
    wait_until(lambda: len(reader.pids) > served + 5, "reads on the new password")
    reader.finish()
    assert reader.errors == []
    assert set(reader.pids[-3:]).isdisjoint(old_pids)
    assert secret.calls > calls, "the callable is called at every connect"
    assert_no_secret(
        role.passwords, texts_of(caplog.records), repr(pool), str(pool.stats())
    )


def test_password_callable_rotates_with_the_pool_serving(
    flavor: Flavor, role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = Secret(role.password)
    with _pool(flavor, role, password=secret, min_size=2, max_size=3) as pool:
        pool.wait(DEADLINE)
        assert secret.calls >= 2
        # The callable is named; the secret (which Secret's repr would show) is not.
        assert "password=<Secret()>" in repr(pool)
        _rotate_while_serving(pool, role, secret, caplog)


def test_dsn_callable_rotates(flavor: Flavor, role: Role, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = Secret(role.password)

    def dsn() -> str:
        return role.server.make_dsn(dbname="postgres", user=role.name, password=secret())

    with ConnectionPool(dsn, min_size=2, max_size=3, **flavor.pool_kwargs) as pool:
        pool.wait(DEADLINE)
        assert " from test_dsn_callable_rotates.<locals>.dsn()" in repr(pool)
        _rotate_while_serving(pool, role, secret, caplog)


def test_psycopg_pool_drop_in_rotates_through_the_same_mechanism(
    role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    from pgreservoir.psycopg_pool import ConnectionPool as DropIn

    caplog.set_level(logging.DEBUG)
    secret = Secret(role.password)
    with DropIn(role.dsn, kwargs=lambda: {"password": secret()}, min_size=2, max_size=3) as pool:
        pool.wait(DEADLINE)
        _rotate_while_serving(pool, role, secret, caplog)
        assert_no_secret(role.passwords, str(pool.get_stats()))


def test_a_refused_password_is_a_connect_error_and_recovers(
    flavor: Flavor, role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    """The server changed the password before the secret store did: connects
    fail (counted, logged, retried with backoff) until the store catches up."""
    caplog.set_level(logging.DEBUG)
    secret = Secret(role.password)
    role.alter_password("second-" + role.name)
    with _pool(flavor, role, password=secret, min_size=1, max_size=2) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.0)
        assert "password authentication failed" in str(info.value.__cause__)
        wait_until(lambda: pool.stats()["connect_errors"] >= 2, "connects retried")
        assert any("connect error" in t for t in texts_of(caplog.records))
        secret.value = role.password
        conn = pool.getconn(timeout=DEADLINE)
        assert scalar(conn, "SELECT current_user") == role.name
        pool.putconn(conn)
        assert_no_secret(
            [*role.passwords, secret.value],
            texts_of(caplog.records),
            error_texts(info.value),
            repr(pool),
            str(pool.stats()),
        )


def test_a_raising_callable_is_a_connect_error_shown_without_its_secret(
    flavor: Flavor, role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = Secret(role.password)
    # A careless message that quotes a connection string, password included.
    secret.fail = RuntimeError(f"vault sealed; last dsn was password={role.password} host=x")
    with _pool(flavor, role, password=secret, min_size=1, max_size=1) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.0)
        cause = info.value.__cause__
        assert isinstance(cause, ConnectParametersError)
        assert str(cause).startswith(
            "the callable given for password, Secret(), raised RuntimeError: vault sealed; "
            "last dsn was password=*** host=x"
        )
        wait_until(lambda: pool.stats()["connect_errors"] >= 2, "connects retried")
        logged = texts_of(caplog.records)
        assert any("connect error" in t and "Secret()" in t for t in logged)
        assert_no_secret([role.password], logged, repr(pool), str(pool.stats()))
        assert_no_secret([role.password], str(cause), repr(cause), str(info.value))
        secret.fail = None
        with pool.connection(timeout=DEADLINE) as conn:
            assert scalar(conn, "SELECT current_user") == role.name


@pytest.mark.parametrize("wrong", [b"bytes-pw", ["list-pw"], True])
def test_a_callable_returning_the_wrong_type_is_refused_by_type(
    flavor: Flavor, role: Role, wrong: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = Secret(role.password)
    secret.wrong = wrong
    with _pool(flavor, role, password=secret, min_size=0, max_size=1) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.0)
        cause = info.value.__cause__
        assert isinstance(cause, ConnectParametersError)
        assert (
            f"the callable given for password, Secret(), returned {type(wrong).__name__}: "
            "it must return a str"
        ) in str(cause)
        assert_no_secret(
            ["bytes-pw", "list-pw"], error_texts(info.value), texts_of(caplog.records)
        )
        secret.wrong = None
        with pool.connection(timeout=DEADLINE) as conn:
            assert scalar(conn, "SELECT 1") == 1


def test_dsn_callable_returning_a_non_str_is_refused(flavor: Flavor, role: Role) -> None:
    wrong: Any = lambda: 42  # noqa: E731 - a DSN callable returning an int
    with ConnectionPool(wrong, min_size=0, max_size=1, **flavor.pool_kwargs) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.0)
        assert "it must return a connection string (str)" in str(info.value.__cause__)


def test_the_known_options_are_still_checked_at_construction(
    flavor: Flavor, role: Role
) -> None:
    secret = Secret(role.password)
    with pytest.raises(ValueError, match="bogus_option"):
        _pool(flavor, role, password=secret, bogus_option=1)
    assert secret.calls == 0, "nothing is called before the first connect"


def test_a_coroutine_function_is_refused_by_a_thread_pool(flavor: Flavor, role: Role) -> None:
    async def token() -> str:
        return role.password

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine left unawaited would warn
        pool = _pool(flavor, role, password=token, min_size=0, max_size=1)
        with pool, pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.0)
    assert "coroutine functions work with AsyncConnectionPool only" in str(
        info.value.__cause__
    )


def test_driver_callables_are_not_called_as_credentials(flavor: Flavor, role: Role) -> None:
    """Keywords whose values are callables by nature (a cursor factory, a row
    factory) go to the driver as they are."""
    if flavor.name == "psycopg2":
        import psycopg2.extras

        extra: Any = {"cursor_factory": psycopg2.extras.RealDictCursor}
    else:
        import psycopg.rows

        extra = {"row_factory": psycopg.rows.dict_row}
    pool = _pool(flavor, role, password=Secret(role.password), min_size=0, **extra)
    with pool, pool.connection(timeout=DEADLINE) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone() == {"one": 1}


def test_each_connect_calls_the_callable_again(flavor: Flavor, role: Role) -> None:
    secret = Secret(role.password)
    seen: Set[int] = set()
    with _pool(flavor, role, password=secret, min_size=0, max_size=1) as pool:
        for _ in range(3):
            conn = pool.getconn(timeout=DEADLINE)
            seen.add(backend_pid(conn))
            pool.putconn(conn, close=True)
    assert len(seen) == 3
    assert secret.calls == 3
