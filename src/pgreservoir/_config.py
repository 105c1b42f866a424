"""Validation of pool options, in one place for every pool class.

Bad input is refused with the accepted range in the message; nothing is ever
silently replaced by another value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

ConnCallback = Callable[[Any], None]

_names = itertools.count(1)


def next_pool_name() -> str:
    """A unique default name: ``pool-1``, ``pool-2``..."""
    return f"pool-{next(_names)}"


def check_size(name: str, value: Any, minimum: int) -> int:
    """An integer option (bools refused) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_sizes(min_size: Any, max_size: Any) -> tuple[int, int]:
    """``0 <= min_size <= max_size`` and ``max_size >= 1``."""
    lo = check_size("min_size", min_size, 0)
    hi = check_size("max_size", max_size, 1)
    if lo > hi:
        raise ValueError(
            f"min_size ({lo}) must not exceed max_size ({hi}); "
            "raise max_size or lower min_size"
        )
    return lo, hi


def check_seconds(
    name: str, value: Any, *, allow_none: bool = False, positive: bool = False
) -> Any:
    """A duration in seconds: a real number >= 0 (> 0 if ``positive``); ``inf`` allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, got {type(value).__name__} {value!r}"
        )
    value = float(value)
    if math.isnan(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {bound} seconds (math.inf for no limit), got {value}")
    return value


def check_callback(name: str, value: Any) -> Optional[ConnCallback]:
    """None or a callable taking the connection."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable taking a connection, or None; got {value!r}")
    return value  # type: ignore[no-any-return]


def check_flag(name: str, value: Any) -> bool:
    """A real bool (a truthy string is a mistake, not a yes)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class PoolConfig:
    """Validated options of one pool (sizes may change later through resize())."""

    name: str
    min_size: int
    max_size: int
    timeout: float
    max_waiting: int
    max_lifetime: float
    max_idle: float
    check_idle_after: Optional[float]
    configure: Optional[ConnCallback]
    reset: Optional[ConnCallback]
    fail_fast: bool = False
    reconnect_timeout: float = 300.0
    reconnect_failed: Optional[Callable[[], None]] = None
    leak_threshold: Optional[float] = None
    check_idle_interval: Optional[float] = None

    @classmethod
    def build(
        cls,
        *,
        name: Optional[str],
        min_size: Any,
        max_size: Any,
        timeout: Any,
        max_waiting: Any,
        max_lifetime: Any,
        max_idle: Any,
        check_idle_after: Any,
        configure: Any,
        reset: Any,
        fail_fast: Any = False,
        reconnect_timeout: Any = 300.0,
        reconnect_failed: Any = None,
        leak_threshold: Any = None,
        check_idle_interval: Any = None,
    ) -> PoolConfig:
        """Validate every option, raising TypeError/ValueError on the first bad one."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        lo, hi = check_sizes(min_size, max_size)
        return cls(
            name=name or next_pool_name(),
            min_size=lo,
            max_size=hi,
            timeout=check_seconds("timeout", timeout),
            max_waiting=check_size("max_waiting", max_waiting, 0),
            max_lifetime=check_seconds("max_lifetime", max_lifetime, positive=True),
            max_idle=check_seconds("max_idle", max_idle),
            check_idle_after=check_seconds("check_idle_after", check_idle_after, allow_none=True),
            configure=check_callback("configure", configure),
            reset=check_callback("reset", reset),
            fail_fast=check_flag("fail_fast", fail_fast),
            reconnect_timeout=check_seconds("reconnect_timeout", reconnect_timeout),
            reconnect_failed=check_callback("reconnect_failed", reconnect_failed),  # type: ignore[arg-type]
            leak_threshold=check_seconds(
                "leak_threshold", leak_threshold, allow_none=True, positive=True
            ),
            check_idle_interval=check_seconds(
                "check_idle_interval", check_idle_interval, allow_none=True, positive=True
            ),
        )
