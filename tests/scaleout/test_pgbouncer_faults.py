"""A steady workload through a real PgBouncer while its admin console and process
misbehave (issue 18, section 3): RECONNECT, PAUSE/RESUME, KILL and a restart, in
session and transaction mode, with threads (psycopg2) and asyncio (psycopg 3).

Each run asserts no hang, no double hand-out, no lost acknowledged commit and
that writes succeed again after each fault, and prints how long that took.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from pgreservoir.testing import PgBouncer, PostgresServer

from ._support import LEGITIMATE, PHASE_DEADLINE, committed_ids, make_pool, make_workload

pytestmark = pytest.mark.slow

DB = "bouncer_faults"
WARM_UP = 50
STEADY = 50
RECOVERY_BOUND = 10.0  # a deadline for the condition, not a speed claim
PAUSE_FOR = 1.0  # seconds PgBouncer stays paused (below the workload's I/O cut-off)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer(settings={"synchronous_commit": "on"}, max_connections=60) as server:
        server.create_database(DB)
        conn = server.connect(DB)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TABLE chaos_commits (id bigint PRIMARY KEY, fault text NOT NULL)"
                )
        finally:
            conn.close()
        yield server


def faults(bouncer: PgBouncer) -> List[Tuple[str, Callable[[], None]]]:
    def pause() -> None:
        bouncer.pause(DB, wait=False)  # session mode: PAUSE waits for every client
        time.sleep(PAUSE_FOR)  # the fault's length, not a wait for a condition
        bouncer.resume(DB)

    def kill() -> None:
        bouncer.kill(DB)
        bouncer.resume(DB)

    return [
        ("RECONNECT", bouncer.reconnect),
        ("PAUSE/RESUME", pause),
        ("KILL", kill),
        ("restart", bouncer.restart),
    ]


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
@pytest.mark.parametrize("mode", ["threads", "asyncio"])
def test_workload_through_pgbouncer_faults(
    server: PostgresServer, pool_mode: str, mode: str
) -> None:
    with PgBouncer(server, pool_mode=pool_mode, default_pool_size=8) as bouncer:
        dsn = bouncer.make_dsn(server.make_dsn(DB), connect_timeout=2)
        label = f"pgbouncer-{pool_mode}-{mode}"
        pool: Any = make_pool(dsn, mode, label, transaction_pooling=pool_mode == "transaction")
        workload = make_workload(pool, mode, label)
        figures: Dict[str, float] = {}
        try:
            workload.start()
            workload.wait_until(lambda: workload.successes_after(0) >= WARM_UP, "warm-up", 30)
            for name, fault in faults(bouncer):
                fault()
                ended = time.monotonic()
                workload.wait_until(
                    lambda: workload.successes_after(ended) >= STEADY,  # noqa: B023
                    f"writes after {name}",
                    PHASE_DEADLINE,
                )
                first = workload.first_success_after(ended)
                assert first is not None
                assert first - ended < RECOVERY_BOUND
                figures[name] = first - ended
            hung = workload.stop(time.monotonic() + 15)
            assert hung == []
            assert workload.violations == []
            assert workload.kinds() <= LEGITIMATE, workload.counts()
            assert set(workload.acked) <= committed_ids(server, DB)
            parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in figures.items())
            print(f"[{label}] first write after: {parts}; {workload.summary_line()}")
        finally:
            workload.stop(time.monotonic() + 15)
            pool.close()
            if mode == "asyncio":
                pool.shutdown()
