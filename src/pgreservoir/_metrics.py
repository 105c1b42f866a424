"""The metrics recorder: every pool is registered here, every exporter reads here.

Both shells (threads and asyncio) register themselves when they are built
(:func:`track`), so every pool built on them, whatever its facade, records
without a metric call of its own. What is recorded is the core's: counters
and duration histograms it keeps anyway, under the lock it already holds
(:meth:`pgreservoir._core.Core.figures`). The fast path pays a counter
increment on checkout and a bucket increment on check-in; exporters pay the
rest, in their own threads, when they read.

* OpenTelemetry (:mod:`pgreservoir._otel`, imported only if
  ``opentelemetry-api`` is installed, when the first pool is built):
  observable instruments read the figures when the SDK collects; histogram
  values are replayed to its synchronous histograms by :data:`ticker`, a
  daemon thread started only then.
* Prometheus (:mod:`pgreservoir.prometheus`): a collector reads the figures
  at each scrape; for multiprocess servers, :data:`ticker` writes them to a
  file per process.

Lock order: an exporter holds its own locks (the SDK's collection lock, a
replay lock) and then takes one pool's lock, briefly, to copy its figures. A
pool never calls an exporter, so never holds its lock while waiting for
one. ``_lock`` here is a leaf: nothing is called while it is held.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ._logging import logger
from .stats import Figures

__all__ = ["Ticker", "flush_metrics", "merge", "open_pools", "read", "ticker", "track"]

#: How often the ticker replays histograms and writes multiprocess files (s).
TICK = 0.5

_lock = threading.Lock()
# Every pool's shell ever built and not yet collected (closed ones included:
# exporters skip them). Iterated only as a copy taken under _lock.
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
# Pools whose figures could not be read: logged at WARNING the first time only
# (exporters read every 0.5 s), at DEBUG after that.
_failed: weakref.WeakSet[Any] = weakref.WeakSet()
# Whether opentelemetry-api is importable: unknown (empty) until the first
# pool asks, then [True] or [False].
_otel_present: List[bool] = []


def track(shell: Any, meter_provider: Any = None) -> None:
    """Register a pool's shell (it has ``name``, ``core`` and ``figures()``).

    With opentelemetry-api installed, the pool also records to the meter
    ``pgreservoir`` of ``meter_provider`` (None: the global provider). Never
    raises for a metrics problem: that is logged, and the pool works on.
    """
    with _lock:
        _pools.add(shell)
    if meter_provider is None:
        if _otel_present == [False]:
            return
        try:
            import opentelemetry.metrics  # noqa: F401
        except ImportError:
            _otel_present[:] = [False]
            return
        _otel_present[:] = [True]
    try:
        from . import _otel

        _otel.bind(shell, meter_provider)
    except ImportError as exc:
        raise RuntimeError(
            f"pool {shell.name!r}: meter_provider= needs opentelemetry-api "
            f"(pip install 'pgreservoir[otel]'): {exc}"
        ) from None
    except Exception:
        logger.warning(
            "pool %r: could not register its OpenTelemetry metrics; the pool works on",
            shell.name,
            exc_info=True,
        )


def open_pools() -> List[Any]:
    """The shells of every pool not closed, in no particular order."""
    with _lock:
        shells = list(_pools)
    return [shell for shell in shells if not shell.core.closed]


def read(shell: Any) -> Optional[Figures]:
    """A pool's figures, or None (logged) if reading them failed: an exporter
    must never fail, nor make a pool fail, because of one pool."""
    try:
        figures: Figures = shell.figures()
    except Exception:
        first = shell not in _failed
        _failed.add(shell)
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "pool %r: reading its metrics failed%s",
            shell.name,
            "" if first else " again",
            exc_info=True,
        )
        return None
    return figures


def merge(figures: Iterable[Figures]) -> List[Figures]:
    """One Figures per pool name: pools that share a name are added up (a
    metric series is named by the pool's name alone)."""
    by_name: Dict[str, Figures] = {}
    for fig in figures:
        seen = by_name.get(fig.name)
        if seen is None:
            by_name[fig.name] = fig
            continue
        by_name[fig.name] = Figures(
            fig.name,
            *(
                _add(a, b)
                for a, b in zip(seen[1:], fig[1:])  # every field after the name
            ),
        )
    return list(by_name.values())


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would stay held in the child.
    global _lock  # noqa: PLW0603 (replaced, not shared: see above)
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, tuple):
        return tuple(x + y for x, y in zip(a, b))
    return a + b


class Ticker:
    """One daemon thread per process that runs the exporters' periodic jobs
    (every :data:`TICK` seconds). A job returns whether it had work (a live
    pool to serve); the thread ends once none has, and the next job added
    starts it again, so a process whose pools are gone keeps no thread. A job
    that raises is logged and runs again next time. After a fork the child
    starts its own thread if any job is registered."""

    def __init__(self) -> None:
        self._jobs: List[Callable[[], bool]] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0
        self._added = 0  # add() calls: a thread may end only if none came meanwhile
        self._failed: List[Callable[[], bool]] = []  # jobs that raised (logged once)

    def add(self, job: Callable[[], bool]) -> None:
        """Run ``job()`` every tick from now on (again, if it is there already)."""
        with self._lock:
            if job not in self._jobs:
                self._jobs.append(job)
            self._added += 1
        self._ensure()

    def remove(self, job: Callable[[], bool]) -> None:
        """Stop running ``job``."""
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def run_now(self) -> None:
        """Run every job now, in this thread."""
        for job in self._snapshot()[0]:
            self._run(job)

    @property
    def running(self) -> bool:
        """Whether this process's thread runs (for tests)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def _snapshot(self) -> Tuple[Tuple[Callable[[], bool], ...], int]:
        with self._lock:
            return tuple(self._jobs), self._added

    def _ensure(self) -> None:
        with self._lock:
            if self.running or not self._jobs:
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._loop, name="pgreservoir-metrics", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            time.sleep(TICK)
            jobs, added = self._snapshot()
            busy = [self._run(job) for job in jobs]
            with self._lock:
                if self._thread is not me:
                    return
                if not any(busy) and added == self._added:
                    self._thread = None
                    return

    def _run(self, job: Callable[[], bool]) -> bool:
        try:
            return bool(job())
        except Exception:
            first = job not in self._failed
            self._failed.append(job)
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "a metrics job failed%s; it runs again later",
                "" if first else " again",
                exc_info=True,
            )
            return True

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        if self._jobs:
            self._ensure()


#: The process's ticker (see :class:`Ticker`).
ticker = Ticker()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ticker._after_fork_in_child)


def flush_metrics() -> None:
    """Bring every exporter up to date now, in this thread: histogram values
    recorded since the last tick go to OpenTelemetry, multiprocess files are
    written. Exporters do it every 0.5 s by themselves; call this before
    reading an in-memory OpenTelemetry reader, or at the end of a short script."""
    ticker.run_now()
