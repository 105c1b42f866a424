"""open / close / wait, the pool as a context manager, and the implicit-open warnings."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Tuple

import pytest

from ._support import DEADLINE, UNREACHABLE, counter, wait_until
from .conftest import Connections, Impl, run

MakePool = Callable[..., Any]


def _sync_deprecation(cls: str) -> str:
    return (
        f"the default for the {cls} 'open' parameter will become 'False' in a future"
        " release. Please use open={True|False} explicitly, or use the pool as context"
        f" manager using: `with {cls}(...) as pool: ...`"
    )


def _async_runtime_warning(cls: str) -> str:
    return (
        f"opening the async pool {cls} in the constructor is deprecated and will not be"
        " supported anymore in a future release. Please use `await pool.open()`, or use"
        f" the pool as context manager using: `async with {cls}(...) as pool: `..."
    )


def _small(cls: str) -> Dict[str, int]:
    """Sizes valid for ``cls``: a null pool must keep min_size 0."""
    return {"max_size": 2} if "Null" in cls else {"min_size": 1}


def _seen(record: List[warnings.WarningMessage]) -> List[Tuple[type, str]]:
    """The pool's warnings in ``record`` (others, e.g. from libraries, are ignored)."""
    return [
        (w.category, str(w.message)) for w in record
        if issubclass(w.category, (DeprecationWarning, RuntimeWarning))
        and "pool" in str(w.message)
    ]


# -- sync: open, wait, close ----------------------------------------------------------


def test_unopened_pool_refuses_clients(impl: Impl, dsn: str) -> None:
    pool = impl.module.ConnectionPool(dsn, open=False, name="later")
    assert pool.closed
    with pytest.raises(impl.module.PoolClosed) as info:
        pool.getconn()
    assert str(info.value) == "the pool 'later' is not open yet"
    with pytest.raises(impl.module.PoolClosed) as info:
        pool.wait()
    assert str(info.value) == "the pool 'later' is not open yet"


def test_open_then_wait_fills_min_size(
    impl: Impl, dsn: str, connections: Connections
) -> None:
    pool = impl.module.ConnectionPool(dsn, open=False, min_size=2)
    try:
        assert connections() == 0  # open=False connects nothing
        pool.open()
        assert not pool.closed
        pool.open()  # opening an open pool is harmless
        pool.wait(timeout=DEADLINE)
        stats = pool.get_stats()
        assert stats["pool_available"] == 2
        assert stats["pool_size"] == 2
        assert connections() == 2
    finally:
        pool.close()


def test_open_wait_true(impl: Impl, dsn: str) -> None:
    pool = impl.module.ConnectionPool(dsn, open=False, min_size=2)
    try:
        pool.open(wait=True, timeout=DEADLINE)
        assert pool.get_stats()["pool_available"] == 2
    finally:
        pool.close()


def test_clients_are_served_before_the_pool_is_full(impl: Impl, dsn: str) -> None:
    pool = impl.module.ConnectionPool(dsn, open=True, min_size=3)
    try:
        with pool.connection(timeout=DEADLINE) as conn:  # no wait() first
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_close_is_final(impl: Impl, dsn: str) -> None:
    pool = impl.module.ConnectionPool(dsn, open=True, min_size=1, name="done")
    pool.wait(timeout=DEADLINE)
    pool.close()
    assert pool.closed
    pool.close()  # closing again is harmless
    with pytest.raises(impl.module.PoolClosed) as info:
        pool.getconn()
    assert str(info.value) == "the pool 'done' is already closed"
    with pytest.raises(impl.module.PoolClosed) as info:
        pool.wait()
    assert str(info.value) == "the pool 'done' is already closed"
    with pytest.raises(impl.module.PoolClosed) as info:
        pool.open()
    assert str(info.value) == "pool has already been opened/closed and cannot be reused"
    with pytest.raises(impl.module.PoolClosed) as info:
        pool.__enter__()
    assert str(info.value) == "pool has already been opened/closed and cannot be reused"


def test_close_closes_idle_connections(
    impl: Impl, dsn: str, connections: Connections
) -> None:
    pool = impl.module.ConnectionPool(dsn, open=True, min_size=2)
    pool.wait(timeout=DEADLINE)
    pool.close()
    wait_until(lambda: connections() == 0, "idle connections to close")


def test_context_manager_opens_and_closes(impl: Impl, dsn: str) -> None:
    pool = impl.module.ConnectionPool(dsn, open=False, min_size=1)
    with pool as entered:
        assert entered is pool
        assert not pool.closed
        with pool.connection(timeout=DEADLINE) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pool.closed


def test_wait_timeout_closes_the_pool(impl: Impl) -> None:
    pool = impl.module.ConnectionPool(UNREACHABLE, open=True, min_size=1)
    try:
        with pytest.raises(impl.module.PoolTimeout) as info:
            pool.wait(timeout=0.5)
        assert str(info.value) == "pool initialization incomplete after 0.5 sec"
        assert pool.closed
    finally:
        pool.close()


def test_open_wait_timeout(impl: Impl) -> None:
    pool = impl.module.ConnectionPool(UNREACHABLE, open=False, min_size=1)
    try:
        with pytest.raises(impl.module.PoolTimeout) as info:
            pool.open(wait=True, timeout=0.5)
        assert str(info.value) == "pool initialization incomplete after 0.5 sec"
        assert pool.closed
    finally:
        pool.close()


def test_connect_errors_are_counted(impl: Impl) -> None:
    pool = impl.module.ConnectionPool(UNREACHABLE, open=True, min_size=1)
    try:
        wait_until(lambda: counter(pool.get_stats(), "connections_errors") >= 1,
                   "a failed connect to be counted")
        assert counter(pool.get_stats(), "connections_num") >= 1
    finally:
        pool.close()


# -- sync: implicit open ----------------------------------------------------------------


@pytest.mark.parametrize("cls", ["ConnectionPool", "NullConnectionPool"])
def test_implicit_open_warns_at_first_use(impl: Impl, dsn: str, cls: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pool = getattr(impl.module, cls)(dsn, **_small(cls))  # open not given
        try:
            assert not pool.closed  # opened by the constructor
            assert _seen(record) == []  # ... silently
            pool.putconn(pool.getconn(timeout=DEADLINE))
            assert _seen(record) == [(DeprecationWarning, _sync_deprecation(cls))]
            pool.putconn(pool.getconn(timeout=DEADLINE))
            assert len(_seen(record)) == 1  # once per pool
        finally:
            pool.close()


def test_implicit_open_warns_at_wait(impl: Impl, dsn: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pool = impl.module.ConnectionPool(dsn, min_size=1)
        try:
            pool.wait(timeout=DEADLINE)
            assert _seen(record) == [(DeprecationWarning, _sync_deprecation("ConnectionPool"))]
        finally:
            pool.close()


@pytest.mark.parametrize("cls", ["ConnectionPool", "NullConnectionPool"])
def test_open_on_an_implicitly_opened_pool_still_warns(impl: Impl, dsn: str, cls: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pool = getattr(impl.module, cls)(dsn, **_small(cls))  # open not given
        try:
            pool.open()  # calling open() afterwards does not make the open explicit
            assert _seen(record) == []
            pool.putconn(pool.getconn(timeout=DEADLINE))
            assert _seen(record) == [(DeprecationWarning, _sync_deprecation(cls))]
        finally:
            pool.close()


@pytest.mark.parametrize("how", ["open=True", "open=False+open()", "with"])
def test_explicit_open_does_not_warn(impl: Impl, dsn: str, how: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if how == "with":
            with impl.module.ConnectionPool(dsn, min_size=1) as pool:
                pool.putconn(pool.getconn(timeout=DEADLINE))
        else:
            pool = impl.module.ConnectionPool(dsn, min_size=1, open=how == "open=True")
            try:
                pool.open()
                pool.putconn(pool.getconn(timeout=DEADLINE))
                pool.wait(timeout=DEADLINE)
            finally:
                pool.close()
    assert _seen(record) == []


# -- async: the loop rules ----------------------------------------------------------------


@pytest.mark.parametrize("cls", ["AsyncConnectionPool", "AsyncNullConnectionPool"])
def test_async_pool_cannot_open_outside_a_loop(impl: Impl, dsn: str, cls: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError) as info:
            getattr(impl.module, cls)(dsn, **_small(cls))  # open not given
        assert str(info.value) == f"{cls} open with no running loop"
        assert _seen(record) == []

        with pytest.raises(RuntimeError) as info:
            getattr(impl.module, cls)(dsn, open=True, **_small(cls))
        assert str(info.value) == f"{cls} open with no running loop"
        assert _seen(record) == [(RuntimeWarning, _async_runtime_warning(cls))]


def test_async_pool_built_outside_a_loop_opens_inside_one(
    impl: Impl, dsn: str
) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pool = impl.module.AsyncConnectionPool(dsn, open=False, min_size=1)

        async def body() -> None:
            await pool.open(wait=True, timeout=DEADLINE)
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT 1")
                    assert await cur.fetchone() == (1,)
            finally:
                await pool.close()

        run(body())
    assert _seen(record) == []


def test_async_implicit_open_in_a_loop_warns_at_first_use(
    impl: Impl, dsn: str
) -> None:
    message = _async_runtime_warning("AsyncConnectionPool")

    async def body() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pool = impl.module.AsyncConnectionPool(dsn, min_size=1)
            try:
                assert not pool.closed
                assert _seen(record) == []
                await pool.putconn(await pool.getconn(timeout=DEADLINE))
                assert _seen(record) == [(RuntimeWarning, message)]
                await pool.putconn(await pool.getconn(timeout=DEADLINE))
                assert len(_seen(record)) == 1
            finally:
                await pool.close()

    run(body())


@pytest.mark.parametrize("cls", ["AsyncConnectionPool", "AsyncNullConnectionPool"])
def test_async_open_on_an_implicitly_opened_pool_still_warns(
    impl: Impl, dsn: str, cls: str
) -> None:
    async def body() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pool = getattr(impl.module, cls)(dsn, **_small(cls))  # open not given
            try:
                await pool.open()
                assert _seen(record) == []
                await pool.putconn(await pool.getconn(timeout=DEADLINE))
                assert _seen(record) == [(RuntimeWarning, _async_runtime_warning(cls))]
            finally:
                await pool.close()

    run(body())


def test_async_open_true_in_a_loop_warns_at_construction(
    impl: Impl, dsn: str
) -> None:
    message = _async_runtime_warning("AsyncConnectionPool")

    async def body() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pool = impl.module.AsyncConnectionPool(dsn, min_size=1, open=True)
            try:
                assert _seen(record) == [(RuntimeWarning, message)]
                await pool.putconn(await pool.getconn(timeout=DEADLINE))
                assert len(_seen(record)) == 1  # not again at first use
            finally:
                await pool.close()

    run(body())


def test_async_lifecycle(impl: Impl, dsn: str) -> None:
    async def body() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            pool = impl.module.AsyncConnectionPool(
                dsn, open=False, min_size=2, name="alife"
            )
            assert pool.closed
            with pytest.raises(impl.module.PoolClosed) as info:
                await pool.getconn()
            assert str(info.value) == "the pool 'alife' is not open yet"
            async with pool as entered:
                assert entered is pool
                assert not pool.closed
                await pool.open()  # harmless
                await pool.wait(timeout=DEADLINE)
                assert pool.get_stats()["pool_available"] == 2
            assert pool.closed
            await pool.close()  # harmless
            with pytest.raises(impl.module.PoolClosed) as info:
                await pool.getconn()
            assert str(info.value) == "the pool 'alife' is already closed"
            with pytest.raises(impl.module.PoolClosed) as info:
                await pool.open()
            assert str(info.value) == "pool has already been opened/closed and cannot be reused"
        assert _seen(record) == []

    run(body())


def test_async_wait_timeout_closes_the_pool(impl: Impl) -> None:
    async def body() -> None:
        pool = impl.module.AsyncConnectionPool(UNREACHABLE, open=False, min_size=1)
        try:
            with pytest.raises(impl.module.PoolTimeout) as info:
                await pool.open(wait=True, timeout=0.5)
            assert str(info.value) == "pool initialization incomplete after 0.5 sec"
            assert pool.closed
        finally:
            await pool.close()

    run(body())
