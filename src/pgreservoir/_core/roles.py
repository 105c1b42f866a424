"""Which server role a pool wants, and whether a connection's server still has it.

No I/O: the shells read the parameter statuses the server reports (PostgreSQL
14+ sends ``in_hot_standby`` and ``default_transaction_read_only`` at connect
and with the first message after they change, so reading them costs no round
trip) and ask :meth:`RoleCheck.stale`.

The wanted role comes from the connection options' ``target_session_attrs``,
as libpq reads it: ``read-write`` wants a server that takes writes (not a
standby, not ``default_transaction_read_only``), ``primary`` a server not in
recovery (a fenced primary still is one). Anything else (``any``, the
default, and the read-only or standby attributes) asks for no role: with no
such attribute a new connection may land on the very same server, so
discarding would heal nothing, and pools meant for replicas are RoutingPool's
business.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["RoleCheck", "role_check_for"]

_WRITABLE = "read-write"
_PRIMARY = "primary"


class RoleCheck:
    """The role a pool wants of its servers; :meth:`stale` judges one connection."""

    __slots__ = ("_writable", "wanted")

    def __init__(self, wanted: str) -> None:
        self.wanted = wanted
        self._writable = wanted == _WRITABLE

    def stale(
        self,
        in_hot_standby: Optional[str],
        default_read_only: Optional[str],
        client_read_only: bool,
    ) -> bool:
        """Whether a connection whose server reported these statuses is in the wrong
        role. ``client_read_only``: the driver itself made the session read-only
        (psycopg2's ``readonly`` on an autocommit connection is a session SET), which
        says nothing about the server."""
        if in_hot_standby == "on":
            return True
        return self._writable and default_read_only == "on" and not client_read_only


def role_check_for(target_session_attrs: Optional[str]) -> Optional[RoleCheck]:
    """The role check for a ``target_session_attrs`` value, or None when it asks for
    no role a pool can restore by reconnecting (see the module notes)."""
    value = (target_session_attrs or "").strip().lower()
    if value in (_WRITABLE, _PRIMARY):
        return RoleCheck(value)
    return None
