"""The module's names, signatures, errors and construction-time validation.

None of these tests connects: pools are built with ``open=False`` (or fail
before opening), so no server is needed.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, List, Tuple

import psycopg
import pytest

from .conftest import Impl

SYNC = ("ConnectionPool", "NullConnectionPool")
ASYNC = ("AsyncConnectionPool", "AsyncNullConnectionPool")
CLASSES = SYNC + ASYNC
POOLS = ("ConnectionPool", "AsyncConnectionPool")  # the non-null ones
NULLS = ("NullConnectionPool", "AsyncNullConnectionPool")
ERRORS = ("PoolTimeout", "PoolClosed", "TooManyRequests")

KW = inspect.Parameter.KEYWORD_ONLY


def _expected_parameters(cls: str) -> List[Tuple[str, Any, Any]]:
    """psycopg_pool 3.3's constructor parameters: (name, kind, default)."""
    connection = psycopg.AsyncConnection if cls.startswith("Async") else psycopg.Connection
    return [
        ("conninfo", inspect.Parameter.POSITIONAL_OR_KEYWORD, ""),
        ("connection_class", KW, connection),
        ("kwargs", KW, None),
        ("min_size", KW, 0 if "Null" in cls else 4),
        ("max_size", KW, None),
        ("open", KW, None),
        ("configure", KW, None),
        ("check", KW, None),
        ("reset", KW, None),
        ("name", KW, None),
        ("close_returns", KW, False),
        ("timeout", KW, 30.0),
        ("max_waiting", KW, 0),
        ("max_lifetime", KW, 3600.0),
        ("max_idle", KW, 600.0),
        ("reconnect_timeout", KW, 300.0),
        ("reconnect_failed", KW, None),
        ("num_workers", KW, 3),
    ]


# -- names -------------------------------------------------------------------------


def test_public_names(impl: Impl) -> None:
    for name in (*CLASSES, *ERRORS):
        assert hasattr(impl.module, name), name


@pytest.mark.parametrize("error", ERRORS)
def test_errors_are_psycopg_operational_errors(impl: Impl, error: str) -> None:
    cls = getattr(impl.module, error)
    assert issubclass(cls, psycopg.OperationalError)
    assert issubclass(cls, psycopg.Error)
    others = [getattr(impl.module, name) for name in ERRORS if name != error]
    assert not any(issubclass(cls, other) for other in others)


def test_null_pools_subclass_the_pools(impl: Impl) -> None:
    assert issubclass(impl.module.NullConnectionPool, impl.module.ConnectionPool)
    assert issubclass(impl.module.AsyncNullConnectionPool, impl.module.AsyncConnectionPool)


# -- signatures --------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_constructor_signature(impl: Impl, cls: str) -> None:
    params = inspect.signature(getattr(impl.module, cls)).parameters
    positional = [p.name for p in params.values() if p.kind != KW]
    assert positional == ["conninfo"]
    for name, kind, default in _expected_parameters(cls):
        assert name in params, name
        assert params[name].kind == kind, name
        assert params[name].default == default, name


@pytest.mark.parametrize("cls", CLASSES)
def test_method_signatures(impl: Impl, cls: str) -> None:
    klass = getattr(impl.module, cls)

    def shape(method: str) -> List[Tuple[str, Any]]:
        params = inspect.signature(getattr(klass, method)).parameters.values()
        return [(p.name, p.default) for p in params]

    empty = inspect.Parameter.empty
    assert shape("getconn") == [("self", empty), ("timeout", None)]
    assert shape("putconn") == [("self", empty), ("conn", empty)]
    assert shape("connection") == [("self", empty), ("timeout", None)]
    assert shape("open") == [("self", empty), ("wait", False), ("timeout", 30.0)]
    assert shape("close") == [("self", empty), ("timeout", 5.0)]
    assert shape("wait") == [("self", empty), ("timeout", 30.0)]
    assert shape("resize") == [("self", empty), ("min_size", empty), ("max_size", None)]
    for method in ("check", "drain", "get_stats", "pop_stats"):
        assert shape(method) == [("self", empty)], method
    # check_connection is a static method: callable on the class with a connection.
    assert shape("check_connection") == [("conn", empty)]
    assert isinstance(inspect.getattr_static(klass, "check_connection"), staticmethod)


@pytest.mark.parametrize("cls", ASYNC)
def test_async_methods_are_coroutine_functions(impl: Impl, cls: str) -> None:
    klass = getattr(impl.module, cls)
    for method in ("getconn", "putconn", "open", "close", "wait", "resize", "check", "drain",
                   "check_connection"):
        assert inspect.iscoroutinefunction(getattr(klass, method)), method
    for method in ("get_stats", "pop_stats"):
        assert not inspect.iscoroutinefunction(getattr(klass, method)), method


@pytest.mark.parametrize("cls", SYNC)
def test_sync_methods_are_plain_functions(impl: Impl, cls: str) -> None:
    klass = getattr(impl.module, cls)
    for method in ("getconn", "putconn", "open", "close", "wait", "resize", "check", "drain",
                   "check_connection", "get_stats", "pop_stats"):
        assert not inspect.iscoroutinefunction(getattr(klass, method)), method


# -- validation at construction ------------------------------------------------------


@pytest.mark.parametrize("cls", POOLS)
@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"min_size": -1}, "min_size cannot be negative"),
        ({"min_size": 2, "max_size": 1}, "max_size must be greater or equal than min_size"),
        ({"min_size": 0}, "if min_size is 0 max_size must be greater than 0"),
        ({"min_size": 0, "max_size": 0}, "if min_size is 0 max_size must be greater than 0"),
    ],
)
def test_bad_sizes_are_refused(impl: Impl, cls: str, sizes: Any, message: str) -> None:
    # Raised before anything else, so also for an async pool outside a loop.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        getattr(impl.module, cls)("", open=False, **sizes)


@pytest.mark.parametrize("cls", CLASSES)
def test_num_workers_must_be_at_least_one(impl: Impl, cls: str) -> None:
    with pytest.raises(ValueError, match=r"^num_workers must be at least 1$"):
        getattr(impl.module, cls)("", open=False, num_workers=0)


@pytest.mark.parametrize("cls", NULLS)
@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"min_size": 1}, "null pools must have min_size = 0"),
        ({"min_size": 1, "max_size": 5}, "null pools must have min_size = 0"),
        ({"max_size": -1}, "max_size must be greater or equal than min_size"),
    ],
)
def test_bad_null_pool_sizes_are_refused(impl: Impl, cls: str, sizes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        getattr(impl.module, cls)("", open=False, **sizes)


@pytest.mark.parametrize("cls", POOLS)
def test_max_size_none_means_min_size(impl: Impl, cls: str) -> None:
    pool = getattr(impl.module, cls)("", open=False, min_size=3)
    assert (pool.min_size, pool.max_size) == (3, 3)
    default = getattr(impl.module, cls)("", open=False)
    assert (default.min_size, default.max_size) == (4, 4)


@pytest.mark.parametrize("cls", NULLS)
def test_null_pool_sizes(impl: Impl, cls: str) -> None:
    pool = getattr(impl.module, cls)("", open=False)
    assert (pool.min_size, pool.max_size) == (0, 0)  # 0: no limit
    bounded = getattr(impl.module, cls)("", open=False, max_size=5)
    assert (bounded.min_size, bounded.max_size) == (0, 5)


# -- attributes of an unopened pool ------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_attributes(impl: Impl, cls: str) -> None:
    def configure(conn: Any) -> None:
        pass

    pool = getattr(impl.module, cls)(
        "dbname=x", open=False, name="attrs", timeout=7.5, max_waiting=3, max_lifetime=100.0,
        max_idle=50.0, reconnect_timeout=20.0, num_workers=2, kwargs={"autocommit": True},
        configure=configure,
    )
    assert pool.name == "attrs"
    assert pool.closed is True  # not opened yet
    assert pool.timeout == 7.5
    assert pool.max_waiting == 3
    assert pool.max_lifetime == 100.0
    assert pool.max_idle == 50.0
    assert pool.reconnect_timeout == 20.0
    assert pool.num_workers == 2
    assert pool.close_returns is False
    assert pool.conninfo == "dbname=x"
    assert pool.kwargs == {"autocommit": True}
    connection = psycopg.AsyncConnection if cls.startswith("Async") else psycopg.Connection
    assert pool.connection_class is connection


@pytest.mark.parametrize("cls", CLASSES)
def test_sizes_are_read_only(impl: Impl, cls: str) -> None:
    pool = getattr(impl.module, cls)("", open=False, min_size=0, max_size=2)
    with pytest.raises(AttributeError):
        pool.min_size = 1
    with pytest.raises(AttributeError):
        pool.max_size = 3


@pytest.mark.parametrize("cls", CLASSES)
def test_generated_names(impl: Impl, cls: str) -> None:
    first = getattr(impl.module, cls)("", open=False)
    second = getattr(impl.module, cls)("", open=False)
    for pool in (first, second):
        assert pool.name.startswith("pool-")
        assert pool.name[len("pool-"):].isdigit()
    assert first.name != second.name
    # An empty name counts as none.
    assert getattr(impl.module, cls)("", open=False, name="").name.startswith("pool-")


@pytest.mark.parametrize("cls", CLASSES)
def test_repr_names_class_and_pool(impl: Impl, cls: str) -> None:
    pool = getattr(impl.module, cls)("", open=False, name="shown")
    text = repr(pool)
    assert text.startswith("<")
    assert text.endswith(">")
    assert cls in text
    assert "'shown'" in text
