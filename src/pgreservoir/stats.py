"""Pool statistics: the duration histograms, the names of the stats() keys, and
the figures every metrics exporter reads (:class:`Figures`)."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import List, NamedTuple, Tuple

__all__ = [
    "BUCKETS",
    "COUNTER_KEYS",
    "GAUGE_KEYS",
    "TIMING_KEYS",
    "DurationHistogram",
    "Figures",
    "WaitHistogram",
]

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
    "use_ms_total",
    "connections_stale_role",
)

#: Timings: estimates from the duration histograms, in milliseconds. Use
#: time runs from a hand-out to the return; connect time from the start of a
#: connect to the connection being ready (configure() and the first check
#: included), for the connects that succeeded.
TIMING_KEYS = (
    "use_ms_p50",
    "use_ms_p99",
    "use_ms_max",
    "connect_ms_p50",
    "connect_ms_p99",
    "connect_ms_max",
)

#: Upper bounds (seconds, inclusive) of the buckets of the wait, use and
#: connect time histograms, as exported to OpenTelemetry and Prometheus; a
#: last bucket holds what is longer. From 50 us (a checkout) to a minute.
BUCKETS: Tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
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


class DurationHistogram:
    """Durations in the fixed :data:`BUCKETS`: a count and a sum per bucket (the
    bucket found by a binary search in C), cheap enough for every check-in.
    The sums per bucket let an exporter replay the values exactly enough:
    each bucket's mean lies in the bucket."""

    __slots__ = ("counts", "max_seconds", "sums")

    def __init__(self) -> None:
        self.counts: List[int] = [0] * (len(BUCKETS) + 1)
        self.sums: List[float] = [0.0] * (len(BUCKETS) + 1)
        self.max_seconds = 0.0

    def record(self, seconds: float) -> None:
        """Add one duration of ``seconds``."""
        index = bisect_left(BUCKETS, seconds)
        self.counts[index] += 1
        self.sums[index] += seconds
        self.max_seconds = max(self.max_seconds, seconds)

    @property
    def total_seconds(self) -> float:
        """The sum of every duration recorded."""
        return math.fsum(self.sums)

    def quantile_ms(self, q: float) -> float:
        """An estimate of the ``q`` quantile (0..1) in milliseconds: linear within
        its bucket, capped by the largest value seen; 0 when empty."""
        return quantile_ms(self.counts, q, self.max_seconds)


def quantile_ms(counts: List[int], q: float, max_seconds: float) -> float:
    """The ``q`` quantile of bucket ``counts`` (see DurationHistogram.quantile_ms)."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = BUCKETS[index - 1] if index else 0.0
            upper = BUCKETS[index] if index < len(BUCKETS) else max_seconds
            value = lower + (upper - lower) * max(0.0, rank - seen) / count
            return round(min(value, max_seconds) * 1000.0, 3)
        seen += count
    return round(max_seconds * 1000.0, 3)


class Figures(NamedTuple):
    """What the metrics exporters read of one pool, at one moment.

    The names of the OpenTelemetry semantic conventions for connection pools
    (``db.client.connection.*``): the three histograms are bucket counts in
    :data:`BUCKETS` order (one more for the overflow) and a sum in seconds;
    they and ``timeouts`` only ever grow. ``*_sums`` are per bucket too.
    """

    name: str
    idle: int  # db.client.connection.count, state=idle
    used: int  # ... state=used: handed out, or being cleaned or checked by the pool
    pending_requests: int  # callers waiting in line
    idle_min: int
    idle_max: int
    max: int
    timeouts: int
    wait_counts: Tuple[int, ...]
    wait_sums: Tuple[float, ...]
    use_counts: Tuple[int, ...]
    use_sums: Tuple[float, ...]
    create_counts: Tuple[int, ...]
    create_sums: Tuple[float, ...]
