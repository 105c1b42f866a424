"""The ``pgreservoir bench`` benchmark: pools side by side on a real server.

Modules: :mod:`.contenders` (how each pool is opened and driven),
:mod:`.runner` (the timed runs and their statistics), :mod:`.async_runner`
(the same runs with asyncio tasks), :mod:`.report` (table,
targets, JSON, plot), :mod:`.memory` (the tracemalloc check) and
:mod:`.progress` (the progress bar). The command line is in
:mod:`pgreservoir.cli`.
"""

from __future__ import annotations

from .async_runner import run_once_async
from .contenders import CONTENDERS, AsyncSession, Contender, Session, Target
from .runner import (
    WORKLOADS,
    BenchError,
    RunResult,
    Scenario,
    ScenarioResult,
    Summary,
    Workload,
    run_once,
    run_suite,
)

__all__ = [
    "CONTENDERS",
    "WORKLOADS",
    "AsyncSession",
    "BenchError",
    "Contender",
    "RunResult",
    "Scenario",
    "ScenarioResult",
    "Session",
    "Summary",
    "Target",
    "Workload",
    "run_once",
    "run_once_async",
    "run_suite",
]
