"""Connection parameters computed at each connect: rotating credentials.

The DSN, the whole keyword mapping (psycopg_pool's ``kwargs``) or the value
of any libpq keyword (``password=fetch_token``) may be a callable. It is
called before every connect, so each new connection uses what it returns
then: a fresh IAM token, the password a secrets agent has just rewritten.
Both drivers resolve their parameters here, for every facade, so the
checks and the errors are the same everywhere.

What a callable returns is checked by type and never quoted: a wrong value
may be the secret itself. A callable that raises, returns the wrong type or
(asyncio) does not return in time makes the connect fail with
:class:`~pgreservoir.errors.ConnectParametersError`; the pool counts it as a
connect error, logs it (redacted) and retries with the usual backoff.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

from .._async.bounded import Expired, bounded
from ..errors import ConnectParametersError
from ._conninfo import redact

__all__ = ["ParamSource", "source_name"]

# What a libpq keyword's callable may return (None: leave the option unset).
_VALUE_TYPES = (str, int, float)


def source_name(source: Any) -> str:
    """How a callable is named in messages and ``repr()``: its qualified name,
    or its class's for an instance with ``__call__``. Never its ``repr()``,
    which for a token cache may show the token."""
    name = getattr(source, "__qualname__", None)
    if not isinstance(name, str):
        name = type(source).__qualname__
    return f"{name}()"


class ParamSource:
    """A driver's connection parameters: ``dsn`` (a str, None or a callable
    returning a str) and ``kwargs`` (a mapping, or a callable returning one;
    in either mapping, the value of any keyword not in ``reserved`` may be a
    callable returning that value). ``reserved`` are the driver's own
    keywords, whose values are callables by nature (``row_factory``,
    ``cursor_factory``, ``connection_factory``): never called here."""

    __slots__ = (
        "_dsn",
        "_dsn_label",
        "_keyed",
        "_kwargs",
        "_kwargs_label",
        "_reserved",
        "dynamic",
    )

    def __init__(
        self,
        dsn: Any,
        kwargs: Any,
        *,
        reserved: Collection[str],
        dsn_label: str = "dsn",
        kwargs_label: str = "kwargs",
    ) -> None:
        self._dsn = dsn
        self._kwargs = kwargs
        self._dsn_label = dsn_label
        self._kwargs_label = kwargs_label
        self._reserved = frozenset(reserved)
        self._keyed = self._callable_keys(kwargs) if isinstance(kwargs, Mapping) else ()
        #: Whether anything is computed at connect (else resolve() is the identity).
        self.dynamic = callable(dsn) or callable(kwargs) or bool(self._keyed)

    def _callable_keys(self, kwargs: Mapping[str, Any]) -> Tuple[str, ...]:
        return tuple(k for k, v in kwargs.items() if k not in self._reserved and callable(v))

    def static(self) -> Tuple[Optional[str], Dict[str, Any]]:
        """What is known now, callables left out: to validate at construction."""
        dsn = None if callable(self._dsn) else self._dsn
        if callable(self._kwargs) or not isinstance(self._kwargs, Mapping):
            return dsn, {}
        return dsn, {k: v for k, v in self._kwargs.items() if k not in self._keyed}

    def describe(self, static_masked: str) -> str:
        """Where connections go, for ``repr()`` and logs: the static parameters
        (already masked) and the name of each callable."""
        parts: List[str] = []
        if callable(self._dsn):
            parts.append(f"{self._dsn_label} from {source_name(self._dsn)}")
        if callable(self._kwargs):
            parts.append(f"{self._kwargs_label} from {source_name(self._kwargs)}")
        if static_masked:
            parts.append(static_masked)
        assert isinstance(self._kwargs, Mapping) or not self._keyed
        for key in self._keyed:
            parts.append(f"{key}=<{source_name(self._kwargs[key])}>")
        return " ".join(parts)

    # -- at each connect ---------------------------------------------------------

    def resolve(self) -> Tuple[Any, Any]:
        """The DSN and keywords for this connect, every callable called (threads)."""
        dsn = self._dsn
        if callable(dsn):
            dsn = self._check_dsn(self._sync_call(dsn, self._dsn_label), dsn)
        kwargs, keyed = self._kwargs, self._keyed
        if callable(kwargs):
            kwargs = self._check_kwargs(self._sync_call(kwargs, self._kwargs_label), kwargs)
            keyed = self._callable_keys(kwargs)
        if keyed:
            kwargs = dict(kwargs)
            for key in keyed:
                source = kwargs[key]
                kwargs[key] = self._check_value(self._sync_call(source, key), key, source)
        return dsn, kwargs

    async def resolve_async(self, timeout: float) -> Tuple[Any, Any]:
        """As :meth:`resolve`, awaiting what coroutine functions return, all of
        it within ``timeout`` seconds; cancelling the caller cancels them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        dsn = self._dsn
        if callable(dsn):
            value = await self._async_call(dsn, self._dsn_label, deadline, timeout)
            dsn = self._check_dsn(value, dsn)
        kwargs, keyed = self._kwargs, self._keyed
        if callable(kwargs):
            value = await self._async_call(kwargs, self._kwargs_label, deadline, timeout)
            kwargs = self._check_kwargs(value, kwargs)
            keyed = self._callable_keys(kwargs)
        if keyed:
            kwargs = dict(kwargs)
            for key in keyed:
                source = kwargs[key]
                value = await self._async_call(source, key, deadline, timeout)
                kwargs[key] = self._check_value(value, key, source)
        return dsn, kwargs

    # -- calling -------------------------------------------------------------------

    @staticmethod
    def _failed(label: str, source: Any, exc: BaseException) -> ConnectParametersError:
        text = " ".join(str(exc).split()) or "(no message)"
        return ConnectParametersError(
            f"the callable given for {label}, {source_name(source)}, raised "
            f"{type(exc).__name__}: {redact(text)}; the connect counts as failed and is retried"
        )

    def _sync_call(self, source: Any, label: str) -> Any:
        try:
            value = source()
        except Exception as exc:
            raise self._failed(label, source, exc) from exc
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # a coroutine never awaited would warn
            raise ConnectParametersError(
                f"the callable given for {label}, {source_name(source)}, returned an "
                "awaitable: coroutine functions work with AsyncConnectionPool only; "
                "give a thread pool a plain function"
            )
        return value

    async def _async_call(self, source: Any, label: str, deadline: float, timeout: float) -> Any:
        try:
            value = source()
            if inspect.isawaitable(value):
                value = await bounded(value, deadline)
        except Expired:
            raise ConnectParametersError(
                f"the callable given for {label}, {source_name(source)}, did not return "
                f"within {timeout:g} s (the connect_timeout): the connect counts as failed "
                "and is retried"
            ) from None
        except Exception as exc:
            raise self._failed(label, source, exc) from exc
        return value

    # -- checking what came back (by type: the value itself is never quoted) ---------

    def _check_dsn(self, value: Any, source: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ConnectParametersError(
                f"the callable given for {self._dsn_label}, {source_name(source)}, returned "
                f"{type(value).__name__}: it must return a connection string (str)"
            )
        return value

    def _check_kwargs(self, value: Any, source: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ConnectParametersError(
                f"the callable given for {self._kwargs_label}, {source_name(source)}, "
                f"returned {type(value).__name__}: it must return a mapping of connection "
                "keywords"
            )
        return value

    @staticmethod
    def _check_value(value: Any, key: str, source: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, _VALUE_TYPES)):
            raise ConnectParametersError(
                f"the callable given for {key}, {source_name(source)}, returned "
                f"{type(value).__name__}: it must return a str (or an int, or None to "
                "leave the option unset)"
            )
        return value
