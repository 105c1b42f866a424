"""Secrets are masked where they are, names never: errors, log lines, repr().

Issue 15: the masking meant for passwords hid the name of a mistyped option
(``invalid connection option "***"``), and replaced every occurrence of the
password's text, so a short or common password garbled user names and
digits in every error and log line.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, List

import pytest

from pgreservoir import ConnectionPool, PoolOptions, PoolTimeout
from pgreservoir import pool as psycopg2_pool
from pgreservoir.drivers._conninfo import redact
from pgreservoir.psycopg_pool import AsyncConnectionPool as DropInAsyncPool
from pgreservoir.psycopg_pool import ConnectionPool as DropInPool
from pgreservoir.testing import PostgresServer
from support import DEADLINE, Flavor, wait_until

# -- names are shown ---------------------------------------------------------------

MakeAny = Callable[..., Any]


def _conn_pool(connection_class: Any) -> MakeAny:
    extra = {} if connection_class is None else {"connection_class": connection_class}
    return lambda dsn, **kw: ConnectionPool(dsn, min_size=0, **extra, **kw)


def _dropin2(dsn: str, **kw: Any) -> Any:
    return psycopg2_pool.ThreadedConnectionPool(0, 2, dsn, **kw)


def _dropin3(dsn: str, **kw: Any) -> Any:
    return DropInPool(dsn, kwargs=kw, min_size=0, max_size=2, open=False)


def _dropin3_async(dsn: str, **kw: Any) -> Any:
    return DropInAsyncPool(dsn, kwargs=kw, min_size=0, max_size=2, open=False)


@pytest.fixture(
    params=[
        "ConnectionPool-psycopg2",
        "ConnectionPool-psycopg",
        "pgreservoir.pool",
        "psycopg_pool",
        "psycopg_pool-async",
    ]
)
def make(request: pytest.FixtureRequest) -> MakeAny:
    """Every facade that takes connection options (ConnectionPool on each driver)."""
    import psycopg

    return {
        "ConnectionPool-psycopg2": _conn_pool(None),
        "ConnectionPool-psycopg": _conn_pool(psycopg.Connection),
        "pgreservoir.pool": _dropin2,
        "psycopg_pool": _dropin3,
        "psycopg_pool-async": _dropin3_async,
    }[request.param]


def test_unknown_keyword_option_is_named(make: MakeAny, postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="invalid connection options") as info:
        make(postgres_dsn, password="s3cret-name-test", bogus_option=1)
    assert 'invalid connection option "bogus_option"' in str(info.value)
    assert "s3cret-name-test" not in str(info.value)


def test_unknown_option_in_the_dsn_is_named(make: MakeAny, postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="invalid connection options") as info:
        make(f"{postgres_dsn} password=s3cret-dsn-test bogus_option=1")
    assert 'invalid connection option "bogus_option"' in str(info.value)
    assert "s3cret-dsn-test" not in str(info.value)


def test_misspelt_pool_option_is_named_with_a_hint(flavor: Flavor, postgres_dsn: str) -> None:
    # Keywords that are not pool options go to the driver: a typo lands there.
    with pytest.raises(ValueError, match="invalid connection options") as info:
        ConnectionPool(postgres_dsn, min_size=0, max_lifetme=60, **flavor.pool_kwargs)
    text = str(info.value)
    assert '"max_lifetme"' in text
    assert "max_lifetime" in text


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("host=127.0.0.1 password='unterminated-s3cret", "unterminated-s3cret"),
        ("host=127.0.0.1 password='unterminated s3cret host=x", "s3cret"),
        ("host=127.0.0.1 password=correct horse", "horse"),
        ("host=127.0.0.1 password=pw-s3cret nonsense", "nonsense"),
        ("postgresql://user:secretpw@[127.0.0.1/db", "secretpw"),
        ("postgresql://user:secret%zzpw@127.0.0.1/db", "zzpw"),
        ("postgresql://user:pw@127.0.0.1/db?password=s3cret%zz", "s3cret"),
    ],
)
def test_malformed_dsn_never_shows_the_password(flavor: Flavor, dsn: str, secret: str) -> None:
    with pytest.raises(ValueError, match="invalid connection options") as info:
        ConnectionPool(dsn, min_size=0, **flavor.pool_kwargs)
    assert secret not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_malformed_uri_is_quoted_with_the_password_masked(flavor: Flavor) -> None:
    with pytest.raises(ValueError, match="invalid connection options") as info:
        ConnectionPool(
            "postgresql://alice:secretpw@[127.0.0.1/db", min_size=0, **flavor.pool_kwargs
        )
    assert "postgresql://alice:***@[127.0.0.1/db" in str(info.value)


# -- a common password garbles nothing -----------------------------------------------


@pytest.fixture(scope="module")
def locked_server() -> Iterator[PostgresServer]:
    """A server whose superuser ``postgres`` needs a password nobody here gives."""
    with PostgresServer(user="postgres", password="the-right-one") as server:
        yield server


def _failing_pool(server: PostgresServer, flavor: Flavor, password: str) -> ConnectionPool:
    return ConnectionPool(
        server.make_dsn(password=None),
        min_size=1,
        max_size=1,
        password=password,
        **flavor.pool_kwargs,
    )


@pytest.mark.parametrize("password", ["postgres", "1"])
def test_common_password_does_not_garble_errors_or_logs(
    locked_server: PostgresServer,
    flavor: Flavor,
    password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pgreservoir")
    pool = _failing_pool(locked_server, flavor, password)
    try:
        wait_until(lambda: pool.stats()["connect_errors"] >= 1, "a failed connect")
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0)
        message = str(info.value)
        assert 'user "postgres"' in message, message
        assert "127.0.0.1" in message, message
        assert "***" not in message.replace("password=***", ""), message
        wait_until(
            lambda: any("connect error" in r.getMessage() for r in caplog.records),
            "the connect error logged",
            timeout=DEADLINE,
        )
        logged = [r.getMessage() for r in caplog.records if "connect error" in r.getMessage()]
        assert any('user "postgres"' in line and "127.0.0.1" in line for line in logged), logged
    finally:
        pool.close(0)


def test_password_in_a_callback_error_is_masked_in_the_log(
    postgres_dsn: str, flavor: Flavor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgreservoir")
    messages: List[str] = []

    def configure(conn: Any) -> None:
        raise RuntimeError("tried host=db1 password=cb-s3cret and postgresql://u:cb-s3cret@db1/x")

    pool = ConnectionPool(postgres_dsn, min_size=1, configure=configure, **flavor.pool_kwargs)
    try:
        wait_until(lambda: pool.stats()["connect_errors"] >= 1, "configure to fail")
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0)
        messages.append(str(info.value))
        messages.extend(r.getMessage() for r in caplog.records)
    finally:
        pool.close(0)
    assert any("host=db1 password=***" in m for m in messages), messages
    assert not any("cb-s3cret" in m for m in messages), messages


def test_redact_masks_by_position_only() -> None:
    assert redact('failed for user "postgres" (password=postgres host=h1)') == (
        'failed for user "postgres" (password=*** host=h1)'
    )
    assert redact("host=127.0.0.1 port=5111 password='1 1' user=u1") == (
        "host=127.0.0.1 port=5111 password='***' user=u1"
    )
    assert redact("postgresql://u1:p@ss@h1/d?sslpassword=x&port=1") == (
        "postgresql://u1:***@h1/d?sslpassword=***&port=1"
    )
    assert redact("password='never closed 1") == "password='***"
    assert redact("{'user': 'u', 'password': 'p1'}") == "{'user': 'u', 'password': '***'}"


# -- repr() ---------------------------------------------------------------------------


def test_repr_of_options_masks_connect_defaults(postgres_dsn: str) -> None:
    defaults = {"password": "default-s3cret", "sslpassword": "ssl-s3cret", "connect_timeout": 5}
    options = PoolOptions(connect_defaults=defaults)
    assert "s3cret" not in repr(options)
    assert "connect_timeout" in repr(options)
    assert options.connect_defaults["password"] == "default-s3cret"  # the value itself is kept
    dropin = psycopg2_pool.PoolOptions(connect_defaults=defaults)
    assert "s3cret" not in repr(dropin)
    pool = ConnectionPool(postgres_dsn, min_size=0, connect_defaults=defaults)
    try:
        assert "s3cret" not in repr(pool.options)
        assert "s3cret" not in repr(pool)
    finally:
        pool.close(0)
