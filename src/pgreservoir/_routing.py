"""What the routing pools decide, without I/O: which replica serves a read.

:class:`Router` holds what the health checks found about each replica and
answers, given ``now``, which replica gets the next read (round robin over
those eligible) or None (the primary serves). The routing facades
(:mod:`pgreservoir.routing`, :mod:`pgreservoir.async_routing`) do the I/O:
they run the checks, report here, and check connections out of the pool
picked. Every method is called under the facade's lock (threads) or on
its loop (asyncio).

A replica is eligible when its last check succeeded, is recent (a check
that hangs makes it stale: a black-holed replica is dropped within
``check_interval + check_timeout``), no checkout has failed to connect to it
since that check began, and, with ``max_lag``, its lag is known and within it.

How lag is measured (one query per check, on the replica): ``0`` when the
replica is not in recovery, or has replayed all the WAL it received
(``pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()``); otherwise the
smaller of ``now() - pg_last_xact_replay_timestamp()`` (the age of the last
transaction replayed) and the time since a check last found it caught up.
The second term keeps an idle primary from looking like lag: after an hour
with no writes, the last replayed transaction is an hour old although
nothing is missing, and a first write would otherwise read as an hour of
lag for the moment its WAL is being replayed. A replica whose WAL receiver
has lost the primary has replayed everything it received and reads as 0:
lag as a replica can see it is about replay, not about the network.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

__all__ = ["LAG_QUERY", "Router"]

#: The health check: whether in recovery, and the replay lag in seconds as
#: the replica sees it (None: replaying, but no transaction replayed yet).
LAG_QUERY = (
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN NOT pg_is_in_recovery() THEN 0.0"
    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0"
    " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END"
)


class _Replica:
    """What the router knows about one replica."""

    __slots__ = (
        "caught_up_at",
        "checked_at",
        "checks",
        "failed_at",
        "in_recovery",
        "label",
        "lag",
        "last_error",
        "ok",
        "reads",
    )

    def __init__(self, label: str) -> None:
        self.label = label
        self.ok = False  # the last check succeeded
        self.checked_at = float("-inf")  # when that check began
        self.failed_at = float("-inf")  # when a checkout last failed to connect to it
        self.caught_up_at: Optional[float] = None  # when a check last found lag 0
        self.lag: Optional[float] = None
        self.in_recovery: Optional[bool] = None
        self.last_error: Optional[str] = None
        self.reads = 0
        self.checks = 0  # checks reported


class Router:
    """Replica health, and the choice of the replica for each read."""

    __slots__ = ("_next", "_replicas", "max_lag", "stale_after")

    def __init__(
        self, labels: Sequence[str], *, max_lag: Optional[float], stale_after: float
    ) -> None:
        self._replicas = [_Replica(label) for label in labels]
        self._next = 0
        #: Seconds of lag beyond which a replica gets no reads (None: no limit).
        self.max_lag = max_lag
        #: Seconds after which a check that has not reported makes a replica ineligible.
        self.stale_after = stale_after

    # -- what the checks and the checkouts report -----------------------------------

    def checked(
        self, index: int, began: float, in_recovery: bool, raw_lag: Optional[float]
    ) -> None:
        """A check begun at ``began`` succeeded: ``raw_lag`` is LAG_QUERY's lag."""
        replica = self._replicas[index]
        if began < replica.checked_at:
            return  # a later check reported first
        replica.checks += 1
        replica.ok = True
        replica.checked_at = began
        replica.in_recovery = in_recovery
        replica.last_error = None
        if raw_lag is not None and raw_lag <= 0.0:
            replica.lag = 0.0
            replica.caught_up_at = began
        elif replica.caught_up_at is not None:
            since = max(0.0, began - replica.caught_up_at)
            replica.lag = since if raw_lag is None else min(raw_lag, since)
        else:
            replica.lag = raw_lag

    def check_failed(self, index: int, began: float, error: str) -> None:
        """A check begun at ``began`` failed (could not connect, query failed, timed out)."""
        replica = self._replicas[index]
        if began < replica.checked_at:
            return
        replica.checks += 1
        replica.ok = False
        replica.checked_at = began
        replica.last_error = error

    def checkout_failed(self, index: int, now: float, error: str) -> None:
        """A read could not get a connection to replica ``index`` (its pool is
        failing to connect): no reads until a check begun after now succeeds."""
        replica = self._replicas[index]
        replica.failed_at = now
        replica.last_error = error

    # -- decisions -------------------------------------------------------------------

    def eligible(self, index: int, now: float) -> bool:
        """Whether replica ``index`` may serve reads now."""
        replica = self._replicas[index]
        if not replica.ok or replica.checked_at <= replica.failed_at:
            return False
        if now - replica.checked_at > self.stale_after:
            return False
        if self.max_lag is not None:
            return replica.lag is not None and replica.lag <= self.max_lag
        return True

    def pick(self, now: float, exclude: Sequence[int] = ()) -> Optional[int]:
        """The replica for the next read (round robin over the eligible ones,
        ``exclude`` left out), or None: the primary serves it."""
        count = len(self._replicas)
        for step in range(count):
            index = (self._next + step) % count
            if index not in exclude and self.eligible(index, now):
                self._next = (index + 1) % count
                self._replicas[index].reads += 1
                return index
        return None

    def any_eligible(self, now: float) -> bool:
        return any(self.eligible(i, now) for i in range(len(self._replicas)))

    # -- observability -----------------------------------------------------------------

    def snapshot(self, now: float) -> List[Dict[str, Any]]:
        """Per replica: label, eligible, up (last check), lag, in_recovery,
        last_error, reads routed to it, checks reported."""
        return [
            {
                "replica": r.label,
                "eligible": self.eligible(i, now),
                "up": r.ok and r.checked_at > r.failed_at,
                "lag": r.lag,
                "in_recovery": r.in_recovery,
                "last_error": r.last_error,
                "reads": r.reads,
                "checks": r.checks,
            }
            for i, r in enumerate(self._replicas)
        ]
