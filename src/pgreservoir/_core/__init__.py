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
    STALE_ROLE,
    Core,
    format_stack,
)
from .plan import Plan
from .records import CHECK, PING, PROBE, CloseReason, Entry, State, Waiter
from .roles import RoleCheck, role_check_for

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
    "STALE_ROLE",
    "CloseReason",
    "Core",
    "Entry",
    "Plan",
    "RoleCheck",
    "State",
    "Waiter",
    "format_stack",
    "role_check_for",
]
