"""The shells' side of stale roles: read what the server reported, let the core's
:class:`~pgreservoir._core.RoleCheck` judge, and turn a stale one into the
core's ``STALE_ROLE`` verdict (see :mod:`pgreservoir._core.roles`).

A pool whose connection options want no role gets the driver's plain verdict
(nothing here runs); one that does gets :func:`role_verdict` on check-in and
:func:`stale` after each round trip of a checkout's check. Neither does I/O:
parameter statuses arrive with the server's replies.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._core import BROKEN, CLOSE, HOLDER_CLOSED, STALE_ROLE, RoleCheck, role_check_for

__all__ = ["role_check", "role_verdict", "stale"]

_FINAL = (BROKEN, CLOSE, HOLDER_CLOSED)  # verdicts that discard anyway


def role_check(driver: Any) -> Optional[RoleCheck]:
    """The role check the driver's connection options ask for, or None."""
    return role_check_for(getattr(driver, "target_session_attrs", None))


def stale(driver: Any, check: Optional[RoleCheck], conn: Any) -> bool:
    """Whether ``conn``'s server reported that it left the role ``check`` wants
    (never, when the pool wants no role)."""
    if check is None:
        return False
    status = driver.parameter_status
    try:
        return check.stale(
            status(conn, "in_hot_standby"),
            status(conn, "default_transaction_read_only"),
            driver.client_read_only(conn),
        )
    except Exception:  # a closed connection: its verdict says so
        return False


def role_verdict(driver: Any, check: Optional[RoleCheck]) -> Callable[[Any, Any], int]:
    """The driver's verdict, turned into ``STALE_ROLE`` for a connection whose server
    left the role ``check`` wants; the plain verdict when the pool wants no role."""
    verdict: Callable[[Any, Any], int] = driver.verdict
    if check is None:
        return verdict

    def judged(conn: Any, baseline: Any) -> int:
        result = verdict(conn, baseline)
        if result in _FINAL or not stale(driver, check, conn):
            return result
        return STALE_ROLE

    return judged
