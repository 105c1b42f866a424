"""Pool statistics: the wait-time histogram and the names of the stats() keys."""

from __future__ import annotations

import math
from typing import List

__all__ = ["COUNTER_KEYS", "GAUGE_KEYS", "WaitHistogram"]

#: Gauges: the pool's state at the moment stats() was called.
GAUGE_KEYS = ("min_size", "max_size", "size", "idle", "in_use", "waiting", "opening")

#: Counters: totals since the pool was opened.
COUNTER_KEYS = (
    "requests",
    "requests_waited",
    "requests_waited_full",
    "requests_cancelled",
    "timeouts",
    "rejected",
    "wait_ms_total",
    "connections_opened",
    "connections_closed",
    "connect_errors",
    "connect_ms_total",
    "connections_lost",
    "returns_broken",
    "returns_closed",
    "connections_stale_role",
)

# Buckets grow by 2**(1/4) (19%) from 1 us: 120 buckets reach ~1e9 us (17 min).
_BASE = 2.0 ** 0.25
_LOG_BASE = math.log(_BASE)
_BUCKETS = 120


class WaitHistogram:
    """Log-scale histogram of how long callers waited for a connection.

    Only callers that actually waited are recorded (the fast path records
    nothing); callers served at once count as zero waits when percentiles are
    computed, so p50 of a lightly loaded pool is 0.
    """

    __slots__ = ("_counts", "max_seconds", "recorded", "total_seconds")

    def __init__(self) -> None:
        self._counts: List[int] = [0] * _BUCKETS
        self.recorded = 0
        self.max_seconds = 0.0
        self.total_seconds = 0.0

    def record(self, seconds: float) -> None:
        """Add one wait of ``seconds``."""
        us = seconds * 1e6
        index = 0 if us <= 1.0 else min(_BUCKETS - 1, int(math.log(us) / _LOG_BASE) + 1)
        self._counts[index] += 1
        self.recorded += 1
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    def percentile_ms(self, q: float, unwaited: int) -> float:
        """The ``q`` quantile (0..1) in milliseconds, counting ``unwaited`` zero waits."""
        total = self.recorded + unwaited
        if total == 0:
            return 0.0
        rank = q * total
        if rank <= unwaited:
            return 0.0
        seen = unwaited
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank and count:
                # Upper bound of the bucket, capped by the true maximum.
                upper_us = _BASE ** index
                return round(min(upper_us / 1000.0, self.max_seconds * 1000.0), 3)
        return round(self.max_seconds * 1000.0, 3)
