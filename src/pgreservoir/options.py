"""Every pool option, declared once: name, default, accepted values, meaning.

:class:`PoolOptions` is the one declaration. :class:`~pgreservoir.ConnectionPool`
takes its fields as keyword arguments, the psycopg2.pool drop-in takes an
instance as ``pool_options=``, and every facade hands the same validated
object to the core, so an option can never exist in one facade and not in
another, or be checked differently.

Bad input is refused with the accepted range in the message; nothing is ever
silently replaced by another value.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = [
    "DEFAULT_CONNECT_OPTIONS",
    "OPTION_NAMES",
    "SECRET_KEYS",
    "PoolOptions",
    "check_seconds",
    "check_sizes",
    "keyword_parameters",
    "with_default",
]

# Applied unless the caller sets the option (as a keyword or in the DSN).
# connect_timeout bounds a connect against a paused or black-holed server
# (libpq waits forever by default); the keepalives make the kernel notice a
# dead peer in about a minute instead of two hours.
DEFAULT_CONNECT_OPTIONS: Mapping[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 5,
}

#: libpq options whose values are secrets: never shown (``***``).
SECRET_KEYS = frozenset({"password", "sslpassword"})

_names = itertools.count(1)


def next_pool_name() -> str:
    """A unique default name: ``pool-1``, ``pool-2``..."""
    return f"pool-{next(_names)}"


# -- validators ---------------------------------------------------------------


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer option (bools refused) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_sizes(min_size: Any, max_size: Any) -> Tuple[int, int]:
    """``0 <= min_size <= max_size`` and ``max_size >= 1``."""
    lo = check_int("min_size", min_size, 0)
    hi = check_int("max_size", max_size, 1)
    if lo > hi:
        raise ValueError(
            f"min_size ({lo}) must not exceed max_size ({hi}); raise max_size or lower min_size"
        )
    return lo, hi


def check_seconds(
    name: str, value: Any, *, allow_none: bool = False, positive: bool = False
) -> Any:
    """A duration in seconds: a real number >= 0 (> 0 if ``positive``); ``inf`` allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        none = " or None" if allow_none else ""
        raise TypeError(
            f"{name} must be a number of seconds{none}, got {type(value).__name__} {value!r}"
        )
    value = float(value)
    if math.isnan(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound} seconds (math.inf for no limit), got {value}")
    return value


def _seconds(*, allow_none: bool = False, positive: bool = False) -> Callable[[str, Any], Any]:
    return lambda name, value: check_seconds(
        name, value, allow_none=allow_none, positive=positive
    )


def _callback(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable, or None; got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    # A truthy string is a mistake, not a yes.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _name(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {value!r}")
    return value


def _meter_provider(name: str, value: Any) -> Any:
    if value is not None and not callable(getattr(value, "get_meter", None)):
        raise TypeError(
            f"{name} must be an OpenTelemetry MeterProvider (with get_meter()), or None "
            f"for the global one; got {value!r}"
        )
    return value


class _Masked(Dict[str, Any]):
    """A dict of libpq options whose repr() shows secrets as ``***`` (so does
    the repr of every PoolOptions, including a subclass's generated one)."""

    def __repr__(self) -> str:
        return repr({k: "***" if k in SECRET_KEYS else v for k, v in self.items()})


def _mapping(name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of libpq options, got {value!r}")
    return value if type(value) is _Masked else _Masked(value)


def _count(minimum: int) -> Callable[[str, Any], int]:
    return lambda name, value: check_int(name, value, minimum)


def _option(default: Any, check: Callable[[str, Any], Any], doc: str) -> Any:
    metadata = {"check": check, "doc": doc}
    if isinstance(default, dict):  # mutable: each instance gets its own copy
        return dataclasses.field(default_factory=default.copy, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# -- the declaration ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """The options of a pool, validated when built (TypeError/ValueError on the first bad one).

    ``ConnectionPool(dsn, **options)`` builds one from its keyword arguments;
    the psycopg2.pool drop-in takes one as ``pool_options=``. The sizes are
    not options: each facade takes them in its own shape (``min_size`` and
    ``max_size``, or psycopg2's positional ``minconn`` and ``maxconn``).
    """

    name: Optional[str] = _option(None, _name, "used in errors, logs, repr() and thread names")
    timeout: float = _option(
        30.0, _seconds(), "default seconds getconn() waits in line before PoolTimeout"
    )
    barge_window: float = _option(
        0.01,
        _seconds(),
        "while callers wait, a returned connection may be taken again at once (by "
        "the thread that returned it, usually) instead of being handed to the line, "
        "until the longest waiter has waited this long; 0: strict first come, first "
        "served (see docs/fairness.md)",
    )
    max_waiting: int = _option(
        0, _count(0), "callers allowed to wait at once (0: no limit); beyond it TooManyRequests"
    )
    max_lifetime: float = _option(
        3600.0,
        _seconds(positive=True),
        "seconds after which a connection is replaced (minus up to 5% jitter)",
    )
    max_idle: float = _option(
        600.0, _seconds(), "seconds a connection above min_size may sit idle before it is closed"
    )
    check_idle_after: Optional[float] = _option(
        60.0,
        _seconds(allow_none=True),
        "a connection idle longer than this gets a SELECT 1 round trip before hand-out",
    )
    check_timeout: float = _option(
        5.0,
        _seconds(positive=True),
        "longest the pool's own round trips on a connection may take (the checkout "
        "ping, the rollback and restore at return, reset(), keepalive pings); a "
        "connection that does not answer in time is closed",
    )
    configure: Optional[Callable[[Any], None]] = _option(
        None, _callback, "configure(conn) runs once on every new connection"
    )
    reset: Optional[Callable[[Any], None]] = _option(
        None, _callback, "reset(conn) runs on every returned connection"
    )
    check: Optional[Callable[[Any], None]] = _option(
        None,
        _callback,
        "check(conn) runs before every hand-out (bounded like the checkout round "
        "trip); if it raises, the connection is discarded and the caller gets another",
    )
    fail_fast: bool = _option(
        False,
        _flag,
        "while connecting fails, callers that would wait for a new connection get "
        "PoolTimeout at once",
    )
    reconnect_timeout: float = _option(
        300.0, _seconds(), "seconds of failed connects before reconnect_failed is called"
    )
    reconnect_failed: Optional[Callable[[Any], None]] = _option(
        None, _callback, "reconnect_failed(pool), once per run of failures that lasts"
    )
    leak_threshold: Optional[float] = _option(
        None,
        _seconds(allow_none=True, positive=True),
        "report a connection held longer than this, with where it was taken",
    )
    check_idle_interval: Optional[float] = _option(
        None,
        _seconds(allow_none=True, positive=True),
        "ping idle connections this often in the background",
    )
    num_workers: int = _option(
        2, _count(1), "most connection attempts in flight at once (one while connecting fails)"
    )
    transaction_pooling: bool = _option(
        False,
        _flag,
        "the server side is a transaction-pooling proxy (PgBouncer pool_mode=transaction, "
        "RDS Proxy, Supavisor): connections leave no session state behind (psycopg2's "
        "isolation_level/readonly/deferrable change client-side only; psycopg 3's "
        "server-side prepared statements are off unless prepare_threshold is given), and "
        "configure()/reset() that leave session state are warned about (see "
        "docs/scaling-out.md)",
    )
    connect_defaults: Mapping[str, Any] = _option(
        dict(DEFAULT_CONNECT_OPTIONS),
        _mapping,
        "libpq options added unless the DSN or the keywords set them",
    )
    meter_provider: Optional[object] = _option(
        None,
        _meter_provider,
        "the OpenTelemetry MeterProvider the pool's metrics go to (meter 'pgreservoir'); "
        "None: the global one, when opentelemetry-api is installed (see docs/observability.md)",
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            checked = field.metadata["check"](field.name, value)
            if checked is not value:
                # Normalised (an int timeout becomes a float); frozen, hence this.
                object.__setattr__(self, field.name, checked)

    @classmethod
    def split(cls, kwargs: Dict[str, Any], **defaults: Any) -> Tuple[PoolOptions, Dict[str, Any]]:
        """Options from ``kwargs`` (the rest is returned: connection keywords).

        ``defaults`` are a facade's own defaults for options the caller did not give.
        """
        given = {k: kwargs[k] for k in kwargs if k in OPTION_NAMES}
        rest = {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}
        return cls(**{**defaults, **given}), rest

    def replace(self, **changes: Any) -> PoolOptions:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(PoolOptions))


def with_default(name: str, default: Any) -> Any:
    """The declaration of option ``name`` with another default, for a facade
    whose users expect a different one (psycopg2.pool: ``timeout=0``)."""
    field = PoolOptions.__dataclass_fields__[name]
    return _option(default, field.metadata["check"], field.metadata["doc"])


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def keyword_parameters() -> list[inspect.Parameter]:
    """The options as keyword-only parameters, for a facade's ``__signature__``."""
    params = []
    for field in dataclasses.fields(PoolOptions):
        default = _default(field)
        params.append(
            inspect.Parameter(
                field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=field.type
            )
        )
    return params
