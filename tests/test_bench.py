"""``pgreservoir bench``: the command end to end, and a regression guard.

Nothing here asserts a wall-clock time. The guard compares figures within one
run and counts operations; its runs end after a fixed number of operations (a
shared ticket counter), not after a duration.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import pytest

import pgreservoir
from pgreservoir._bench import (
    CONTENDERS,
    WORKLOADS,
    AsyncSession,
    BenchError,
    Contender,
    Scenario,
    Target,
    async_runner,
    run_once,
    run_once_async,
)
from pgreservoir._bench.command import BenchOptions, bench, select_contenders
from pgreservoir._bench.contenders import DEDICATED
from pgreservoir._bench.report import check_targets, format_ms, format_table
from pgreservoir._bench.runner import (
    ConnectionSampler,
    RunResult,
    percentile,
    summarize,
    summarize_scenario,
)
from pgreservoir.cli import main

BY_KEY = {c.key: c for c in CONTENDERS}
# pgreservoir's pools present in this checkout (ThreadedConnectionPool lives in pool.py).
OURS = [c for c in CONTENDERS if c.kind == "pgreservoir" and c.missing() is None and c.in_default]
# Run only when named (pgreservoir with metrics on): the guard tests run them too.
NAMED_ONLY = [c for c in CONTENDERS if not c.in_default and c.missing() is None]
# The drop-in at psycopg2's defaults does not wait: it is unfair and retried
# by design, like psycopg2.pool (the bench compares the two).
DROPIN = "pgreservoir-dropin"
FAIR = [c for c in OURS if c.key != DROPIN]
OURS_THREADS = [c for c in FAIR if not c.is_async]
OURS_ASYNC = [c for c in OURS if c.is_async]
# Contenders every environment has: psycopg2 is the driver.
ALWAYS = ("pgreservoir", "psycopg2", "unpooled", "dedicated")
# The asyncio ones the dev environment has (psycopg 3 and psycopg_pool; asyncpg
# comes with the bench extra).
ALWAYS_ASYNC = ("pgreservoir-async", "psycopg_pool-async", "dedicated-async")
ASYNC_WORKLOADS = [key for key, w in WORKLOADS.items() if w.is_async]
SRC = str(Path(pgreservoir.__file__).resolve().parent.parent)


def _summaries(scenario: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {row["contender"]: row for row in scenario["results"]}


# ---------------------------------------------------------------------------
# The command, end to end
# ---------------------------------------------------------------------------


def test_quick_run_starts_its_own_server_and_reports(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    path = [SRC, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    done = subprocess.run(
        [sys.executable, "-m", "pgreservoir", "bench", "--quick", "--json", str(report),
         "--memory", "--memory-checkouts", "20000"],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "throwaway PostgreSQL" in done.stderr

    # One table: a header, then one row per contender in every workload.
    table = done.stdout
    for column in ("ops/s", "x ded", "wait ms: mean", "p99", "fair", "retries", "conns"):
        assert column in table
    for workload in WORKLOADS:
        assert workload in table
    for key in ALWAYS + ALWAYS_ASYNC:
        assert BY_KEY[key].label in table
    # The asyncio workloads, after the thread ones, with their own task count.
    assert table.index("async-overhead 1 task") > table.index("transaction 32/8")
    for key in ("async-checkout", "async-select", "async-transaction"):
        assert f"{key} 256/8" in table
    assert "Targets:" in table
    assert "memory check (tracemalloc)" in table

    document = json.loads(report.read_text())
    assert document["settings"]["threads"] == 32
    assert document["settings"]["tasks"] == 256
    assert document["settings"]["size"] == 8
    assert [s["workload"] for s in document["scenarios"]] == list(WORKLOADS)
    assert document["workloads_left_out"] == []
    ran = set(document["settings"]["contenders"])
    assert set(ALWAYS + ALWAYS_ASYNC) <= ran
    assert {c.key for c in OURS} <= ran
    assert "pgreservoir-otel" not in ran  # run only when named
    for scenario in document["scenarios"]:
        rows = _summaries(scenario)
        asyncio_workload = scenario["asyncio"]
        assert asyncio_workload == (scenario["workload"] in ASYNC_WORKLOADS)
        # Thread contenders run the thread workloads, asyncio ones the others.
        assert set(rows) == {key for key in ran if BY_KEY[key].is_async == asyncio_workload}
        single = scenario["workload"] in ("overhead", "async-overhead")
        workers = 256 if asyncio_workload else 32
        assert scenario["threads"] == (1 if single else workers)
        # Each driver's dedicated reference is its contenders' 1.0.
        for reference in set(DEDICATED.values()) & set(rows):
            assert rows[reference]["ratio_to_dedicated"] == 1.0
        for key, row in rows.items():
            assert row["failed"] is None, (key, row["failed"])
            assert row["ops_per_s"] > 0, key
            assert row["ratio_to_dedicated"] is not None, key
            assert 0.0 <= row["fairness"] <= 1.0
            wait = row["wait_ms"]
            assert 0.0 <= wait["p50"] <= wait["p99"] <= wait["max"], (key, wait)
            assert len(row["rounds"]) == 1
            threads = row["rounds"][0]["threads"]
            expected = 1 if single else (8 if BY_KEY[key].per_thread else workers)
            assert threads == expected, (key, threads)
            assert len(row["rounds"][0]["thread_ops"]) == expected, key
            if key != "unpooled":
                # Pools never go past their size (the sampler may miss none of it).
                assert 1 <= row["peak_server_connections"] <= 8, (key, row)
        for ours in OURS:
            if ours.is_async == asyncio_workload:
                assert rows[ours.key]["errors"] == 0, rows[ours.key]["rounds"]
                if ours.key != DROPIN:
                    assert rows[ours.key]["retries"] == 0
    assert document["targets"], "the default workloads evaluate the targets"
    assert all(t["met"] in (True, False, None) for t in document["targets"])
    memory = {m["contender"]: m for m in document["memory"]}
    assert set(memory) == {c.key for c in OURS}
    for result in memory.values():
        assert result["checkouts"] == 20000
        assert result["ok"] is True, result


def test_the_metrics_contender_runs_when_named() -> None:
    # pgreservoir with an OpenTelemetry SDK: metrics on, against "pgreservoir", off.
    assert not BY_KEY["pgreservoir-otel"].in_default
    chosen, _ = select_contenders(["pgreservoir", "pgreservoir-otel"])
    assert [c.key for c in chosen] == ["pgreservoir", "pgreservoir-otel"]
    assert "pgreservoir-otel" not in {c.key for c in select_contenders(None)[0]}


def test_list_names_every_contender(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for contender in CONTENDERS:
        assert contender.key in out


def test_bad_options_are_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--contenders", "nosuchpool", "--dsn", "host=/nonexistent"]) == 2
    assert "unknown contender 'nosuchpool'" in capsys.readouterr().err
    assert main(["bench", "--workloads", "nosuch", "--dsn", "host=/nonexistent"]) == 2
    assert "unknown workload 'nosuch'" in capsys.readouterr().err
    assert main(["bench", "--ops", "10", "--duration", "1", "--dsn", "x"]) == 2
    assert "not both" in capsys.readouterr().err
    # Thread contenders do not run the asyncio workloads, nor the reverse.
    assert main(["bench", "--workloads", "async-select", "--contenders", "pgreservoir",
                 "--dsn", "host=/nonexistent"]) == 2
    assert "none of the contenders runs these workloads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--threads", "0"])


def test_plot_is_drawn_or_refused_clearly(
    postgres_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "bench.png"
    status = main(["bench", "--dsn", postgres_dsn, "--workloads", "select", "--contenders",
                   "pgreservoir,dedicated", "--threads", "4", "--size", "2", "--ops", "200",
                   "--no-progress", "--plot", str(picture)])
    if importlib.util.find_spec("matplotlib") is not None:
        assert status == 0
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert status == 2
        assert "--plot needs matplotlib" in capsys.readouterr().err
        assert not picture.exists()


# ---------------------------------------------------------------------------
# Regression guard: ratios and counts within one run, never times
# ---------------------------------------------------------------------------

CONTENTION = Scenario(WORKLOADS["select"], threads=16, size=4)
# Enough operations that a thread descheduled for a while by a loaded machine
# does not decide the fairness figure alone (3,000 gave 0.48 at load 6-9).
BUDGET = 6000


@pytest.fixture
def sampler(postgres_dsn: str) -> Iterator[ConnectionSampler]:
    counter = ConnectionSampler(postgres_dsn)
    yield counter
    counter.close()


@pytest.mark.parametrize("contender", OURS_THREADS, ids=[c.key for c in OURS_THREADS])
def test_guard_pgreservoir_serves_every_thread_fairly(
    contender: Any, postgres_dsn: str, sampler: ConnectionSampler
) -> None:
    run = run_once(contender, CONTENTION, Target(postgres_dsn, f"guard-{contender.key}"),
                   duration=None, ops=BUDGET, sampler=sampler)
    assert run.failed is None
    assert run.errors == 0, run.first_error
    assert run.ops == BUDGET  # every ticket became exactly one operation
    assert len(run.thread_ops) == 16
    assert min(run.thread_ops) > 0, run.thread_ops  # nobody starved
    assert run.fairness >= 0.5, run.thread_ops
    assert run.peak_connections is not None
    assert run.peak_connections <= 4


@pytest.mark.parametrize("contender", NAMED_ONLY, ids=[c.key for c in NAMED_ONLY])
def test_guard_the_named_only_contenders_run(
    contender: Any, postgres_dsn: str, sampler: ConnectionSampler
) -> None:
    # (Not held to the fairness bound: its exporter thread competes for the
    # GIL in a 0.2 s run, which is what it is there to show.)
    run = run_once(contender, CONTENTION, Target(postgres_dsn, f"guard-{contender.key}"),
                   duration=None, ops=BUDGET, sampler=sampler)
    assert run.failed is None
    assert run.errors == 0, run.first_error
    assert run.ops == BUDGET
    assert min(run.thread_ops) > 0, run.thread_ops
    assert run.peak_connections is not None
    assert run.peak_connections <= 4


ASYNC_CONTENTION = Scenario(WORKLOADS["async-select"], threads=64, size=4)


@pytest.mark.parametrize("contender", OURS_ASYNC, ids=[c.key for c in OURS_ASYNC])
def test_guard_pgreservoir_async_serves_every_task_fairly(
    contender: Any, postgres_dsn: str, sampler: ConnectionSampler
) -> None:
    run = run_once(contender, ASYNC_CONTENTION, Target(postgres_dsn, f"guard-{contender.key}"),
                   duration=None, ops=BUDGET, sampler=sampler)
    assert run.failed is None
    assert run.errors == 0, run.first_error
    assert run.ops == BUDGET
    assert len(run.thread_ops) == 64
    assert min(run.thread_ops) > 0, run.thread_ops
    assert run.fairness >= 0.5, run.thread_ops
    assert run.peak_connections is not None
    assert run.peak_connections <= 4


def test_the_tasks_option_and_a_driver_s_dedicated_reference(
    postgres_dsn: str, tmp_path: Path
) -> None:
    report = tmp_path / "bench.json"
    options = BenchOptions(
        dsn=postgres_dsn, tasks=12, size=3, ops=300, rounds=1,
        workloads=["async-overhead", "async-select"],
        contenders=["pgreservoir-async", "dedicated-async"],
        progress=False, json_path=str(report),
    )
    out, err = io.StringIO(), io.StringIO()
    assert bench(options, out, err) == 0
    assert "asyncio: 12 tasks on 3 connections" in out.getvalue()
    document = json.loads(report.read_text())
    assert document["settings"]["tasks"] == 12
    overhead, select = document["scenarios"]
    assert (overhead["threads"], select["threads"]) == (1, 12)
    rows = _summaries(select)
    assert [r["threads"] for r in rows["pgreservoir-async"]["rounds"]] == [12]
    assert [r["threads"] for r in rows["dedicated-async"]["rounds"]] == [3]
    assert rows["pgreservoir-async"]["ratio_to_dedicated"] is not None
    assert rows["pgreservoir-async"]["rounds"][0]["ops"] == 300


def test_guard_psycopg2_pool_starves_and_retries_where_pgreservoir_does_not(
    postgres_dsn: str,
) -> None:
    ours = run_once(BY_KEY["pgreservoir"], CONTENTION, Target(postgres_dsn, "guard-ours"),
                    duration=None, ops=BUDGET)
    theirs = run_once(BY_KEY["psycopg2"], CONTENTION, Target(postgres_dsn, "guard-theirs"),
                      duration=None, ops=BUDGET)
    assert theirs.ops == BUDGET
    assert theirs.errors == 0
    # "connection pool exhausted" is raised at once; the users' loop retries.
    assert theirs.retries > 0
    assert ours.retries == 0
    assert ours.fairness >= theirs.fairness, (ours.thread_ops, theirs.thread_ops)


# ---------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 0.50) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) == 0.0


def _run(key: str, round_no: int, ops: int, thread_ops: List[int], **extra: Any) -> RunResult:
    run = RunResult(key, round_no, len(thread_ops), ops=ops, elapsed=1.0,
                    thread_ops=thread_ops)
    for name, value in extra.items():
        setattr(run, name, value)
    return run


def test_summaries_take_medians_sum_errors_and_compare_to_dedicated() -> None:
    dedicated = summarize(BY_KEY["dedicated"], [
        _run("dedicated", 0, 1000, [250] * 4),
        _run("dedicated", 1, 1200, [300] * 4),
        _run("dedicated", 2, 800, [200] * 4),
    ], None)
    assert dedicated.ops_per_s == 1000
    ours = summarize(BY_KEY["pgreservoir"], [
        _run("pgreservoir", 0, 900, [100, 200], errors=1, wait_p99_ms=3.0),
        _run("pgreservoir", 1, 500, [250, 250], wait_p99_ms=1.0),
        _run("pgreservoir", 2, 700, [300, 400], errors=2, wait_p99_ms=2.0),
    ], dedicated)
    assert ours.ops_per_s == 700
    assert ours.ratio_to_dedicated == pytest.approx(0.7)
    assert ours.overhead_us == pytest.approx(1e6 / 700 - 1e6 / 1000)
    assert ours.fairness == 0.75  # median of 0.5, 1.0, 0.75
    assert (ours.least_served_ops, ours.most_served_ops) == (300, 400)  # median round
    assert ours.errors == 3
    assert ours.wait_p99_ms == 2.0
    failed = summarize(BY_KEY["psycopg2"], [RunResult("psycopg2", 0, 0, failed="boom")],
                       dedicated)
    assert failed.failed == "boom"


def test_table_and_targets_from_summaries() -> None:
    from pgreservoir._bench.runner import ScenarioResult

    scenario = Scenario(WORKLOADS["transaction"], 32, 8)
    dedicated = summarize(BY_KEY["dedicated"], [_run("dedicated", 0, 3000, [375] * 8)], None)
    ours = summarize(BY_KEY["pgreservoir"], [_run(
        "pgreservoir", 0, 2800, [87] * 31 + [100], wait_mean_ms=9.0, wait_p99_ms=12.0)],
        dedicated)
    peer = summarize(BY_KEY["psycopg2"], [_run("psycopg2", 0, 2900, [0] * 24 + [362] * 8)],
                     dedicated)
    broken = summarize(BY_KEY["sqlalchemy"], [RunResult("sqlalchemy", 0, 0, failed="nope")],
                       dedicated)
    result = ScenarioResult(scenario, [ours, peer, broken, dedicated])
    table = format_table([result])
    assert "transaction 32/8" in table
    assert "failed: nope" in table
    checks = {c.target: c for c in check_targets([result])}
    where = "transaction, 32 threads on 8 connections: pgreservoir"
    assert checks[f"{where} >= 0.90x dedicated"].met is True  # 0.933
    assert checks[f"{where} faster than every peer"].met is False  # 2800 < 2900
    assert checks[f"{where} fairness >= 0.8"].met is True  # 0.87
    assert checks[f"{where} p99 wait within 3x the mean wait"].met is True
    assert format_ms(0.0) == "0"
    assert format_ms(8.474) == "8.47"
    assert format_ms(1003.2) == "1003"


def _async_run(key: str, ops: int, tasks: int) -> RunResult:
    return _run(key, 0, ops, [ops // tasks] * tasks)


def test_each_driver_is_compared_with_its_own_dedicated_reference() -> None:
    # One dedicated reference per driver, and every contender's driver has one.
    assert DEDICATED["psycopg-async"] == "dedicated-async"
    assert DEDICATED["asyncpg"] == "dedicated-asyncpg"
    assert {c.driver for c in CONTENDERS} == set(DEDICATED)
    for driver, key in DEDICATED.items():
        assert BY_KEY[key].driver == driver
        assert BY_KEY[key].per_thread
    keys = ["pgreservoir-async", "psycopg_pool-async", "asyncpg", "dedicated-async",
            "dedicated-asyncpg"]
    runs = {
        "pgreservoir-async": [_async_run("pgreservoir-async", 8000, 256)],
        "psycopg_pool-async": [_async_run("psycopg_pool-async", 6000, 256)],
        "asyncpg": [_async_run("asyncpg", 9000, 256)],
        "dedicated-async": [_async_run("dedicated-async", 10000, 8)],
        "dedicated-asyncpg": [_async_run("dedicated-asyncpg", 20000, 8)],
    }
    result = summarize_scenario(Scenario(WORKLOADS["async-select"], 256, 8),
                                [BY_KEY[k] for k in keys], runs)
    ratios = {s.contender.key: s.ratio_to_dedicated for s in result.summaries}
    assert ratios == pytest.approx({
        "pgreservoir-async": 0.8, "psycopg_pool-async": 0.6, "asyncpg": 0.45,
        "dedicated-async": 1.0, "dedicated-asyncpg": 1.0,
    })
    # Without its reference, a contender has no ratio (and is not compared
    # with another driver's).
    del runs["dedicated-asyncpg"]
    result = summarize_scenario(Scenario(WORKLOADS["async-select"], 256, 8),
                                [BY_KEY[k] for k in keys[:-1]], runs)
    assert result.get("asyncpg") is not None
    assert result.get("asyncpg").ratio_to_dedicated is None  # type: ignore[union-attr]
    assert result.get("pgreservoir-async").ratio_to_dedicated == pytest.approx(0.8)  # type: ignore[union-attr]


def _async_scenario(workload: str, tasks: int, figures: Dict[str, Sequence[float]]) -> Any:
    """A ScenarioResult from (ops/s, fairness) per contender, references included."""
    runs = {}
    for key, (ops, fairness) in figures.items():
        workers = 8 if BY_KEY[key].per_thread else tasks
        most = 100
        thread_ops = [most] * (workers - 1) + [round(most * fairness)]
        runs[key] = [_run(key, 0, int(ops), thread_ops)]
    contenders = [BY_KEY[key] for key in figures]
    return summarize_scenario(Scenario(WORKLOADS[workload], tasks, 8), contenders, runs)


def test_asyncio_targets_from_summaries() -> None:
    where = "256 tasks on 8 connections: pgreservoir (asyncio)"
    select = _async_scenario("async-select", 256, {
        "pgreservoir-async": (8000, 0.9), "psycopg_pool-async": (7000, 0.9),
        "asyncpg": (9000, 0.0), "dedicated-async": (10000, 1), "dedicated-asyncpg": (20000, 1),
    })
    transaction = _async_scenario("async-transaction", 256, {
        "pgreservoir-async": (2000, 0.5), "psycopg_pool-async": (2500, 0.9),
        "asyncpg": (2900, 0.0), "dedicated-async": (2500, 1), "dedicated-asyncpg": (3000, 1),
    })
    overhead = _async_scenario("async-overhead", 1, {
        "pgreservoir-async": (250_000, 1), "psycopg_pool-async": (200_000, 1),
        "asyncpg": (7_000, 1), "dedicated-async": (2_000_000, 1),
        "dedicated-asyncpg": (2_000_000, 1),
    })
    checks = {c.target: c.met for c in check_targets([overhead, select, transaction])}
    assert checks["async-overhead, 1 task: pgreservoir (asyncio) the lowest cost per checkout "
                  "of the asyncio pools"] is True  # 3.5 us vs 4.5 and 142
    assert checks[f"async-select, {where} throughput at least psycopg_pool (asyncio)'s"] is True
    assert checks[f"async-select, {where} x dedicated at least asyncpg's x its dedicated"] \
        is True  # 0.80 vs 0.45
    assert checks[f"async-select, {where} fairness >= 0.8"] is True
    assert checks[f"async-transaction, {where} throughput at least psycopg_pool (asyncio)'s"] \
        is False
    assert checks[f"async-transaction, {where} x dedicated at least asyncpg's x its "
                  "dedicated"] is False  # 0.80 vs 0.97
    assert checks[f"async-transaction, {where} fairness >= 0.8"] is False
    # The thread targets are not evaluated on asyncio scenarios.
    assert all(t.startswith("async-") for t in checks)

    table = format_table([overhead, select])
    assert "async-overhead 1 task" in table
    assert "async-select 256/8" in table

    # A peer that did not run makes its target "could not tell", not "met".
    alone = _async_scenario("async-select", 256, {
        "pgreservoir-async": (8000, 0.9), "dedicated-async": (10000, 1),
    })
    checks = {c.target: c.met for c in check_targets([alone])}
    assert checks[f"async-select, {where} throughput at least psycopg_pool (asyncio)'s"] is None
    assert checks[f"async-select, {where} x dedicated at least asyncpg's x its dedicated"] \
        is None


# ---------------------------------------------------------------------------
# The asyncio runner, on a pool made up here (no server)
# ---------------------------------------------------------------------------


class _FakeAsyncPool:
    """``size`` integer "connections" in an asyncio.Queue; after ``stuck_after``
    acquires, acquire never returns; every ``fail_every``-th release raises."""

    def __init__(self, size: int, *, stuck_after: int = -1, fail_every: int = 0) -> None:
        self.idle: asyncio.Queue[int] = asyncio.Queue()
        for conn in range(size):
            self.idle.put_nowait(conn)
        self.stuck_after = stuck_after
        self.fail_every = fail_every
        self.acquired = 0
        self.released = 0
        self.closed = False

    async def acquire(self) -> int:
        self.acquired += 1
        if 0 <= self.stuck_after < self.acquired:
            await asyncio.Event().wait()
        return await self.idle.get()

    async def release(self, conn: int) -> None:
        self.released += 1
        self.idle.put_nowait(conn)
        if self.fail_every and self.released % self.fail_every == 0:
            raise RuntimeError("release failed")

    async def close(self) -> None:
        self.closed = True


def _fake_contender(pools: List[_FakeAsyncPool], **options: Any) -> Contender:
    async def opener(target: Target, size: int) -> AsyncSession:
        pool = _FakeAsyncPool(size, **options)
        pools.append(pool)
        return AsyncSession(pool.acquire, pool.release, pool.close, warm=size)

    return Contender("fake-async", "fake", "peer", (), opener, driver="psycopg-async",
                     is_async=True)


def test_async_runner_counts_every_ticket_and_every_task() -> None:
    pools: List[_FakeAsyncPool] = []
    scenario = Scenario(WORKLOADS["async-checkout"], threads=20, size=4)
    run = run_once_async(_fake_contender(pools, fail_every=50), scenario,
                         Target("unused", "unused"), duration=None, ops=1000)
    assert run.threads == 20
    assert len(run.thread_ops) == 20
    assert sum(run.thread_ops) == run.ops
    # Every ticket is one operation or one error (a failed release), none lost.
    assert run.ops + run.errors == 1000
    assert run.errors == 1000 // 50
    assert run.first_error == "RuntimeError: release failed"
    assert run.elapsed > 0
    assert pools[0].closed  # and the session was closed
    with pytest.raises(BenchError, match="asyncio"):
        run_once_async(BY_KEY["pgreservoir"], scenario, Target("unused", "unused"), ops=10,
                       duration=None)


def test_async_runner_calls_a_stuck_pool_stuck_and_still_closes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(async_runner, "HANG_GRACE", 0.2)
    pools: List[_FakeAsyncPool] = []
    scenario = Scenario(WORKLOADS["async-checkout"], threads=4, size=2)
    # Stuck in the run (the warm-up takes the 2 connections and 10 more go through).
    with pytest.raises(BenchError, match="worker tasks still running"):
        run_once_async(_fake_contender(pools, stuck_after=12), scenario, Target("unused", "x"),
                       duration=0.05)
    # Stuck at once: in the warm-up.
    with pytest.raises(BenchError, match="warm-up"):
        run_once_async(_fake_contender(pools, stuck_after=0), scenario, Target("unused", "x"),
                       duration=0.05)
    assert [pool.closed for pool in pools] == [True, True]



# ---------------------------------------------------------------------------
# Trusting a run: spread between rounds, rounds behind the targets, warm-up limit
# ---------------------------------------------------------------------------


def test_spread_says_how_far_a_contender_s_rounds_were_apart() -> None:
    from pgreservoir._bench.report import largest_spread, rounds_note
    from pgreservoir._bench.runner import ScenarioResult, spread

    assert spread([100.0, 200.0, 300.0]) == pytest.approx(1.0)  # (300 - 100) / 200
    assert spread([100.0]) is None  # one round: nothing to compare
    steady = summarize(BY_KEY["pgreservoir"], [
        _run("pgreservoir", i, ops, [ops // 2] * 2) for i, ops in enumerate((1000, 1010, 990))
    ], None)
    noisy = summarize(BY_KEY["psycopg2"], [
        _run("psycopg2", i, ops, [ops // 2] * 2) for i, ops in enumerate((500, 1500, 1000))
    ] + [RunResult("psycopg2", 3, 0, failed="boom")], None)  # a failed round is no figure
    assert steady.spread == pytest.approx(0.02)
    assert noisy.spread == pytest.approx(1.0)
    assert noisy.as_dict()["spread"] == 1.0
    result = ScenarioResult(Scenario(WORKLOADS["select"], 32, 8), [steady, noisy])
    table = format_table([result])
    assert "spread" in table.splitlines()[0]
    assert "100%" in table
    assert "2%" in table
    line = largest_spread([result])
    assert line is not None
    assert "100%, psycopg2.pool in select (32 threads, 8 connections)" in line
    assert "500 to 1,500 ops/s over 3 rounds" in line
    # Three rounds each: the targets rest on medians of enough rounds.
    assert rounds_note([result]) is None
    single = summarize(BY_KEY["pgreservoir"], [_run("pgreservoir", 0, 1000, [500] * 2)], None)
    short = ScenarioResult(Scenario(WORKLOADS["select"], 32, 8), [steady, single])
    assert largest_spread([ScenarioResult(Scenario(WORKLOADS["select"], 32, 8), [single])]) \
        is None
    note = rounds_note([short])
    assert note is not None
    assert "medians of 1 round" in note
    assert ">= 3 rounds" in note


def test_a_quick_run_says_its_targets_rest_on_one_round(postgres_dsn: str) -> None:
    options = BenchOptions(dsn=postgres_dsn, threads=4, size=2, ops=200, rounds=1,
                           workloads=["select"], contenders=["pgreservoir", "dedicated"],
                           progress=False)
    out, err = io.StringIO(), io.StringIO()
    assert bench(options, out, err) == 0
    text = out.getvalue()
    targets = text[text.index("Targets:"):]
    assert "judged on medians of 1 round" in targets.splitlines()[1]
    row = next(line for line in text.splitlines() if line.startswith("select 4/2"))
    assert row.split()[4] == "-"  # no spread from one round


class _StuckPool:
    """A thread "pool" of ``size`` integers whose acquire blocks for good once
    ``stuck_after`` connections have been taken (until released by the test)."""

    def __init__(self, size: int, stuck_after: int) -> None:
        import threading

        self.free = list(range(size))
        self.stuck_after = stuck_after
        self.taken = 0
        self.gate = threading.Event()
        self.closed = False

    def acquire(self) -> int:
        self.taken += 1
        if self.taken > self.stuck_after:
            self.gate.wait()
        return self.free.pop()

    def release(self, conn: int) -> None:
        self.free.append(conn)

    def close(self) -> None:
        self.closed = True
        self.gate.set()  # let the abandoned warm-up thread finish


def test_thread_runner_calls_a_pool_stuck_in_its_warm_up_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgreservoir._bench import runner
    from pgreservoir._bench.contenders import Session

    monkeypatch.setattr(runner, "HANG_GRACE", 0.2)
    pools: List[_StuckPool] = []

    def opener(target: Target, size: int) -> Session:
        pool = _StuckPool(size, stuck_after=1)
        pools.append(pool)
        return Session(pool.acquire, pool.release, pool.close, warm=size)

    stuck = Contender("stuck", "stuck pool", "peer", (), opener)
    with pytest.raises(BenchError, match=r"stuck pool: the warm-up \(taking all 2 connections"):
        run_once(stuck, Scenario(WORKLOADS["checkout"], threads=4, size=2),
                 Target("unused", "unused"), duration=0.05)
    assert pools[0].closed  # the session is closed all the same

    # A warm-up that fails says why (the error of the pool, not a hang).
    def failing(target: Target, size: int) -> Session:
        def acquire() -> int:
            raise RuntimeError("no connection for you")

        return Session(acquire, lambda conn: None, lambda: None, warm=size)

    with pytest.raises(RuntimeError, match="no connection for you"):
        run_once(Contender("failing", "failing", "peer", (), failing),
                 Scenario(WORKLOADS["checkout"], threads=2, size=2),
                 Target("unused", "unused"), duration=0.05)


# ---------------------------------------------------------------------------
# Thread and task counts as lists; the write workload; their targets
# ---------------------------------------------------------------------------


def test_thread_and_task_counts_give_one_scenario_each() -> None:
    import argparse

    from pgreservoir._bench.command import _scenarios
    from pgreservoir.cli import _counts

    assert _counts("8,32,128,512") == [8, 32, 128, 512]
    assert _counts("64") == [64]
    with pytest.raises(argparse.ArgumentTypeError):
        _counts("8,0")
    options = BenchOptions(threads=[8, 32, 8], tasks=[256, 4096],
                           workloads=["overhead", "select", "write", "async-select"])
    shapes = [(s.workload.key, s.threads) for s in _scenarios(options)]
    assert shapes == [("overhead", 1), ("select", 8), ("select", 32), ("write", 8),
                      ("write", 32), ("async-select", 256), ("async-select", 4096)]
    assert BenchOptions(threads=16).counts("threads") == [16]


def test_the_write_workload_updates_one_row_per_operation(postgres_dsn: str) -> None:
    import psycopg2

    from pgreservoir._bench.runner import WRITE_ROWS, WRITE_TABLE, _run_sql

    workload = WORKLOADS["write"]
    _run_sql(postgres_dsn, workload.setup)
    try:
        run = run_once(BY_KEY["pgreservoir"], Scenario(workload, threads=8, size=2),
                       Target(postgres_dsn, "write-guard"), duration=None, ops=400)
        assert run.errors == 0, run.first_error
        assert run.ops == 400
        conn = psycopg2.connect(postgres_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*), sum(hits) FROM {WRITE_TABLE}")
                rows, hits = cur.fetchone()  # type: ignore[misc]
        finally:
            conn.close()
        assert rows == WRITE_ROWS
        assert hits == 400  # every operation committed exactly one update
    finally:
        _run_sql(postgres_dsn, workload.teardown)


def test_counts_and_the_write_workload_end_to_end(postgres_dsn: str, tmp_path: Path) -> None:
    import psycopg2

    from pgreservoir._bench.runner import WRITE_TABLE

    report = tmp_path / "bench.json"
    assert main(["bench", "--dsn", postgres_dsn, "--workloads", "select,write",
                 "--contenders", "pgreservoir,dedicated", "--threads", "2,6", "--size", "2",
                 "--ops", "150", "--rounds", "2", "--no-progress",
                 "--json", str(report)]) == 0
    document = json.loads(report.read_text())
    assert document["settings"]["thread_counts"] == [2, 6]
    shapes = [(s["workload"], s["threads"]) for s in document["scenarios"]]
    assert shapes == [("select", 2), ("select", 6), ("write", 2), ("write", 6)]
    assert document["targets_rounds_note"] is not None  # 2 rounds < 3
    assert "largest spread between rounds" in document["largest_spread"]
    for scenario in document["scenarios"]:
        for row in scenario["results"]:
            assert row["errors"] == 0, row
            assert row["spread"] is not None  # two rounds each
    # The table the write workload made is gone.
    conn = psycopg2.connect(postgres_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (WRITE_TABLE,))
            assert cur.fetchone() == (None,)
    finally:
        conn.close()


def _thread_scenario(workload: str, threads: int, figures: Dict[str, Sequence[float]]) -> Any:
    """A ScenarioResult from (ops/s, fairness) per thread contender."""
    runs = {}
    for key, (ops, fairness) in figures.items():
        workers = 8 if BY_KEY[key].per_thread else threads
        thread_ops = [100] * (workers - 1) + [round(100 * fairness)]
        runs[key] = [_run(key, i, int(ops), thread_ops) for i in range(3)]
    return summarize_scenario(Scenario(WORKLOADS[workload], threads, 8),
                              [BY_KEY[key] for key in figures], runs)


def test_scaling_and_write_targets_from_summaries() -> None:
    select = {
        n: _thread_scenario("select", n, {
            "pgreservoir": (ours, 0.9), "sqlalchemy": (theirs, 0.0), "dedicated": (9000, 1),
        })
        for n, ours, theirs in ((8, 8600, 5900), (32, 6000, 5000), (128, 5000, 7000),
                                (512, 4700, 4400))
    }
    write = _thread_scenario("write", 32, {
        "pgreservoir": (2400, 0.95), "dbutils": (2300, 0.1), "dedicated": (2500, 1),
    })
    checks = {c.target: c for c in check_targets([*select.values(), write])}
    keeps = "pgreservoir keeps >= 0.8x its 32-thread throughput"
    assert checks[f"select, 128 threads on 8 connections: {keeps}"].met is True  # 0.83
    assert checks[f"select, 512 threads on 8 connections: {keeps}"].met is False  # 0.78
    assert checks[f"select, 512 threads on 8 connections: {keeps}"].measured.endswith("0.78x")
    assert not any(t.startswith(("select, 8 ", "select, 32 ")) and "keeps" in t
                   for t in checks)  # only above 32
    every = "pgreservoir at least every peer's throughput, fairness >= 0.8"
    assert checks[f"select, 32 threads on 8 connections: {every}"].met is True
    assert checks[f"select, 128 threads on 8 connections: {every}"].met is False  # 5000 < 7000
    assert checks[f"select, 512 threads on 8 connections: {every}"].met is True
    assert checks["write, 32 threads on 8 connections: pgreservoir at least every peer's "
                  "throughput, fairness >= 0.9"].met is True
    # Without the 32-thread run there is nothing to scale against.
    assert not any("keeps" in c.target for c in check_targets([select[512]]))
