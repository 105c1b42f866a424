"""The pool core: state and decisions, no I/O (see :mod:`pgreservoir._core.core`)."""

from .core import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BROKEN,
    CLEAN,
    CLOSE,
    DIRTY,
    HOLDER_CLOSED,
    LIFETIME_JITTER,
    RESTORE,
    Core,
    format_stack,
)
from .plan import Plan
from .records import CHECK, PING, PROBE, CloseReason, Entry, State, Waiter

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "BROKEN",
    "CHECK",
    "CLEAN",
    "CLOSE",
    "DIRTY",
    "HOLDER_CLOSED",
    "LIFETIME_JITTER",
    "PING",
    "PROBE",
    "RESTORE",
    "CloseReason",
    "Core",
    "Entry",
    "Plan",
    "State",
    "Waiter",
    "format_stack",
]
