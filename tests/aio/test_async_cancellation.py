"""AsyncConnectionPool under cancellation, keepalives and faults, against a real server.

What must hold: a cancelled task always gets its CancelledError (it never
returns a connection); a connection a pool task is still using is never closed
under it (the event loop would keep a stale registration for its descriptor,
which breaks the next socket to get that number); keepalive pings never hold
up a connect; and a pool serves only its own event loop, for returns too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import struct
import threading
import warnings
from typing import Any, Dict, List, Optional, Set

import psycopg
import pytest

from pgreservoir import AsyncConnectionPool, PoolTimeout
from pgreservoir.testing import PostgresServer, TcpProxy
from support import DEADLINE

from .test_async_pool import consistent, run, scalar, until

#: The SSLRequest message: any PostgreSQL server answers it with one byte.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


async def server_answers(server: PostgresServer) -> bool:
    """Whether a brand-new asyncio socket to the server works: connect, send an
    SSLRequest, read the one-byte answer (bounded). A stale registration of the
    descriptor number in the event loop breaks exactly this."""

    async def talk() -> bool:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(SSL_REQUEST)
            await writer.drain()
            return await reader.readexactly(1) in (b"S", b"N")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(talk(), DEADLINE)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RuntimeError,
            ValueError):
        return False


# ---------------------------------------------------------------------------
# Item: a cancelled caller never closes a connection a pool task still awaits
# ---------------------------------------------------------------------------


def test_cancel_during_the_checkout_check_leaves_no_stale_descriptor(
    postgres_server: PostgresServer,
) -> None:
    async def main() -> None:
        with TcpProxy.for_server(postgres_server) as proxy:
            pool = AsyncConnectionPool(
                proxy.dsn_for(postgres_server), min_size=1, max_size=1, check_idle_after=0
            )
            try:
                await pool.wait(DEADLINE)
                failures = 0
                for _ in range(10):
                    await until(lambda: pool.stats()["idle"] == 1, "an idle connection")
                    proxy.set_latency(0.3)  # the checkout's SELECT 1 now takes a while
                    task = asyncio.create_task(pool.getconn(timeout=DEADLINE))
                    await asyncio.sleep(0.1)  # inside the check by now
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    proxy.set_latency(0.0)
                    # The next socket made may get the descriptor number the
                    # checked connection had: it must work.
                    if not await server_answers(postgres_server):
                        failures += 1
                    await until(lambda: consistent(pool) and pool.stats()["in_use"] == 0,
                                "the slot back")
                assert failures == 0, f"{failures} of 10 fresh sockets were broken"
                async with pool.connection(timeout=DEADLINE) as conn:
                    assert await scalar(conn, "SELECT 1") == 1
            finally:
                await pool.close()

    run(main(), timeout=120)


# ---------------------------------------------------------------------------
# Item: a cancel is delivered, whenever it lands
# ---------------------------------------------------------------------------


def test_a_cancel_landing_as_the_check_ends_is_delivered(postgres_dsn: str) -> None:
    victim: List[asyncio.Task[Any]] = []

    async def check(conn: Any) -> None:
        await conn.execute("SELECT 1")
        victim[0].cancel()  # the check is over: the cancel lands as it ends

    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=2, max_size=2, check=check) as pool:
            await pool.wait(DEADLINE)
            for _ in range(5):
                victim[:] = [asyncio.create_task(pool.getconn(timeout=DEADLINE))]
                try:
                    conn = await victim[0]
                except asyncio.CancelledError:
                    pass
                else:
                    await pool.putconn(conn)
                    raise AssertionError("a cancelled task returned a connection")
                await until(lambda: consistent(pool) and pool.stats()["in_use"] == 0,
                            "the slot back")
            # The connection checked alive went back: nothing was discarded.
            assert pool.stats()["connections_opened"] == 2

    run(main())


def test_a_cancel_landing_as_wait_is_satisfied_is_delivered(postgres_dsn: str) -> None:
    class Hanging(psycopg.AsyncConnection):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(3600)  # never connects: cancelled by close()

    async def main() -> None:
        pool = AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1,
                                   connection_class=Hanging)
        try:
            waiting = asyncio.create_task(pool.wait(DEADLINE))
            await until(lambda: pool.stats()["opening"] == 1, "a connect under way")
            await asyncio.sleep(0.05)  # wait() is waiting
            pool.resize(0, 1)  # wait() is satisfied now ...
            waiting.cancel()  # ... and cancelled in the same step
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            await pool.close()

    run(main())


def test_a_cancel_landing_as_close_is_satisfied_is_delivered(postgres_dsn: str) -> None:
    async def main() -> None:
        pool = AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1)
        await pool.wait(DEADLINE)
        conn = await pool.getconn()
        closing = asyncio.create_task(pool.close(timeout=DEADLINE))
        await asyncio.sleep(0.05)  # close() waits for the connection in use
        await pool.putconn(conn)  # close() is satisfied now (no await inside) ...
        closing.cancel()  # ... and cancelled in the same step
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert conn.closed
        await pool.close()
        assert pool._shell.tasks == set()

    run(main())


def test_a_check_that_ignores_its_deadline_does_not_hold_the_caller(postgres_dsn: str) -> None:
    async def check(conn: Any) -> None:
        await asyncio.sleep(3600)  # not on the socket: shutting it does not end this

    async def main() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=1, max_size=1, check=check) as pool:
            await pool.wait(DEADLINE)
            loop = asyncio.get_running_loop()
            for _ in range(2):
                started = loop.time()
                # Bounded by the caller's timeout (plus a generous margin), not by check().
                getting = asyncio.ensure_future(pool.getconn(timeout=0.5))
                done, _ = await asyncio.wait([getting], timeout=DEADLINE)
                assert getting in done, "getconn() was held by check() past its timeout"
                with pytest.raises(PoolTimeout):
                    getting.result()
                assert loop.time() - started < DEADLINE
                # The check task is cancelled a moment later; the slot comes back.
                await until(lambda: consistent(pool) and pool.stats()["in_use"] == 0
                            and pool._shell.tasks == {pool._shell._maintenance},
                            "the check task to end and the slot back")

    run(main())


# ---------------------------------------------------------------------------
# Item: keepalive pings never hold up a connect
# ---------------------------------------------------------------------------


def test_keepalives_on_dead_links_do_not_delay_a_connect(
    postgres_server: PostgresServer,
) -> None:
    async def main() -> None:
        with TcpProxy.for_server(postgres_server) as proxy:
            # The idle connections go through the proxy; once its links are
            # dead, new connects go straight to the server, which is fine.
            route = [proxy.dsn_for(postgres_server)]

            class Routed(psycopg.AsyncConnection):
                @classmethod
                async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
                    return await super().connect(route[0], **kwargs)

            pool = AsyncConnectionPool(
                route[0], connection_class=Routed, min_size=3, max_size=4,
                check_idle_interval=0.2, check_timeout=DEADLINE, check_idle_after=None,
            )
            try:
                await pool.wait(DEADLINE)
                proxy.set_mode("blackhole")
                route[0] = postgres_server.make_dsn()
                await until(lambda: pool.stats()["idle"] == 0, "keepalive pings under way")
                # The three pings wait up to check_timeout each; a connect for
                # this caller must not wait behind them.
                conn = await pool.getconn(timeout=DEADLINE / 3)
                assert await scalar(conn, "SELECT 1") == 1
                await pool.putconn(conn)
            finally:
                await pool.close(timeout=0.1)

    run(main(), timeout=120)


@pytest.mark.parametrize("how", ["close", "collect"])
def test_pings_cut_short_by_close_or_collection_leave_no_stale_descriptor(
    postgres_server: PostgresServer, how: str
) -> None:
    async def one_round(proxy: TcpProxy) -> None:
        proxy.set_mode("pass")
        pool: Optional[AsyncConnectionPool] = AsyncConnectionPool(
            proxy.dsn_for(postgres_server), min_size=1, max_size=1,
            check_idle_interval=0.1, check_timeout=DEADLINE, check_idle_after=None,
        )
        assert pool is not None
        shell = pool._shell
        await pool.wait(DEADLINE)
        proxy.set_mode("blackhole")
        await until(lambda: shell.stats()["idle"] == 0, "keepalive pings under way")
        if how == "close":
            await pool.close(timeout=0.1)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                pool = None
                gc.collect()
        # At once, while the pings may still be ending: the next sockets may
        # get their descriptor numbers.
        for _ in range(5):
            assert await server_answers(postgres_server), "a fresh socket was broken"
        await until(lambda: not shell.tasks, "every task of the pool to end")
        assert await server_answers(postgres_server)

    async def main() -> None:
        with TcpProxy.for_server(postgres_server) as proxy:
            for _ in range(3):
                await one_round(proxy)

    run(main(), timeout=120)


# ---------------------------------------------------------------------------
# Item: a pool serves one event loop, for returns as well as checkouts
# ---------------------------------------------------------------------------


def _native_pool(dsn: str) -> Any:
    return AsyncConnectionPool(dsn, min_size=1, max_size=1)


def _dropin_pool(dsn: str) -> Any:
    from pgreservoir import psycopg_pool as dropin

    return dropin.AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)


def _gauges(pool: Any) -> Any:
    stats = pool.stats() if hasattr(pool, "stats") else pool.get_stats()
    if "in_use" in stats:
        return stats["in_use"], stats["idle"], stats["size"]
    size, idle = stats["pool_size"], stats["pool_available"]
    return size - idle, idle, size


@pytest.mark.parametrize("make", [_native_pool, _dropin_pool], ids=["native", "drop-in"])
def test_putconn_from_another_loop_is_refused_and_changes_nothing(
    postgres_dsn: str, make: Any
) -> None:
    async def main() -> None:
        async with make(postgres_dsn) as pool:
            conn = await pool.getconn()
            owner = getattr(conn, "_pool", None)
            before = _gauges(pool)
            outcome: Dict[str, BaseException] = {}

            def elsewhere() -> None:
                try:
                    asyncio.run(pool.putconn(conn))
                except BaseException as exc:
                    outcome["error"] = exc

            thread = threading.Thread(target=elsewhere)
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, DEADLINE)
            assert isinstance(outcome.get("error"), RuntimeError), outcome
            assert "event loop" in str(outcome["error"])
            assert _gauges(pool) == before == (1, 0, 1)
            assert not conn.closed
            assert getattr(conn, "_pool", None) is owner  # still known as pooled
            await pool.putconn(conn)  # on its own loop: accepted
            assert _gauges(pool) == (0, 1, 1)

    run(main())


# ---------------------------------------------------------------------------
# A short stress: random cancels, checkout checks, keepalives, killed backends
# ---------------------------------------------------------------------------


def test_stress_cancels_checks_keepalives_and_faults(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"])
    max_size = 6
    checks = 0

    async def check(conn: Any) -> None:
        nonlocal checks
        checks += 1
        await conn.execute("SELECT 1")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(15)
        pool = AsyncConnectionPool(
            postgres_dsn, min_size=2, max_size=max_size, timeout=5.0, check=check,
            check_idle_after=0, check_idle_interval=0.05, check_timeout=2.0,
        )
        holders: Dict[int, int] = {}  # id(conn) -> worker holding it
        cancel_sent: Set[asyncio.Task[None]] = set()
        problems: List[str] = []
        served = 0

        async def worker(number: int) -> None:
            nonlocal served
            me = asyncio.current_task()
            while True:
                started = loop.time()
                try:
                    conn = await pool.getconn()
                except PoolTimeout:
                    if loop.time() - started > 5.0 + DEADLINE:
                        problems.append("getconn() blocked far beyond its timeout")
                    continue
                if me in cancel_sent:
                    problems.append("a cancelled task was handed a connection")
                if id(conn) in holders:
                    problems.append(f"one connection given to {holders[id(conn)]} and {number}")
                holders[id(conn)] = number
                try:
                    await conn.execute("SELECT 1")
                    if rng.random() < 0.3:
                        await conn.execute("SELECT pg_sleep(0.002)")
                    served += 1
                except psycopg.Error:
                    pass  # its backend was terminated: the pool discards it at return
                finally:
                    del holders[id(conn)]
                    await pool.putconn(conn)

        async def faults() -> None:
            while True:
                await asyncio.sleep(0.4)
                await loop.run_in_executor(
                    None, lambda: postgres_server.terminate_backends(dbname, wait=False)
                )

        try:
            await pool.wait(DEADLINE)
            workers = [asyncio.create_task(worker(n)) for n in range(24)]
            killer = asyncio.create_task(faults())
            cancels = broken_sockets = 0
            end = loop.time() + 6.0
            while loop.time() < end:
                await asyncio.sleep(rng.random() * 0.01)
                victim = workers.pop(rng.randrange(len(workers)))
                cancel_sent.add(victim)
                victim.cancel()
                done, _ = await asyncio.wait([victim], timeout=DEADLINE)
                assert victim in done, "a cancelled task did not end (hang or deadlock)"
                if not victim.cancelled():
                    problems.append(f"a cancel was not delivered: {victim!r}")
                cancels += 1
                workers.append(asyncio.create_task(worker(len(workers) + cancels)))
                if cancels % 10 == 0 and not await server_answers(postgres_server):
                    broken_sockets += 1
            killer.cancel()
            for task in workers:
                cancel_sent.add(task)
                task.cancel()
            done, _ = await asyncio.wait([*workers, killer], timeout=DEADLINE)
            assert len(done) == len(workers) + 1, "tasks did not end after their cancel"
            assert not problems, problems[:5]
            assert broken_sockets == 0, f"{broken_sockets} fresh sockets broken during the stress"
            assert cancels > 100, cancels
            assert served > 100, served
            assert checks > 100, checks

            # Settled: every slot accounted for, and all max_size can be had at once.
            core = pool._shell.core

            def settled() -> bool:
                s = pool.stats()
                return bool(s["in_use"] == 0 and s["opening"] == 0 and consistent(pool))

            await until(settled, "the pool to settle")
            core.check_invariants()
            held = [await pool.getconn(timeout=DEADLINE) for _ in range(max_size)]
            assert len({id(c) for c in held}) == max_size
            for conn in held:
                assert await scalar(conn, "SELECT 1") == 1
                await pool.putconn(conn)
            assert pool.stats()["size"] == max_size
            # The descriptors of every closed connection are free and clean.
            for _ in range(20):
                assert await server_answers(postgres_server)
        finally:
            await pool.close()
        assert pool._shell.tasks == set()

    run(main(), timeout=90)


def test_no_asyncio_wait_for_in_the_package() -> None:
    # asyncio.wait_for can turn a cancel into a result on Python < 3.12.
    import pathlib

    import pgreservoir

    root = pathlib.Path(pgreservoir.__file__).parent
    users = [str(path.relative_to(root)) for path in root.rglob("*.py")
             if "asyncio.wait_for(" in path.read_text(encoding="utf-8")]
    assert users == []
