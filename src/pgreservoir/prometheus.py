"""Prometheus metrics of every open pool (``pip install 'pgreservoir[prometheus]'``).

``REGISTRY.register(PoolCollector())`` exposes every open pool of the process
at each scrape, under the OpenTelemetry semantic-convention names in
Prometheus form: ``db_client_connection_count{pool_name=..., state="idle"|"used"}``,
``db_client_connection_idle_max``, ``_idle_min``, ``_max``,
``_pending_requests``, ``db_client_connection_timeouts_total`` and the
histograms ``db_client_connection_wait_time_seconds``, ``_use_time_seconds``,
``_create_time_seconds``. The collector reads each pool's figures under its
lock at scrape time: nothing happens on the pool's fast path.

Multiprocess servers (gunicorn, uWSGI): a scrape reaches one worker, which
cannot see the others' pools, and prometheus_client's multiprocess mode
takes no custom collectors. So each worker writes its pools' figures to a
file of its own in a directory (:func:`share_pools`, every 0.5 s, from the
recorder's thread), and ``PoolCollector(directory=...)`` in whichever worker
serves ``/metrics`` reads every live worker's file: each series then carries
a ``pid`` label, one per worker. Files of processes that have exited are
ignored and removed. See docs/observability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._metrics import merge, open_pools, read, ticker
from .stats import BUCKETS, Figures

__all__ = ["PoolCollector", "share_pools", "stop_sharing"]

_PREFIX = "pools-"
_SUFFIX = ".json"

_HISTOGRAMS = (
    (
        "db_client_connection_wait_time_seconds",
        "The time it took to obtain a connection from the pool.",
        "wait_counts",
        "wait_sums",
    ),
    (
        "db_client_connection_use_time_seconds",
        "The time between borrowing a connection and returning it.",
        "use_counts",
        "use_sums",
    ),
    (
        "db_client_connection_create_time_seconds",
        "The time it took to create a new connection.",
        "create_counts",
        "create_sums",
    ),
)
_GAUGES = (
    ("db_client_connection_idle_max", "The most idle open connections the pool keeps.", "idle_max"),
    (
        "db_client_connection_idle_min",
        "The fewest idle open connections the pool keeps.",
        "idle_min",
    ),
    ("db_client_connection_max", "The most open connections the pool allows.", "max"),
    (
        "db_client_connection_pending_requests",
        "The number of callers waiting for a connection.",
        "pending_requests",
    ),
)
# The bounds as prometheus_client writes them (repr: 5e-05, 0.0001, 1.0, ...).
_LE = [repr(float(bound)) for bound in BUCKETS] + ["+Inf"]


class PoolCollector(Collector):
    """A ``prometheus_client`` collector of every open pool.

    ``directory=None``: the pools of this process. With a directory: the
    pools of every live process that called :func:`share_pools` with it,
    labelled by ``pid`` (for multiprocess servers).
    """

    def __init__(self, directory: Optional[str] = None) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        """The metric families, read now."""
        if self._directory is None:
            found = [fig for fig in map(read, open_pools()) if fig is not None]
            return _families([((), fig) for fig in merge(found)], ())
        return _families(list(_read_directory(self._directory)), ("pid",))

    def describe(self) -> Iterable[Metric]:
        """Nothing: the registry then never calls collect() at registration."""
        return []


def _families(
    rows: Sequence[Tuple[Tuple[str, ...], Figures]], extra: Tuple[str, ...]
) -> List[Metric]:
    labels = ["pool_name", *extra]
    count = GaugeMetricFamily(
        "db_client_connection_count",
        "The number of connections in the state given by the state label (idle or used).",
        labels=[*labels, "state"],
    )
    gauges = [(GaugeMetricFamily(n, doc, labels=labels), field) for n, doc, field in _GAUGES]
    timeouts = CounterMetricFamily(
        "db_client_connection_timeouts",
        "The number of requests for a connection that timed out.",
        labels=labels,
    )
    histograms = [
        (HistogramMetricFamily(n, doc, labels=labels), counts, sums)
        for n, doc, counts, sums in _HISTOGRAMS
    ]
    for values, fig in rows:
        key = [fig.name, *values]
        count.add_metric([*key, "idle"], fig.idle)
        count.add_metric([*key, "used"], fig.used)
        for family, field in gauges:
            family.add_metric(key, getattr(fig, field))
        timeouts.add_metric(key, fig.timeouts)
        for hist, counts_field, sums_field in histograms:
            cumulative, buckets = 0, []
            for le, n in zip(_LE, getattr(fig, counts_field)):
                cumulative += n
                buckets.append((le, float(cumulative)))
            hist.add_metric(key, buckets, sum(getattr(fig, sums_field)))
    return [count, *(family for family, _ in gauges), timeouts, *(h for h, _, _ in histograms)]


# -- multiprocess ------------------------------------------------------------

_writers: Dict[str, Any] = {}


def share_pools(directory: str) -> None:
    """Write this process's pools' figures to ``directory`` every 0.5 s (and now),
    for a ``PoolCollector(directory)`` in any process to read. Call it in
    every worker (gunicorn: in ``post_fork``, or where the app is built
    without ``--preload``); a forked child keeps writing, to its own file."""
    os.makedirs(directory, exist_ok=True)
    writer = _writers.get(directory)
    if writer is None:

        def writer() -> bool:
            _write(directory)
            return True  # until stop_sharing(): the file stays current

        _writers[directory] = writer
    ticker.add(writer)
    _write(directory)


def stop_sharing(directory: str) -> None:
    """Stop writing to ``directory`` and remove this process's file."""
    writer = _writers.pop(directory, None)
    if writer is not None:
        ticker.remove(writer)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(directory, os.getpid()))


def _path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{_PREFIX}{pid}{_SUFFIX}")


def _write(directory: str) -> None:
    found = [fig for fig in map(read, open_pools()) if fig is not None]
    data = json.dumps({"pid": os.getpid(), "pools": [list(fig) for fig in merge(found)]})
    # Atomically: a reader sees the previous file or this one, never half of one.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, _path(directory, os.getpid()))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_directory(directory: str) -> Iterator[Tuple[Tuple[str, ...], Figures]]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        try:
            pid = int(name[len(_PREFIX) : -len(_SUFFIX)])
        except ValueError:
            continue
        path = os.path.join(directory, name)
        if not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        try:
            with open(path) as f:
                data = json.load(f)
            pools = [_figures(row) for row in data["pools"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # vanished or foreign: skip it, never fail the scrape
        for fig in pools:
            yield (str(pid),), fig


def _figures(row: List[Any]) -> Figures:
    values: List[Any] = [tuple(v) if isinstance(v, list) else v for v in row]
    return Figures._make(values)
