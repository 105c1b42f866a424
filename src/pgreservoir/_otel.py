"""OpenTelemetry metrics of every pool: the semantic conventions for database
client connection pools (``db.client.connection.*``).

Imported by the recorder (:mod:`pgreservoir._metrics`) only when
opentelemetry-api is installed. One :class:`_Binding` per meter provider
creates the instruments once, on the meter ``pgreservoir``, and serves every
pool that records to that provider.

* The gauges and ``timeouts`` are observable instruments: their callbacks,
  run by the SDK when it collects (in its own thread), copy each pool's
  figures under the pool's lock. Nothing happens on the fast path.
* The three histograms are synchronous instruments, as the API has no other
  kind. A record costs the SDK several microseconds, more than a checkout, so
  the pool does not call it: the core counts durations in fixed buckets and
  the recorder's thread (every 0.5 s) and each collection replay what each
  bucket gained since the last replay,
  each value as the mean of that bucket's new values (inside the bucket, so
  with the default boundaries, which are ours, counts and sums are exact).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from opentelemetry.metrics import (
    CallbackOptions,
    NoOpMeterProvider,
    Observation,
    get_meter_provider,
)

from ._logging import logger
from ._metrics import merge, read, ticker
from .stats import BUCKETS, Figures

__all__ = ["bind"]

#: Most values one replay sends per pool and histogram. Each costs the SDK a
#: record (8-17 us measured): past this, values that piled up since the last
#: replay (0.5 s) are dropped, and logged once, rather than let the exporter
#: take a core. At the ticker's pace: 5,000 values a second per histogram.
MAX_REPLAY = 2_500

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

# Provider -> its binding. Weakly keyed where the provider allows it, so a
# test's short-lived provider does not outlive its test.
_bindings: weakref.WeakKeyDictionary[Any, _Binding] = weakref.WeakKeyDictionary()
_strong: Dict[int, Tuple[Any, Any]] = {}
# The binding made on the global proxy before the app set a provider, if any.
_proxy: List[_Binding] = []
_lock = threading.Lock()


def bind(shell: Any, provider: Any = None) -> None:
    """Record the pool of ``shell`` to ``provider`` (None: the global one)."""
    current = get_meter_provider()
    if provider is None:
        # Until the app sets one, the global provider is a proxy whose meters
        # forward to the real one once it is set: pools built first record too.
        provider = current
    with _lock:
        # The global provider set after pools bound to the proxy: the proxy's
        # instruments are this provider's already (an SDK ignores the
        # callbacks of an instrument registered twice).
        binding = _proxy[0] if provider is current and _proxy else _lookup(provider)
        if binding is None:
            binding = _Binding(provider)
            if _is_unset_proxy(provider):
                _proxy.append(binding)
            try:
                _bindings[provider] = binding
            except TypeError:
                _strong[id(provider)] = (provider, binding)
    binding.add(shell)


def _lookup(provider: Any) -> Optional[_Binding]:
    try:
        return _bindings.get(provider)
    except TypeError:  # not weakly referenceable
        found: Optional[_Binding] = _strong.get(id(provider), (None, None))[1]
        return found


class _Binding:
    """The instruments on one provider's meter, and the pools recording to it."""

    def __init__(self, provider: Any) -> None:
        meter = provider.get_meter("pgreservoir", _version())
        # Whether records would go nowhere: a no-op provider, or the global
        # proxy before the app set a provider (then replays wait, and catch
        # up once it is set). A callable, as the global one may be set later.
        self._idle: Callable[[], bool] = lambda: False
        if isinstance(provider, NoOpMeterProvider):
            self._idle = lambda: True
        elif _is_unset_proxy(provider):
            self._idle = lambda: _is_unset_proxy(get_meter_provider())
        self._shells: weakref.WeakSet[Any] = weakref.WeakSet()
        self._shells_lock = threading.Lock()  # a leaf: guards _shells only
        # What each pool's histograms held at the last replay (replay thread
        # only), by the pool's core: a pool collected before the next replay
        # still has its last values replayed, from the core its finalizer
        # left in _orphans (the core does not reference its shell).
        self._replayed: weakref.WeakKeyDictionary[Any, Figures] = weakref.WeakKeyDictionary()
        self._orphans: List[Any] = []  # appended by finalizers at any time: atomic ops only
        self._replay_lock = threading.Lock()
        self._finished: weakref.WeakSet[Any] = weakref.WeakSet()  # closed, replayed
        self._warned: set[str] = set()  # pools whose dropped values were logged

        def gauge(name: str, unit: str, description: str, read_value: Any) -> None:
            meter.create_observable_up_down_counter(
                name, callbacks=[self._callback(read_value)], unit=unit, description=description
            )

        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._replay_first, self._callback(_count)],
            unit="{connection}",
            description="The number of connections that are currently in the state "
            "given by db.client.connection.state (idle or used).",
        )
        gauge(
            "db.client.connection.idle.max",
            "{connection}",
            "The most idle open connections the pool keeps.",
            lambda f: f.idle_max,
        )
        gauge(
            "db.client.connection.idle.min",
            "{connection}",
            "The fewest idle open connections the pool keeps (its min_size).",
            lambda f: f.idle_min,
        )
        gauge(
            "db.client.connection.max",
            "{connection}",
            "The most open connections the pool allows (its max_size).",
            lambda f: f.max,
        )
        gauge(
            "db.client.connection.pending_requests",
            "{request}",
            "The number of callers waiting for a connection.",
            lambda f: f.pending_requests,
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            callbacks=[self._callback(lambda f: f.timeouts)],
            unit="{timeout}",
            description="The number of requests for a connection that timed out.",
        )
        bounds = list(BUCKETS)
        self._histograms = (
            (
                meter.create_histogram(
                    "db.client.connection.wait_time",
                    unit="s",
                    description="The time it took to obtain a connection from the pool.",
                    explicit_bucket_boundaries_advisory=bounds,
                ),
                "wait_counts",
                "wait_sums",
            ),
            (
                meter.create_histogram(
                    "db.client.connection.use_time",
                    unit="s",
                    description="The time between borrowing a connection and returning it.",
                    explicit_bucket_boundaries_advisory=bounds,
                ),
                "use_counts",
                "use_sums",
            ),
            (
                meter.create_histogram(
                    "db.client.connection.create_time",
                    unit="s",
                    description="The time it took to create a new connection.",
                    explicit_bucket_boundaries_advisory=bounds,
                ),
                "create_counts",
                "create_sums",
            ),
        )

    def add(self, shell: Any) -> None:
        with self._shells_lock:
            self._shells.add(shell)
        weakref.finalize(shell, self._orphans.append, shell.core).atexit = False
        ticker.add(self.replay)

    def _figures(self) -> List[Figures]:
        """The figures of the open pools of this binding, one per pool name."""
        with self._shells_lock:
            shells = list(self._shells)
        found = []
        for shell in shells:
            if not shell.core.closed:
                fig = read(shell)
                if fig is not None:
                    found.append(fig)
        return merge(found)

    def _callback(
        self, value: Callable[[Figures], Any]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            try:
                return list(_observations(self._figures(), value))
            except Exception:  # never into the SDK, never into a pool
                logger.warning("pgreservoir metrics callback failed", exc_info=True)
                return []

        return observe

    def _replay_first(self, options: CallbackOptions) -> Iterable[Observation]:
        """The SDK collects: first bring the histograms up to date, so that this
        collection has every value (the SDK reads its synchronous instruments
        after calling back the observable ones; recording meanwhile takes none
        of the locks it holds)."""
        try:
            self.replay()
        except Exception:
            logger.warning("pgreservoir metrics replay failed", exc_info=True)
        return []

    def _dropped(self, name: str, count: int) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "pool %r: %d histogram values not sent to OpenTelemetry: more than %d "
                "piled up between two replays (each costs the SDK a record); Prometheus "
                "reads the buckets directly (see docs/observability.md)",
                name,
                count,
                MAX_REPLAY,
            )

    def replay(self) -> bool:
        """Record to the histograms what each pool's buckets gained since the
        last replay (run by the ticker, or flush_metrics()); whether there was
        anything to serve (an open pool, and a provider that records)."""
        if self._idle():
            return False
        with self._shells_lock:
            shells = list(self._shells)
        with self._replay_lock:
            for shell in shells:
                if shell.core.closed:
                    # A last time after close() (what it recorded until then).
                    if shell in self._finished:
                        continue
                    self._finished.add(shell)
                fig = read(shell)
                if fig is not None:
                    self._replay_one(shell.core, fig)
            while self._orphans:
                # Collected since the last replay: nobody else holds its core.
                core = self._orphans.pop()
                try:
                    fig = core.figures()
                except Exception:
                    logger.debug("a collected pool's last metrics were unreadable", exc_info=True)
                    continue
                self._replay_one(core, fig)
                self._replayed.pop(core, None)
        return any(not shell.core.closed for shell in shells)

    def _replay_one(self, core: Any, fig: Figures) -> None:
        """Record what one pool's buckets gained since its last replay."""
        before = self._replayed.get(core)
        self._replayed[core] = fig
        attributes = {POOL_NAME: fig.name}
        for histogram, counts_field, sums_field in self._histograms:
            counts = getattr(fig, counts_field)
            sums = getattr(fig, sums_field)
            if before is None:
                old_counts: Tuple[int, ...] = (0,) * len(counts)
                old_sums: Tuple[float, ...] = (0.0,) * len(sums)
            else:
                old_counts = getattr(before, counts_field)
                old_sums = getattr(before, sums_field)
            budget = MAX_REPLAY
            for index, (count, old) in enumerate(zip(counts, old_counts)):
                new = count - old
                if new > 0:
                    value = _inside(index, (sums[index] - old_sums[index]) / new)
                    sent = min(new, budget)
                    budget -= sent
                    for _ in range(sent):
                        histogram.record(value, attributes)
                    if sent < new:
                        self._dropped(fig.name, new - sent)


def _version() -> Optional[str]:
    """pgreservoir's version, for the meter's instrumentation scope."""
    from importlib import metadata

    try:
        return metadata.version("pgreservoir")
    except metadata.PackageNotFoundError:  # run from a source tree
        return None


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held in the child.
    global _lock  # noqa: PLW0603 (replaced, not shared: see above)
    _lock = threading.Lock()
    bindings = [*_bindings.values(), *(b for _, b in _strong.values())]
    for binding in bindings:
        binding._shells_lock = threading.Lock()
        binding._replay_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_unset_proxy(provider: Any) -> bool:
    """Whether ``provider`` is the API's global proxy with no provider set yet."""
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # another API version: assume it records
        return False
    return isinstance(provider, _ProxyMeterProvider)


def _inside(index: int, mean: float) -> float:
    """``mean`` kept inside bucket ``index`` (floating-point sums may stray)."""
    lower = BUCKETS[index - 1] if index else 0.0
    upper = BUCKETS[index] if index < len(BUCKETS) else math.inf
    if mean <= lower:
        return math.nextafter(lower, math.inf) if index else 0.0
    return min(mean, upper)


def _count(fig: Figures) -> Iterator[Tuple[int, Dict[str, str]]]:
    yield fig.idle, {POOL_NAME: fig.name, STATE: "idle"}
    yield fig.used, {POOL_NAME: fig.name, STATE: "used"}


def _observations(figures: List[Figures], value: Callable[[Figures], Any]) -> Iterator[Observation]:
    for fig in figures:
        got = value(fig)
        if isinstance(got, int):
            yield Observation(got, {POOL_NAME: fig.name})
        else:
            for amount, attributes in got:
                yield Observation(amount, attributes)
