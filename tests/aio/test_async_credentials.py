"""Rotating credentials on AsyncConnectionPool: coroutine functions (and plain
callables) for the conninfo or a connect keyword, awaited at every connect
within the connect_timeout and cancelled with it, across a real
``ALTER ROLE ... PASSWORD``, with no password in any log, error, repr or stats."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List

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
from pgreservoir import AsyncConnectionPool, ConnectParametersError, PoolTimeout
from support import DEADLINE

from .test_async_pool import run, scalar, until


class AsyncSecret(Secret):
    """A token fetched with an await, as from an IAM or vault endpoint."""

    async def fetch(self) -> Any:
        await asyncio.sleep(0.001)
        return self()


def _pool(role: Role, **kwargs: Any) -> AsyncConnectionPool:
    return AsyncConnectionPool(role.dsn, connect_timeout=5, **kwargs)


async def _read_loop(pool: AsyncConnectionPool, pids: List[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        async with pool.connection(timeout=DEADLINE) as conn:
            pids.append(conn.info.backend_pid)
            assert await scalar(conn, "SELECT 1") == 1
        await asyncio.sleep(0)


async def _rotate_while_serving(
    pool: AsyncConnectionPool, role: Role, secret: Secret, caplog: Any
) -> None:
    pids: List[int] = []
    stop = asyncio.Event()
    reader = asyncio.ensure_future(_read_loop(pool, pids, stop))
    await until(lambda: len(pids) >= 5, "reads on the first password")
    old_pids = set(await asyncio.to_thread(role.backend_pids))
    assert old_pids

    new = "second-" + role.name
    await asyncio.to_thread(role.alter_password, new)
    assert await asyncio.to_thread(role.refuses, role.passwords[0])
    served = len(pids)
    await until(lambda: len(pids) > served + 5, "reads after the password change")
    assert set(pids) <= old_pids

    secret.value = new
    calls = secret.calls
    pool.drain()
    await until(lambda: len(pids) > served + 50, "reads go on while connections are replaced")

    async def replaced() -> bool:
        now = set(await asyncio.to_thread(role.backend_pids))
        return bool(now) and not now & old_pids

    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not await replaced():
        assert loop.time() < end, "connections made with the new password replace the old"
        await asyncio.sleep(0.02)
    served = len(pids)
    await until(lambda: len(pids) > served + 5, "reads on the new password")
    stop.set()
    await reader  # raises if any read failed
    assert set(pids[-3:]).isdisjoint(old_pids)
    assert secret.calls > calls
    assert_no_secret(role.passwords, texts_of(caplog.records), repr(pool), str(pool.stats()))


def test_coroutine_password_rotates_with_the_pool_serving(
    role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = AsyncSecret(role.password)

    async def body() -> None:
        async with _pool(role, password=secret.fetch, min_size=2, max_size=3) as pool:
            await pool.wait(DEADLINE)
            assert "password=<AsyncSecret.fetch()>" in repr(pool)
            await _rotate_while_serving(pool, role, secret, caplog)

    run(body())


def test_coroutine_conninfo_and_plain_callables_rotate(
    role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = AsyncSecret(role.password)

    async def conninfo() -> str:
        password = await secret.fetch()
        return role.server.make_dsn(dbname="postgres", user=role.name, password=password)

    async def body() -> None:
        async with AsyncConnectionPool(conninfo, min_size=2, max_size=3) as pool:
            await _rotate_while_serving(pool, role, secret, caplog)
        # A plain function is accepted too.
        plain = Secret(role.password)
        async with _pool(role, password=plain, min_size=1, max_size=1) as pool:
            async with pool.connection(timeout=DEADLINE) as conn:
                assert await scalar(conn, "SELECT current_user") == role.name
            assert plain.calls == 1

    run(body())


def test_a_raising_coroutine_is_a_connect_error_and_recovers(
    role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = AsyncSecret(role.password)
    secret.fail = ConnectionError(f"token endpoint down (password={role.password})")

    async def body() -> None:
        async with _pool(role, password=secret.fetch, min_size=1, max_size=1) as pool:
            with pytest.raises(PoolTimeout) as info:
                await pool.getconn(timeout=1.0)
            cause = info.value.__cause__
            assert isinstance(cause, ConnectParametersError)
            assert "AsyncSecret.fetch(), raised ConnectionError: token endpoint down" in str(cause)
            await until(lambda: pool.stats()["connect_errors"] >= 2, "connects retried")
            assert_no_secret(
                [role.password], str(cause), repr(cause), texts_of(caplog.records),
                str(pool.stats()), repr(pool),
            )
            secret.fail = None
            async with pool.connection(timeout=DEADLINE) as conn:
                assert await scalar(conn, "SELECT current_user") == role.name

    run(body())


def test_a_coroutine_returning_the_wrong_type_is_refused_by_type(role: Role) -> None:
    secret = AsyncSecret(role.password)
    secret.wrong = role.password.encode()

    async def body() -> None:
        async with _pool(role, password=secret.fetch, min_size=0, max_size=1) as pool:
            with pytest.raises(PoolTimeout) as info:
                await pool.getconn(timeout=1.0)
            assert "returned bytes: it must return a str" in str(info.value.__cause__)
            assert_no_secret([role.password], error_texts(info.value))

    run(body())


def test_a_hung_coroutine_is_bounded_by_the_connect_timeout(role: Role) -> None:
    """connect_timeout=1: the hung coroutine is cancelled after a second and the
    connect fails with an error saying so; the next one works."""
    hanging = [True]
    cancelled: List[bool] = []

    async def token() -> str:
        if hanging[0]:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        return role.password

    async def body() -> None:
        pool = AsyncConnectionPool(role.dsn, connect_timeout=1, password=token,
                                   min_size=0, max_size=1)
        async with pool:
            with pytest.raises(PoolTimeout) as info:
                await pool.getconn(timeout=3.0)
            assert "did not return within 1 s (the connect_timeout)" in str(info.value.__cause__)
            assert cancelled, "the coroutine was cancelled"
            hanging[0] = False
            async with pool.connection(timeout=DEADLINE) as conn:
                assert await scalar(conn, "SELECT 1") == 1

    run(body())


def test_close_cancels_a_coroutine_in_progress(role: Role) -> None:
    started = asyncio.Event()
    cancelled: List[bool] = []

    async def token() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return role.password  # pragma: no cover - never reached

    async def body() -> None:
        pool = AsyncConnectionPool(role.dsn, connect_timeout=60, password=token, min_size=1)
        await pool.open()
        await asyncio.wait_for(started.wait(), DEADLINE)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await pool.close()
        assert loop.time() - began < DEADLINE
        await until(lambda: bool(cancelled), "the coroutine cancelled by close()")

    run(body())
