"""The chaos suite: a steady workload through a pool while real faults hit it.

Each test injects one kind of fault into a dedicated PostgreSQL server (not the
shared session server: these tests crash, pause and restart it) while
``THREADS`` workers run short write transactions through a pool of
``MAX_SIZE`` connections (see :mod:`.workload`), restores it, waits for the
pool to recover, then checks what follows. Every fault runs twice: worker
threads through a ``ConnectionPool`` (psycopg2), and asyncio tasks through an
``AsyncConnectionPool`` (psycopg 3) on an event loop of its own.

* **No hang.** Every request ended within ``REQUEST_BOUND`` s (its getconn
  timeout + a margin; for the black hole, whose queries hang, plus the
  workload's I/O cut-off), in success or in a legitimate error:
  ``PoolTimeout`` (no connection within the timeout while the server was
  unreachable) or ``psycopg2.OperationalError`` (the connection died under
  the request). Anything else -- ``InterfaceError`` (a closed connection
  handed out), ``PoolClosed``, a misuse ``PoolError`` -- fails the test.
  Every worker thread ends by a deadline; no test leaves a thread behind.
* **No lost commit.** Every id whose ``commit()`` returned is in the table
  afterwards. The server runs with ``synchronous_commit=on`` so that this
  holds across ``pg_ctl stop -m immediate`` (``fsync`` stays off: the
  operating system keeps what the server wrote; only an OS crash would lose
  it).
* **No double hand-out, no leak.** No connection is held by two workers at
  once; once quiet, the server's connection count for the database equals
  ``stats()['size']`` (<= ``max_size``); after ``close()`` it is 0, nothing
  is in use, and the pool's thread is gone.
* **Recovery.** The time from the server being available again (a separate
  probe connects) to the first successful request is measured, printed,
  written to ``chaos-summary.json``/``.md`` in the pytest temporary directory,
  and must stay under ``RECOVERY_BOUND`` (the issue's target is 2 s).
* **Close under fault.** ``close()`` while every connection hangs in a
  black-holed query and the pool's thread hangs in a connect returns within
  its timeout, releases every caller and the thread ends.

Fault durations are driven by conditions ("until a connect failed and a
caller timed out"), each with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import psycopg2
import pytest

from pgreservoir import ConnectionPool
from pgreservoir._core import BACKOFF_INITIAL, BACKOFF_MAX
from pgreservoir.testing import PostgresServer, TcpProxy

from .workload import AsyncWorkload, LoopPool, Request, Workload

pytestmark = pytest.mark.slow

DB = "chaos"
THREADS = 12
MIN_SIZE = 2
MAX_SIZE = 6
REQUEST_TIMEOUT = 1.5  # getconn timeout of every request
CONNECT_TIMEOUT = 2  # libpq's smallest effective connect_timeout
IO_TIMEOUT = 2.5  # the workload cuts off a query running longer (see workload.py)
MARGIN = 2.5  # scheduling noise on a shared 2-core machine
# No request may take longer than its getconn timeout plus the margin; where
# queries hang (black hole), plus the workload's I/O cut-off.
REQUEST_BOUND = REQUEST_TIMEOUT + MARGIN
HUNG_REQUEST_BOUND = REQUEST_TIMEOUT + IO_TIMEOUT + MARGIN
RECOVERY_BOUND = 10.0
PHASE_DEADLINE = 30.0  # for any condition the test waits for
WARM_UP = 50  # successful requests before each fault
STEADY = 100  # successful requests after recovery before the next step
# Failed connects after which the pool's reconnect backoff has reached its
# cap (BACKOFF_MAX): recovery measured then is that of a long outage.
CAPPED = math.ceil(math.log2(BACKOFF_MAX / BACKOFF_INITIAL)) + 2
# How a request may end while faults happen (anything else fails the test).
LEGITIMATE = {"ok", "PoolTimeout", "OperationalError"}
# ... and after the pool was closed under the callers.
CLOSED_POOL = {"PoolClosed", "DatabaseError"}


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chaos_server() -> Iterator[PostgresServer]:
    """A server of our own, with durable commits, and the table the workload fills."""
    with PostgresServer(settings={"synchronous_commit": "on"}, max_connections=50) as server:
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


@pytest.fixture(scope="module")
def chaos_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Dict[str, Any]]]:
    """Collects each fault's figures; writes chaos-summary.json and .md at the end."""
    results: List[Dict[str, Any]] = []
    yield results
    directory = tmp_path_factory.mktemp("chaos")
    (directory / "chaos-summary.json").write_text(json.dumps(results, indent=2) + "\n")
    (directory / "chaos-summary.md").write_text(markdown_summary(results))
    print(f"\nchaos summary: {directory / 'chaos-summary.md'}")
    print(markdown_summary(results))


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------


class Context:
    """What a fault acts on."""

    def __init__(
        self, server: PostgresServer, proxy: Optional[TcpProxy], pool: Any, dsn: str
    ) -> None:
        self.server = server
        self.proxy = proxy
        self.pool = pool
        self.dsn = dsn
        self.admin: Any = None  # a connection opened before a pause


class Fault:
    """One kind of fault: inject, hold until felt, restore."""

    name = ""
    description = ""
    proxied = False  # the pool connects through a TcpProxy
    outage = True  # the server is unreachable until restore()
    rounds = 1
    cause = ""  # text expected in PoolTimeout.__cause__ during the outage
    connect_errors = 1  # failed connects that make the outage "felt"
    io_kills = False  # queries hang (the workload cuts them off)

    def prepare(self, ctx: Context) -> None:
        """Before the first round (while everything works)."""

    def inject(self, ctx: Context) -> None:
        raise NotImplementedError

    def felt(self, ctx: Context, workload: Workload, since: float, base: Dict[str, Any]) -> bool:
        """Whether the outage has been felt: connects failed and a caller timed out."""
        return (
            ctx.pool.stats()["connect_errors"] >= base["connect_errors"] + self.connect_errors
            and any(r.cause for r in workload.failures_after(since, "PoolTimeout"))
            and (not self.io_kills or workload.io_kills > 0)
        )

    def restore(self, ctx: Context) -> None:
        """End the outage."""

    def heal(self, ctx: Context) -> None:
        """Leave the server and proxy working, whatever state a failed test left."""
        if ctx.server.paused:
            ctx.server.resume()
        if not ctx.server.running:
            ctx.server.start()
        if ctx.proxy is not None and not ctx.proxy.closed:
            ctx.proxy.set_mode("pass")
        if ctx.admin is not None:
            ctx.admin.close()


class Terminate(Fault):
    name = "terminate"
    description = "pg_terminate_backend of every pool connection (3 rounds)"
    outage = False
    rounds = 3

    def inject(self, ctx: Context) -> None:
        assert ctx.server.terminate_backends(DB) > 0


class ImmediateRestart(Fault):
    name = "immediate-restart"
    description = "pg_ctl stop -m immediate (crash), held down, then start (crash recovery)"
    cause = "refused"
    connect_errors = CAPPED  # held until the backoff is at its cap

    def inject(self, ctx: Context) -> None:
        ctx.server.stop(mode="immediate")

    def restore(self, ctx: Context) -> None:
        ctx.server.start()


class Pause(Fault):
    name = "pause"
    description = (
        "postmaster SIGSTOPped and the pool's backends terminated, so every "
        "reconnect hangs until connect_timeout; then SIGCONT"
    )
    cause = "timeout expired"

    def prepare(self, ctx: Context) -> None:
        # New connections hang while paused; one opened before keeps working.
        ctx.admin = ctx.server.connect()

    def inject(self, ctx: Context) -> None:
        ctx.server.pause()
        with ctx.admin.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (DB,),
            )
            row = cur.fetchone()
            assert row is not None
            assert row[0] > 0
            end = time.monotonic() + PHASE_DEADLINE
            while True:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (DB,))
                row = cur.fetchone()
                if row is not None and row[0] == 0:
                    break
                if time.monotonic() >= end:
                    cur.execute(
                        "SELECT pid, state, wait_event_type, wait_event, backend_type, query"
                        " FROM pg_stat_activity WHERE datname = %s",
                        (DB,),
                    )
                    raise AssertionError(f"terminated backends did not exit: {cur.fetchall()}")
                time.sleep(0.01)

    def restore(self, ctx: Context) -> None:
        ctx.server.resume()


class ProxyBlackhole(Fault):
    name = "proxy-blackhole"
    description = "TcpProxy black hole: nothing forwarded, connects and queries hang"
    proxied = True
    cause = "timeout expired"
    io_kills = True

    def inject(self, ctx: Context) -> None:
        assert ctx.proxy is not None
        ctx.proxy.set_mode("blackhole")

    def restore(self, ctx: Context) -> None:
        assert ctx.proxy is not None
        ctx.proxy.set_mode("pass")


class ProxyRefuse(Fault):
    name = "proxy-refuse"
    description = "TcpProxy refuses new connections and the pool's backends are terminated"
    proxied = True
    cause = "refused"
    connect_errors = CAPPED  # held until the backoff is at its cap

    def inject(self, ctx: Context) -> None:
        assert ctx.proxy is not None
        ctx.proxy.set_mode("refuse")
        assert ctx.server.terminate_backends(DB) > 0
        # A connect the proxy accepted just before it began refusing can still
        # complete after that sweep (the pool connects up to num_workers at
        # once): terminate until none of the pool's backends is left.
        end = time.monotonic() + PHASE_DEADLINE
        while ctx.server.backend_pids(DB):
            if time.monotonic() >= end:
                raise AssertionError(f"backends survive: {ctx.server.backend_pids(DB)}")
            ctx.server.terminate_backends(DB)
            time.sleep(0.01)

    def restore(self, ctx: Context) -> None:
        assert ctx.proxy is not None
        ctx.proxy.set_mode("pass")


class ProxyReset(Fault):
    name = "proxy-reset"
    description = "TcpProxy resets (RST) every connection and refuses new ones"
    proxied = True
    cause = "refused"
    connect_errors = CAPPED  # held until the backoff is at its cap

    def inject(self, ctx: Context) -> None:
        assert ctx.proxy is not None
        ctx.proxy.set_mode("reset")

    def restore(self, ctx: Context) -> None:
        assert ctx.proxy is not None
        ctx.proxy.set_mode("pass")


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


class Probe:
    """Connects (outside the pool) until one connection succeeds: when the
    server is available again."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._stop = threading.Event()
        self.available_at: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="chaos-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = psycopg2.connect(self._dsn, connect_timeout=CONNECT_TIMEOUT)
            except psycopg2.OperationalError:
                self._stop.wait(0.005)
                continue
            self.available_at = time.monotonic()
            conn.close()
            return

    def wait(self, timeout: float) -> float:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(CONNECT_TIMEOUT + MARGIN)
        assert self.available_at is not None, f"server not available after {timeout} s"
        return self.available_at


def wait_until(predicate: Any, what: str, timeout: float = PHASE_DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def committed_ids(server: PostgresServer, fault: str) -> set[int]:
    conn = server.connect(DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM chaos_commits WHERE fault = %s", (fault,))
            return {int(row[0]) for row in cur.fetchall()}
    finally:
        conn.close()


def pool_threads(pool: Any) -> List[str]:
    """The pool's threads (thread pools) or tasks (asyncio pools) still running."""
    if isinstance(pool, LoopPool):
        return [f"task-{i}" for i in range(pool.tasks())]
    return [t.name for t in threading.enumerate() if t.name.startswith(f"pgreservoir-{pool.name}")]


def leftover_threads() -> List[str]:
    """Workload, probe and proxy threads still alive (none may outlive a test)."""
    prefixes = ("chaos-", "TcpProxy-", "pgreservoir-chaos-")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


def stale_handouts(
    records: List[Request], injected: List[Tuple[float, float]]
) -> List[Request]:
    """Requests that failed on a connection handed out after a fault had completed
    when no later fault had begun by their failure (and not cut off by the
    workload): a dead connection was handed out. ``injected`` holds each fault's
    (start, end). A request hit by a fault while it held its connection is not
    stale, even if an earlier round's fault was long over when it started."""
    stale = []
    for r in records:
        if r.kind != "OperationalError" or r.killed or r.t_got is None:
            continue
        begun = [(start, end) for start, end in injected if start <= r.t_end]
        if begun and r.t_got >= max(begun)[1]:
            stale.append(r)
    return stale


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def one_round(
    ctx: Context, fault: Fault, workload: Workload, injected: List[Tuple[float, float]]
) -> Dict[str, float]:
    """Warm up, inject the fault, hold it until felt, restore, measure recovery."""
    pool = ctx.pool
    mark = time.monotonic()
    workload.wait_until(
        lambda: workload.successes_after(mark) >= WARM_UP, "steady state", PHASE_DEADLINE
    )
    base = pool.stats()
    t_inject = time.monotonic()
    fault.inject(ctx)
    t_injected = time.monotonic()
    injected.append((t_inject, t_injected))
    if fault.outage:
        workload.wait_until(
            lambda: fault.felt(ctx, workload, t_injected, base),
            "the outage to be felt (a connect error and a PoolTimeout with its cause)",
            PHASE_DEADLINE,
        )
        t_restore = time.monotonic()
        probe = Probe(ctx.dsn)
        fault.restore(ctx)
        t_available = probe.wait(PHASE_DEADLINE)
    else:
        t_restore = t_available = t_injected
    workload.wait_until(
        lambda: workload.first_success_after(t_restore) is not None,
        "the first successful request after the fault",
        RECOVERY_BOUND + PHASE_DEADLINE,
    )
    first = workload.first_success_after(t_restore)
    assert first is not None
    recovery = max(0.0, first - t_available)
    print(
        f"[{fault.name}] fault held {t_restore - t_inject:.2f} s; server available "
        f"{t_available - t_restore:.2f} s after restore began; first success "
        f"{recovery:.3f} s after that"
    )
    workload.wait_until(
        lambda: workload.successes_after(first) >= STEADY, "steady again", PHASE_DEADLINE
    )
    return {
        "held_s": round(t_restore - t_inject, 3),
        "available_after_restore_s": round(t_available - t_restore, 3),
        "recovery_s": round(recovery, 3),
    }


def run_chaos(server: PostgresServer, fault: Fault, mode: str = "threads") -> Dict[str, Any]:
    """Run the workload through one fault; assert everything; return the figures.

    ``mode``: "threads" (ConnectionPool, psycopg2) or "asyncio" (AsyncConnectionPool).
    """
    started = time.monotonic()
    proxy = TcpProxy.for_server(server) if fault.proxied else None
    dsn = (
        proxy.dsn_for(server, DB, connect_timeout=CONNECT_TIMEOUT)
        if proxy is not None
        else server.make_dsn(DB, connect_timeout=CONNECT_TIMEOUT)
    )
    settings: Dict[str, Any] = {
        "min_size": MIN_SIZE,
        "max_size": MAX_SIZE,
        "timeout": REQUEST_TIMEOUT,
        "name": f"chaos-{fault.name}-{mode}",
        "application_name": f"chaos-{fault.name}",
    }
    pool: Any = LoopPool(dsn, **settings) if mode == "asyncio" else ConnectionPool(dsn, **settings)
    ctx = Context(server, proxy, pool, dsn)
    workload_class = AsyncWorkload if mode == "asyncio" else Workload
    label = fault.name if mode == "threads" else f"{fault.name} (asyncio)"
    workload = workload_class(
        pool,
        fault=label,
        threads=THREADS,
        request_timeout=REQUEST_TIMEOUT,
        io_timeout=IO_TIMEOUT,
    )
    rounds: List[Dict[str, float]] = []
    injected: List[Tuple[float, float]] = []
    alive: List[str] = []
    try:
        pool.wait(PHASE_DEADLINE)
        fault.prepare(ctx)
        workload.start()
        for _ in range(fault.rounds):
            rounds.append(one_round(ctx, fault, workload, injected))
    finally:
        alive = workload.stop(time.monotonic() + HUNG_REQUEST_BOUND)
        fault.heal(ctx)
        stats_before_close = pool.stats()
        try:
            # Quiet now: the server must see exactly the pool's connections.
            wait_until(
                lambda: (
                    (s := pool.stats())["in_use"] == 0
                    and s["opening"] == 0
                    and s["waiting"] == 0
                    and server.connection_count(DB) == s["size"]
                ),
                "server connection count == stats()['size']",
            )
            quiet = pool.stats()
            server_count = server.connection_count(DB)
        finally:
            pool.close()
            if proxy is not None:
                proxy.close()
    wait_until(lambda: server.connection_count(DB) == 0, "no server connections after close")
    wait_until(lambda: not pool_threads(pool), "the pool thread to end")
    after_close = pool.stats()
    if isinstance(pool, LoopPool):
        pool.shutdown()

    records = workload.finished()
    lost = sorted(set(workload.acked) - committed_ids(server, label))
    in_doubt = committed_ids(server, label) - set(workload.acked)
    bound = HUNG_REQUEST_BOUND if fault.io_kills else REQUEST_BOUND
    over = [r for r in records if r.duration > bound]
    unexpected = [r for r in records if r.kind not in LEGITIMATE]
    stale = stale_handouts(records, injected)
    causes = sorted({r.cause for r in records if r.cause})
    figures: Dict[str, Any] = {
        "fault": label,
        "description": fault.description,
        "rounds": len(rounds),
        "requests": len(records),
        "by_kind": workload.counts(),
        "io_kills": workload.io_kills,
        "hangs": len(over) + len(alive),
        "max_request_s": round(max(r.duration for r in records), 3),
        "request_bound_s": bound,
        "acked_commits": len(workload.acked),
        "lost_commits": len(lost),
        "committed_but_not_acked": len(in_doubt),
        "stale_handouts": len(stale),
        "recovery": rounds,
        "pool_timeout_causes": causes,
        "peak_pool_size": workload.peak_size,
        "quiet_size": quiet["size"],
        "quiet_server_connections": server_count,
        "connect_errors": stats_before_close["connect_errors"],
        "connections_lost": stats_before_close["connections_lost"],
        "connections_opened": stats_before_close["connections_opened"],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"[{fault.name}] {json.dumps(figures)}")

    assert not alive, f"threads still running after the deadline: {alive}"
    assert not over, f"requests longer than {bound} s: {[vars_of(r) for r in over[:5]]}"
    assert not leftover_threads(), leftover_threads()
    assert not unexpected, f"illegitimate errors: {[vars_of(r) for r in unexpected[:5]]}"
    assert not workload.violations, workload.violations[:5]
    assert not lost, f"{len(lost)} acknowledged commits lost, e.g. {lost[:10]}"
    assert len(rounds) == fault.rounds
    for entry in rounds:
        assert entry["recovery_s"] < RECOVERY_BOUND, rounds
    if not fault.io_kills:
        assert workload.io_kills == 0, "a query hung on a live connection"
    if fault.cause:
        assert any(fault.cause in cause for cause in causes), causes
    assert stats_before_close["connections_lost"] >= 1, "the fault was not felt"
    # A connection is checked (or proven alive by use) within ~1 ms before every
    # hand-out, but a backend can still die between that check and the caller's
    # first query, and on a loaded 2-core VM a thread can be descheduled there
    # for tens of ms. That race exists for any pool; what must hold is that it
    # stays rare (measured: 0 in every run); allow one per round, not one per
    # connection, so a real regression cannot hide behind the race.
    assert len(stale) <= fault.rounds, [vars_of(r) for r in stale[:5]]
    assert quiet["size"] == server_count <= MAX_SIZE
    assert after_close["in_use"] == 0
    assert after_close["size"] == 0
    return figures


def vars_of(record: Request) -> Dict[str, Any]:
    return {name: getattr(record, name) for name in Request.__slots__}


def markdown_summary(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| fault | requests | ok | PoolTimeout | OperationalError | other | io cut-offs "
        "| hangs | lost commits | stale hand-outs | recovery (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for fig in results:
        kinds = dict(fig["by_kind"])
        ok = kinds.pop("ok", 0)
        timeouts = kinds.pop("PoolTimeout", 0)
        operational = kinds.pop("OperationalError", 0)
        recovery = ", ".join(f"{r['recovery_s']:.2f}" for r in fig["recovery"])
        lines.append(
            f"| {fig['fault']} | {fig['requests']} | {ok} | {timeouts} | {operational} "
            f"| {sum(kinds.values())} | {fig['io_kills']} | {fig['hangs']} "
            f"| {fig['lost_commits']} | {fig['stale_handouts']} | {recovery} |"
        )
    total: Dict[str, int] = {}
    for fig in results:
        for kind, count in fig["by_kind"].items():
            total[kind] = total.get(kind, 0) + count
    recoveries = [r["recovery_s"] for fig in results for r in fig["recovery"]]
    lines.append(
        f"\nfaults injected: {sum(fig['rounds'] for fig in results)}; "
        f"requests: {sum(fig['requests'] for fig in results)}; by outcome: {total}; "
        f"hangs: {sum(fig['hangs'] for fig in results)}; "
        f"lost commits: {sum(fig['lost_commits'] for fig in results)}; "
        f"max recovery: {max(recoveries, default=0.0):.3f} s"
    )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

FAULTS = [Terminate, ImmediateRestart, Pause, ProxyBlackhole, ProxyRefuse, ProxyReset]


@pytest.mark.parametrize("mode", ["threads", "asyncio"])
@pytest.mark.parametrize("fault_class", FAULTS, ids=[f.name for f in FAULTS])
def test_pool_survives(
    fault_class: type[Fault],
    mode: str,
    chaos_server: PostgresServer,
    chaos_report: List[Dict[str, Any]],
) -> None:
    figures = run_chaos(chaos_server, fault_class(), mode)
    chaos_report.append(figures)


def test_close_during_blackhole(
    chaos_server: PostgresServer, chaos_report: List[Dict[str, Any]]
) -> None:
    """close() while every connection hangs in a black-holed query and the pool's
    thread hangs in a connect: it returns within its timeout (forcing the hung
    connections closed), every caller is released, and the thread ends."""
    server = chaos_server
    close_timeout = 1.0
    connect_timeout = 3  # longer than close_timeout: close() must not wait for it
    with TcpProxy.for_server(server) as proxy:
        pool = ConnectionPool(
            proxy.dsn_for(server, DB, connect_timeout=connect_timeout),
            min_size=MIN_SIZE,
            max_size=MAX_SIZE,
            timeout=REQUEST_TIMEOUT,
            name="chaos-close-blackhole",
        )
        # No I/O cut-off here: hung queries stay hung until close() forces them.
        workload = Workload(pool, fault="close-blackhole", threads=THREADS, io_timeout=3600.0)
        try:
            pool.wait(PHASE_DEADLINE)
            held = pool.getconn()  # the workers share the other MAX_SIZE - 1
            workload.start()
            mark = time.monotonic()
            # The pool must have grown to max_size before the black hole: a connect
            # still under way when it starts hangs, and the pool never gets there.
            workload.wait_until(
                lambda: (
                    workload.successes_after(mark) >= WARM_UP
                    and (s := pool.stats())["size"] == MAX_SIZE
                    and s["opening"] == 0
                ),
                "steady state with max_size connections open",
                PHASE_DEADLINE,
            )
            proxy.set_mode("blackhole")
            blackholed = time.monotonic()
            workload.wait_until(
                lambda: (
                    (s := pool.stats())["in_use"] == s["size"] == MAX_SIZE
                    and s["waiting"] > 0
                    and len(workload.failures_after(blackholed, "PoolTimeout")) > 0
                ),
                "every connection hung and callers timing out",
                PHASE_DEADLINE,
            )
            # Free one slot: the pool's thread now opens a connection, which hangs.
            accepted = proxy.stats()["accepted"]
            pool.putconn(held, close=True)
            workload.wait_until(
                lambda: proxy.stats()["accepted"] > accepted, "a hanging connect", PHASE_DEADLINE
            )
            t_close = time.monotonic()
            pool.close(close_timeout)
            t_closed = time.monotonic()
            alive = workload.stop(time.monotonic() + HUNG_REQUEST_BOUND)
            # Still black-holed: the thread ends when its connect times out.
            wait_until(lambda: not pool_threads(pool), "the pool thread to end")
            t_thread_gone = time.monotonic()
        finally:
            workload.stop(time.monotonic() + HUNG_REQUEST_BOUND)
            pool.close(0)
            proxy.set_mode("pass")
        wait_until(lambda: server.connection_count(DB) == 0, "no server connections")
    records = workload.finished()
    late = [r for r in records if r.t_end > t_closed + MARGIN]
    lost = sorted(set(workload.acked) - committed_ids(server, "close-blackhole"))
    figures: Dict[str, Any] = {
        "fault": "close-blackhole",
        "description": "pool.close(1.0) while black-holed: hung queries and a hung connect",
        "rounds": 1,
        "requests": len(records),
        "by_kind": workload.counts(),
        "io_kills": 0,
        "hangs": len(late) + len(alive),
        "lost_commits": len(lost),
        "stale_handouts": 0,
        "recovery": [],
        "close_s": round(t_closed - t_close, 3),
        "thread_gone_after_close_s": round(t_thread_gone - t_closed, 3),
    }
    print(f"[close-blackhole] {json.dumps(figures)}")
    chaos_report.append(figures)
    assert not alive, alive
    assert not leftover_threads(), leftover_threads()
    assert t_closed - t_close <= close_timeout + MARGIN
    assert t_thread_gone - t_closed <= connect_timeout + MARGIN
    assert not late, [vars_of(r) for r in late[:5]]
    # Closing the pool is a legitimate end for the callers: PoolClosed, and the
    # queries it interrupted fail (psycopg2 may call that a plain DatabaseError,
    # see workload.py).
    odd = [vars_of(r) for r in records if r.kind not in LEGITIMATE | CLOSED_POOL]
    assert not odd, odd[:5]
    interrupted = [r for r in records if r.kind in ("OperationalError", "DatabaseError")]
    assert len(interrupted) >= MAX_SIZE - 1, workload.counts()
    assert not lost
    assert not workload.violations, workload.violations[:5]
    assert pool.stats()["in_use"] == pool.stats()["size"] == 0
