"""Fixtures of the routing tests: a primary and replicas to route between.

Two kinds of replica. For up/down faults, TCP proxies in front of the test
database (``replica-1``, ``replica-2``): a proxy that refuses and resets is a
replica gone, one that passes again is a replica back; every server is told
apart by the ``application_name`` of its DSN. For lag, a real streaming
standby of a primary of its own (``pgreservoir.testing.StandbyServer``),
whose replay is paused and resumed.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterator, List, Tuple, TypeVar

import pytest

from pgreservoir.testing import PostgresServer, StandbyServer, TcpProxy
from support import DEADLINE, FLAVORS, Flavor

T = TypeVar("T")


@pytest.fixture(params=FLAVORS, ids=repr)
def flavor(request: pytest.FixtureRequest) -> Flavor:
    value: Flavor = request.param
    return value


class Servers:
    """The primary's DSN and two proxied replicas' DSNs, each naming itself."""

    def __init__(self, dsn: str, proxies: List[TcpProxy]) -> None:
        self.proxies = proxies
        self.primary = f"{dsn} application_name=primary"
        self.replicas = [
            p.make_dsn(dsn, application_name=f"replica-{i + 1}") for i, p in enumerate(proxies)
        ]

    def lose(self, index: int) -> None:
        """Replica ``index`` goes down: connects refused, connections reset."""
        self.proxies[index].set_mode("reset")

    def restore(self, index: int) -> None:
        self.proxies[index].set_mode("pass")


@pytest.fixture
def servers(postgres_server: PostgresServer, postgres_dsn: str) -> Iterator[Servers]:
    with TcpProxy.for_server(postgres_server) as one, TcpProxy.for_server(postgres_server) as two:
        yield Servers(postgres_dsn, [one, two])


@pytest.fixture(scope="module")
def standby_pair() -> Iterator[Tuple[PostgresServer, StandbyServer]]:
    """A primary with a table ``items`` and an asynchronous streaming standby."""
    with PostgresServer() as primary, StandbyServer(primary) as standby:
        standby.wait_streaming()
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE items (n int)")
        conn.close()
        standby.wait_caught_up(timeout=DEADLINE)
        yield primary, standby


def served_by(conn: object) -> str:
    """The application_name of the server behind ``conn``'s DSN."""
    cur = conn.cursor()  # type: ignore[attr-defined]
    try:
        cur.execute("SHOW application_name")
        return str(cur.fetchone()[0])
    finally:
        cur.close()


def run(coro: Awaitable[T], timeout: float = 120.0) -> T:
    """asyncio.run with an overall deadline, so a hang fails the test."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
