"""Presenting results: the table, the performance targets, JSON and a plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .runner import MIN_ROUNDS, ScenarioResult, Summary

__all__ = [
    "FAIRNESS_TARGET",
    "TargetCheck",
    "check_targets",
    "format_ms",
    "format_table",
    "format_targets",
    "largest_spread",
    "plot",
    "rounds_note",
]

#: Fairness (least-served / most-served thread) at or above which a pool counts as fair.
FAIRNESS_TARGET = 0.8

#: The fairness the write workload's target asks for.
WRITE_FAIRNESS_TARGET = 0.9

#: At many threads, the share of its 32-thread throughput pgreservoir keeps.
SCALING_TARGET = 0.8

#: The thread count the scaling target measures against.
SCALING_BASE = 32


@dataclass(frozen=True)
class TargetCheck:
    """One performance target and whether this run meets it (None: could not tell)."""

    target: str
    measured: str
    met: Optional[bool]

    def as_dict(self) -> Dict[str, Any]:
        return {"target": self.target, "measured": self.measured, "met": self.met}


# ---------------------------------------------------------------------------
# Number formatting
# ---------------------------------------------------------------------------


def format_ms(value: float) -> str:
    """Milliseconds with about three significant digits: 0.001, 8.47, 85.1, 1003."""
    if value == 0:
        return "0"
    if value < 0.01:
        return f"{value:.4f}"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _format_us(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:+,.0f}"
    if abs(value) >= 10:
        return f"{value:+.1f}"
    return f"{value:+.2f}"


def _format_ratio(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

_COLUMNS = (
    # (header, alignment)
    ("workload", "<"),
    ("contender", "<"),
    ("ops/s", ">"),
    ("spread", ">"),
    ("x ded", ">"),
    ("+us/op", ">"),
    ("wait ms: mean", ">"),
    ("p50", ">"),
    ("p99", ">"),
    ("max", ">"),
    ("fair", ">"),
    ("errors", ">"),
    ("retries", ">"),
    ("conns", ">"),
)

LEGEND = (
    "ops/s: operations per second (median of rounds); spread: how far the same "
    "contender's rounds were apart, (max - min) / median of their ops/s; x ded: ratio to "
    "the dedicated reference (one private connection per thread, as many threads as pool "
    "connections); "
    "+us/op: wall time per operation above dedicated; wait: time inside acquire "
    "(every operation, zero waits included); fair: least-served thread's operations / "
    "most-served thread's; errors: summed over rounds; retries: psycopg2.pool retries "
    "after \"connection pool exhausted\"; conns: peak server connections (sampled). "
    "async-*: asyncio tasks on one event loop instead of threads (tasks/connections), each "
    "pool against the dedicated reference of its driver (psycopg AsyncConnection or asyncpg)."
)


def _row(scenario: ScenarioResult, summary: Summary, first: bool) -> List[str]:
    label = summary.contender.label
    workload = scenario.scenario.workload.key if first else ""
    if scenario.scenario.workload.single_thread:
        unit = "task" if scenario.scenario.workload.is_async else "thread"
        shape = f"1 {unit}" if first else ""
    else:
        shape = f"{scenario.scenario.threads}/{scenario.scenario.size}" if first else ""
    name = f"{workload} {shape}".strip()
    if summary.failed is not None:
        return [name, label, "failed: " + summary.failed[:70]] + [""] * (len(_COLUMNS) - 3)
    return [
        name,
        label,
        f"{summary.ops_per_s:,.0f}",
        "-" if summary.spread is None else f"{summary.spread:.0%}",
        _format_ratio(summary.ratio_to_dedicated),
        _format_us(summary.overhead_us),
        format_ms(summary.wait_mean_ms),
        format_ms(summary.wait_p50_ms),
        format_ms(summary.wait_p99_ms),
        format_ms(summary.wait_max_ms),
        f"{summary.fairness:.2f}",
        str(summary.errors),
        f"{summary.retries:,}",
        "-" if summary.peak_connections is None else str(summary.peak_connections),
    ]


def format_table(results: Sequence[ScenarioResult]) -> str:
    """All scenarios in one plain-text table (scenarios separated by a rule)."""
    groups: List[List[List[str]]] = []
    for scenario in results:
        groups.append(
            [_row(scenario, summary, i == 0) for i, summary in enumerate(scenario.summaries)]
        )
    headers = [header for header, _ in _COLUMNS]
    widths = [len(h) for h in headers]
    for group in groups:
        for row in group:
            if row[2].startswith("failed: "):
                continue  # spans the numeric columns
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def render(cells: List[str]) -> str:
        if cells[2].startswith("failed: "):
            return f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]}"
        parts = []
        for cell, width, (_, align) in zip(cells, widths, _COLUMNS):
            parts.append(f"{cell:<{width}}" if align == "<" else f"{cell:>{width}}")
        return "  ".join(parts).rstrip()

    lines = [render(headers)]
    rule = "-" * len(lines[0])
    for group in groups:
        lines.append(rule)
        lines.extend(render(row) for row in group)
    return "\n".join(lines)


def largest_spread(results: Sequence[ScenarioResult]) -> Optional[str]:
    """A line naming the contender whose rounds differed most (None: one round)."""
    worst: Optional[Summary] = None
    where: Optional[ScenarioResult] = None
    for scenario in results:
        for summary in scenario.summaries:
            if summary.failed is None and summary.spread is not None and (
                worst is None or summary.spread > (worst.spread or 0.0)
            ):
                worst, where = summary, scenario
    if worst is None or where is None:
        return None
    assert worst.spread is not None
    low = min(run.ops_per_s for run in worst.runs if run.failed is None)
    high = max(run.ops_per_s for run in worst.runs if run.failed is None)
    return (
        f"largest spread between rounds: {worst.spread:.0%}, {worst.contender.label} in "
        f"{where.scenario.title} ({low:,.0f} to {high:,.0f} ops/s over "
        f"{worst.measured_rounds} rounds): differences smaller than a contender's spread "
        "are noise"
    )


def rounds_note(results: Sequence[ScenarioResult]) -> Optional[str]:
    """What the targets output says when they rest on fewer than MIN_ROUNDS rounds."""
    counts = [
        summary.measured_rounds
        for scenario in results
        for summary in scenario.summaries
        if summary.failed is None
    ]
    fewest = min(counts, default=MIN_ROUNDS)
    if fewest >= MIN_ROUNDS:
        return None
    return (
        f"  (judged on medians of {fewest} round{'s' * (fewest != 1)}: targets are to be "
        f"judged on the median of >= {MIN_ROUNDS} rounds, so read these as indicative; "
        f"run with --rounds {MIN_ROUNDS} or more)"
    )


# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------


def _find(results: Sequence[ScenarioResult], workload: str) -> Optional[ScenarioResult]:
    for scenario in results:
        if scenario.scenario.workload.key == workload:
            return scenario
    return None


def _all(results: Sequence[ScenarioResult], workload: str) -> List[ScenarioResult]:
    """Every scenario of ``workload``: one per thread (task) count."""
    return [s for s in results if s.scenario.workload.key == workload]


def _ours(scenario: ScenarioResult, driver: str = "psycopg2") -> List[Summary]:
    return [
        s
        for s in scenario.summaries
        if s.contender.kind == "pgreservoir"
        and s.contender.driver == driver
        # The targets are the defaults': not the unfair drop-in (see
        # _check_dropin), nor the strict line shown beside the default.
        # nor the metrics contender (compared with the default, by hand).
        and s.contender.key not in ("pgreservoir-dropin", "pgreservoir-fifo", "pgreservoir-otel")
        and s.failed is None
    ]


def _peers(scenario: ScenarioResult) -> List[Summary]:
    return [s for s in scenario.summaries if s.contender.kind == "peer" and s.failed is None]


def _shape(scenario: ScenarioResult) -> str:
    unit = "tasks" if scenario.scenario.workload.is_async else "threads"
    return f"{scenario.scenario.threads} {unit} on {scenario.scenario.size} connections"


def check_targets(
    results: Sequence[ScenarioResult], memory: Optional[Sequence[Any]] = None
) -> List[TargetCheck]:
    """Evaluate the performance targets on this run's figures.

    A target whose inputs did not run (workload or contender left out) is
    reported with ``met=None``. ``memory`` takes :class:`~.memory.MemoryResult`
    objects.
    """
    checks: List[TargetCheck] = []
    checks += _check_overhead(_find(results, "overhead"))
    for scenario in _all(results, "transaction"):
        checks += _check_transaction(scenario)
    for scenario in _all(results, "select"):
        checks += _check_select(scenario)
    checks += _check_scaling(_all(results, "select"))
    for scenario in _all(results, "write"):
        checks += _check_write(scenario)
    checks += _check_psycopg(results)
    checks += _check_dropin(results)
    checks += _check_async_overhead(_find(results, "async-overhead"))
    for workload in ("async-select", "async-transaction"):
        for scenario in _all(results, workload):
            checks += _check_async(scenario)
    for result in memory or ():
        checks.append(
            TargetCheck(
                f"memory: {result.label} does not grow over {result.checkouts:,} checkouts",
                f"traced memory {result.growth_bytes:+,} bytes after warm-up "
                f"(limit {result.limit_bytes:,})",
                result.ok,
            )
        )
    return checks


def _check_overhead(scenario: Optional[ScenarioResult]) -> List[TargetCheck]:
    if scenario is None:
        return []
    checks = []
    psycopg2_pool = scenario.get("psycopg2")
    others = [p for p in _peers(scenario) if p.contender.key != "psycopg2"]
    for ours in _ours(scenario):
        name = ours.contender.label
        if ours.overhead_us is None or psycopg2_pool is None or psycopg2_pool.overhead_us is None:
            checks.append(TargetCheck(
                f"overhead, 1 thread: {name} at most 1.5x psycopg2.pool's",
                "needs the psycopg2 and dedicated contenders", None))
            continue
        ratio = ours.overhead_us / psycopg2_pool.overhead_us if psycopg2_pool.overhead_us > 0 \
            else math.inf
        checks.append(TargetCheck(
            f"overhead, 1 thread: {name} at most 1.5x psycopg2.pool's",
            f"{ours.overhead_us:.2f} us vs {psycopg2_pool.overhead_us:.2f} us per get+put "
            f"= {ratio:.2f}x",
            ratio <= 1.5))
        measured = [p for p in others if p.overhead_us is not None]
        if measured:
            listing = ", ".join(f"{p.contender.label} {p.overhead_us:.2f}" for p in measured)
            checks.append(TargetCheck(
                f"overhead, 1 thread: {name} lower than every other pool",
                f"{ours.overhead_us:.2f} us vs {listing}",
                all(ours.overhead_us < p.overhead_us for p in measured if p.overhead_us)))
    return checks


def _check_transaction(scenario: Optional[ScenarioResult]) -> List[TargetCheck]:
    if scenario is None:
        return []
    checks = []
    where = f"transaction, {_shape(scenario)}"
    peers = _peers(scenario)
    for ours in _ours(scenario):
        name = ours.contender.label
        if ours.ratio_to_dedicated is None:
            checks.append(TargetCheck(f"{where}: {name} >= 0.90x dedicated",
                                      "needs the dedicated contender", None))
        else:
            checks.append(TargetCheck(
                f"{where}: {name} >= 0.90x dedicated",
                f"{ours.ratio_to_dedicated:.3f}x ({ours.ops_per_s:,.0f} ops/s)",
                ours.ratio_to_dedicated >= 0.90))
        if peers:
            best = max(peers, key=lambda p: p.ops_per_s)
            checks.append(TargetCheck(
                f"{where}: {name} faster than every peer",
                f"{ours.ops_per_s:,.0f} ops/s vs best peer {best.contender.label} "
                f"{best.ops_per_s:,.0f}",
                ours.ops_per_s > best.ops_per_s))
        checks.append(TargetCheck(
            f"{where}: {name} fairness >= {FAIRNESS_TARGET}",
            f"{ours.fairness:.3f}", ours.fairness >= FAIRNESS_TARGET))
        if ours.wait_mean_ms > 0:
            spread = ours.wait_p99_ms / ours.wait_mean_ms
            checks.append(TargetCheck(
                f"{where}: {name} p99 wait within 3x the mean wait",
                f"p99 {format_ms(ours.wait_p99_ms)} ms / mean "
                f"{format_ms(ours.wait_mean_ms)} ms = {spread:.2f}x",
                spread <= 3.0))
    return checks


def _check_select(scenario: Optional[ScenarioResult]) -> List[TargetCheck]:
    if scenario is None:
        return []
    checks = []
    where = f"select, {_shape(scenario)}"
    peers = [p for p in _peers(scenario) if not p.contender.is_async]
    unfair = [p for p in peers if p.fairness < FAIRNESS_TARGET]
    psycopg_pool = scenario.get("psycopg_pool")
    for ours in _ours(scenario):
        name = ours.contender.label
        if unfair:
            best = max(unfair, key=lambda p: p.ops_per_s)
            checks.append(TargetCheck(
                f"{where}: {name} at least the best unfair peer's throughput, "
                f"fairness >= {FAIRNESS_TARGET}",
                f"{ours.ops_per_s:,.0f} ops/s (fairness {ours.fairness:.2f}) vs "
                f"{best.contender.label} {best.ops_per_s:,.0f} (fairness {best.fairness:.2f})",
                ours.ops_per_s >= best.ops_per_s and ours.fairness >= FAIRNESS_TARGET))
        else:
            checks.append(TargetCheck(
                f"{where}: {name} at least the best unfair peer's throughput",
                "no unfair peer ran", None))
        checks.append(_at_least_every_peer(where, ours, peers, FAIRNESS_TARGET))
        if psycopg_pool is not None and psycopg_pool.ops_per_s > 0:
            ratio = ours.ops_per_s / psycopg_pool.ops_per_s
            checks.append(TargetCheck(
                f"{where}: {name} >= 2x psycopg_pool's throughput",
                f"{ours.ops_per_s:,.0f} vs {psycopg_pool.ops_per_s:,.0f} ops/s = {ratio:.2f}x",
                ratio >= 2.0))
        else:
            checks.append(TargetCheck(
                f"{where}: {name} >= 2x psycopg_pool's throughput",
                "psycopg_pool did not run (pip install psycopg-pool 'psycopg[binary]')", None))
    return checks


def _at_least_every_peer(
    where: str, ours: Summary, peers: Sequence[Summary], fairness: float
) -> TargetCheck:
    """Ours at least the best peer's throughput (fair or not), itself fair."""
    target = (f"{where}: {ours.contender.label} at least every peer's throughput, "
              f"fairness >= {fairness}")
    if not peers:
        return TargetCheck(target, "no peer ran", None)
    best = max(peers, key=lambda p: p.ops_per_s)
    return TargetCheck(
        target,
        f"{ours.ops_per_s:,.0f} ops/s (fairness {ours.fairness:.2f}) vs best peer "
        f"{best.contender.label} {best.ops_per_s:,.0f} (fairness {best.fairness:.2f})",
        ours.ops_per_s >= best.ops_per_s and ours.fairness >= fairness)


def _check_scaling(scenarios: Sequence[ScenarioResult]) -> List[TargetCheck]:
    """At each thread count above SCALING_BASE, pgreservoir keeps SCALING_TARGET
    of its SCALING_BASE-thread throughput (the work is bounded by the
    connections, so the ideal is flat)."""
    base = next((s for s in scenarios if s.scenario.threads == SCALING_BASE), None)
    if base is None:
        return []
    checks = []
    for scenario in sorted(scenarios, key=lambda s: s.scenario.threads):
        if scenario.scenario.threads <= SCALING_BASE:
            continue
        for ours in _ours(scenario):
            before = base.get(ours.contender.key)
            target = (f"select, {_shape(scenario)}: {ours.contender.label} keeps >= "
                      f"{SCALING_TARGET}x its {SCALING_BASE}-thread throughput")
            if before is None or before.ops_per_s <= 0:
                checks.append(TargetCheck(target, f"did not run at {SCALING_BASE} threads",
                                          None))
                continue
            ratio = ours.ops_per_s / before.ops_per_s
            checks.append(TargetCheck(
                target,
                f"{ours.ops_per_s:,.0f} vs {before.ops_per_s:,.0f} ops/s = {ratio:.2f}x",
                ratio >= SCALING_TARGET))
    return checks


def _check_write(scenario: ScenarioResult) -> List[TargetCheck]:
    """The short write transaction: at least every peer, fairness >= 0.9."""
    where = f"write, {_shape(scenario)}"
    peers = [p for p in _peers(scenario) if not p.contender.is_async]
    return [_at_least_every_peer(where, ours, peers, WRITE_FAIRNESS_TARGET)
            for ours in _ours(scenario)]


def _check_psycopg(results: Sequence[ScenarioResult]) -> List[TargetCheck]:
    """pgreservoir on psycopg 3 against psycopg_pool, each against dedicated psycopg 3."""
    checks: List[TargetCheck] = []
    for scenario in results:
        psycopg_pool = scenario.get("psycopg_pool")
        workload = scenario.scenario.workload.key
        if workload == "checkout":
            continue
        for ours in _ours(scenario, "psycopg"):
            name = ours.contender.label
            if psycopg_pool is None:
                checks.append(TargetCheck(f"{workload}: {name} vs psycopg_pool",
                                          "psycopg_pool did not run", None))
                continue
            if workload == "overhead":
                if ours.overhead_us is None or psycopg_pool.overhead_us is None:
                    checks.append(TargetCheck(f"overhead, 1 thread: {name} below psycopg_pool's",
                                              "needs the dedicated-psycopg contender", None))
                    continue
                checks.append(TargetCheck(
                    f"overhead, 1 thread: {name} below psycopg_pool's",
                    f"{ours.overhead_us:.2f} us vs {psycopg_pool.overhead_us:.2f} us per get+put"
                    f" = {ours.overhead_us / psycopg_pool.overhead_us:.2f}x",
                    ours.overhead_us < psycopg_pool.overhead_us))
                continue
            where = f"{workload}, {_shape(scenario)}"
            ratio = ours.ops_per_s / psycopg_pool.ops_per_s if psycopg_pool.ops_per_s else math.inf
            to_dedicated = (
                f", {ours.ratio_to_dedicated:.3f}x dedicated psycopg 3"
                if ours.ratio_to_dedicated is not None else ""
            )
            checks.append(TargetCheck(
                f"{where}: {name} faster than psycopg_pool, fairness >= {FAIRNESS_TARGET}",
                f"{ours.ops_per_s:,.0f} vs {psycopg_pool.ops_per_s:,.0f} ops/s = {ratio:.2f}x"
                f"{to_dedicated} (fairness {ours.fairness:.2f})",
                ratio > 1.0 and ours.fairness >= FAIRNESS_TARGET))
    return checks


def _check_dropin(results: Sequence[ScenarioResult]) -> List[TargetCheck]:
    """The drop-in as an import swap leaves it (no waiting), under psycopg2's
    users' retry loop, against psycopg2.pool under the same loop."""
    checks: List[TargetCheck] = []
    for scenario in results:
        workload = scenario.scenario.workload.key
        dropin = scenario.get("pgreservoir-dropin")
        psycopg2_pool = scenario.get("psycopg2")
        if workload not in ("select", "transaction") or dropin is None:
            continue
        where = f"{workload}, {_shape(scenario)}"
        if psycopg2_pool is None or psycopg2_pool.ops_per_s <= 0:
            checks.append(TargetCheck(f"{where}: the drop-in at psycopg2's defaults "
                                      "vs psycopg2.pool", "psycopg2 did not run", None))
            continue
        ratio = dropin.ops_per_s / psycopg2_pool.ops_per_s
        checks.append(TargetCheck(
            f"{where}: the drop-in at psycopg2's defaults, retry loop, at least "
            "psycopg2.pool's throughput",
            f"{dropin.ops_per_s:,.0f} vs {psycopg2_pool.ops_per_s:,.0f} ops/s = {ratio:.2f}x",
            ratio >= 1.0))
    return checks


# The asyncio pools: pgreservoir's against psycopg_pool's (same driver) and
# asyncpg's (its own driver, so compared through its ratio to its own
# dedicated connections).


def _ours_async(scenario: ScenarioResult) -> List[Summary]:
    return [
        s
        for s in scenario.summaries
        if s.contender.kind == "pgreservoir" and s.contender.is_async and s.failed is None
    ]


def _check_async_overhead(scenario: Optional[ScenarioResult]) -> List[TargetCheck]:
    """The lowest per-checkout cost of the asyncio pools, each above its dedicated loop."""
    if scenario is None:
        return []
    checks = []
    others = [p for p in _peers(scenario) if p.contender.is_async]
    for ours in _ours_async(scenario):
        target = f"async-overhead, 1 task: {ours.contender.label} the lowest cost per checkout " \
                 "of the asyncio pools"
        measured = [p for p in others if p.overhead_us is not None]
        if ours.overhead_us is None or not measured:
            checks.append(TargetCheck(
                target, "needs the dedicated-async contender and an asyncio peer "
                "(psycopg_pool-async or asyncpg, with dedicated-asyncpg)", None))
            continue
        listing = ", ".join(f"{p.contender.label} {p.overhead_us:.2f}" for p in measured)
        checks.append(TargetCheck(
            target,
            f"{ours.overhead_us:.2f} us per get+put vs {listing}",
            all(ours.overhead_us < p.overhead_us for p in measured if p.overhead_us is not None)))
    return checks


def _check_async(scenario: Optional[ScenarioResult]) -> List[TargetCheck]:
    """Throughput against psycopg_pool's, ratio to dedicated against asyncpg's, fairness."""
    if scenario is None:
        return []
    checks = []
    where = f"{scenario.scenario.workload.key}, {_shape(scenario)}"
    psycopg_pool = scenario.get("psycopg_pool-async")
    asyncpg = scenario.get("asyncpg")
    for ours in _ours_async(scenario):
        name = ours.contender.label
        target = f"{where}: {name} throughput at least psycopg_pool (asyncio)'s"
        if psycopg_pool is None:
            checks.append(TargetCheck(target, "psycopg_pool-async did not run", None))
        else:
            ratio = (ours.ops_per_s / psycopg_pool.ops_per_s if psycopg_pool.ops_per_s
                     else math.inf)
            checks.append(TargetCheck(
                target,
                f"{ours.ops_per_s:,.0f} vs {psycopg_pool.ops_per_s:,.0f} ops/s = {ratio:.2f}x",
                ours.ops_per_s >= psycopg_pool.ops_per_s))
        target = f"{where}: {name} x dedicated at least asyncpg's x its dedicated"
        if ours.ratio_to_dedicated is None:
            checks.append(TargetCheck(target, "needs the dedicated-async contender", None))
        elif asyncpg is None or asyncpg.ratio_to_dedicated is None:
            checks.append(TargetCheck(
                target, "needs the asyncpg and dedicated-asyncpg contenders", None))
        else:
            checks.append(TargetCheck(
                target,
                f"{ours.ratio_to_dedicated:.3f}x vs asyncpg {asyncpg.ratio_to_dedicated:.3f}x",
                ours.ratio_to_dedicated >= asyncpg.ratio_to_dedicated))
        checks.append(TargetCheck(
            f"{where}: {name} fairness >= {FAIRNESS_TARGET}",
            f"{ours.fairness:.3f}", ours.fairness >= FAIRNESS_TARGET))
    return checks


def format_targets(checks: Sequence[TargetCheck], note: Optional[str] = None) -> str:
    """One line per target: ``[met]``, ``[NOT MET]`` or ``[n/a]``, the target, the
    figures; ``note`` first (see :func:`rounds_note`)."""
    lines = [] if note is None else [note]
    for check in checks:
        mark = {True: "[met]    ", False: "[NOT MET]", None: "[n/a]    "}[check.met]
        lines.append(f"  {mark} {check.target}: {check.measured}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------


def plot(results: Sequence[ScenarioResult], path: str, title: str) -> None:
    """Throughput (with fairness) and acquisition waits per contender, one column
    per scenario, as a PNG."""
    import importlib

    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")

    count = len(results)
    figure, axes = pyplot.subplots(
        2, count, figsize=(4.6 * count + 1, 8.5), squeeze=False, constrained_layout=True
    )
    for column, scenario in enumerate(results):
        good = [s for s in scenario.summaries if s.failed is None]
        labels = [s.contender.label for s in good]
        colours = [
            {"pgreservoir": "tab:green", "peer": "tab:blue"}.get(s.contender.kind, "tab:gray")
            for s in good
        ]
        top = axes[0][column]
        values = [s.ops_per_s for s in good]
        top.barh(labels, values, color=colours)
        # The dedicated reference can dwarf every pool (checkout-only
        # workloads): cut the axis and print the value on the clipped bar.
        pools = [s.ops_per_s for s in good if s.contender.kind != "reference"]
        limit = max(values, default=1.0)
        if pools and limit > 3 * max(pools):
            limit = 1.35 * max(pools)
        top.set_xlim(0, limit * 1.25)
        for index, summary in enumerate(good):
            text = f"{summary.ops_per_s:,.0f}"
            if summary.contender.kind != "reference" or summary.contender.key == "unpooled":
                text += f"  fair {summary.fairness:.2f}"
            top.text(min(summary.ops_per_s, limit), index, " " + text, va="center",
                     fontsize=7, clip_on=False)
        top.set_title(scenario.scenario.title, fontsize=9)
        top.set_xlabel("operations/s (median of rounds)")
        top.invert_yaxis()
        bottom = axes[1][column]
        positions = list(range(len(good)))
        height = 0.27
        series = (("p50", "wait_p50_ms", "tab:olive"), ("p99", "wait_p99_ms", "tab:orange"),
                  ("max", "wait_max_ms", "tab:red"))
        for offset, (name, attribute, colour) in zip((-height, 0.0, height), series):
            bottom.barh([p + offset for p in positions],
                        [max(getattr(s, attribute), 1e-4) for s in good],
                        height, label=name, color=colour)
        bottom.set_yticks(positions)
        bottom.set_yticklabels(labels)
        bottom.set_xscale("log")
        bottom.set_xlabel("acquisition wait, ms (log)")
        bottom.invert_yaxis()
        bottom.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
