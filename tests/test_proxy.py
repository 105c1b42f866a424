"""Tests for pgreservoir.testing.TcpProxy: a real proxy, real sockets, a real server.

Nothing here asserts how fast something happens, only that it happens (within
a generous deadline) or, for the black hole, that nothing arrives while a
short receive timeout runs out (a slow machine can only make that pass).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import Callable, Iterator, List

import psycopg2
import psycopg2.extensions
import pytest

from pgreservoir.testing import PostgresServer, TcpProxy
from support import select_one

DEADLINE = 15.0  # generous bound for anything that must happen
QUIET = 0.3  # how long we listen to check that nothing arrives


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)
        except OSError:
            return


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., TcpProxy]]:
    proxies: List[TcpProxy] = []

    def make(target_port: int, **kwargs: object) -> TcpProxy:
        proxy = TcpProxy(target_port, **kwargs)  # type: ignore[arg-type]
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=DEADLINE)
    sock.settimeout(DEADLINE)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: List[bytes] = []
    got = 0
    while got < size:
        chunk = sock.recv(min(65536, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(QUIET)
    try:
        sock.recv(1)
    except socket.timeout:
        return True
    finally:
        sock.settimeout(DEADLINE)
    return False


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def proxy_threads(proxy: TcpProxy) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"TcpProxy-{proxy.port}"]


# ---------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------


def test_pass_forwards_both_ways_with_backpressure_and_half_close(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port, buffer_size=4096)
    assert proxy.mode == "pass"
    assert proxy.target == ("127.0.0.1", echo_port)
    assert 0 < proxy.port < 32768
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        # 2 MiB through 4 KiB buffers: the proxy must pause reading, not drop.
        payload = bytes(range(256)) * 8192
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(DEADLINE)
        # Half close: our EOF reaches the echo server, which hangs up; we see EOF.
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    stats = proxy.stats()
    assert stats["bytes_up"] == stats["bytes_down"] == len(payload) + 5
    wait_until(lambda: proxy.stats()["active"] == 0, "the finished link to be dropped")


def test_blackhole_holds_everything_then_delivers_it(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port)
    with connect(proxy) as old:
        assert roundtrip(old) == b"ping"
        proxy.set_mode("blackhole")
        assert proxy.mode == "blackhole"
        before = proxy.stats()
        old.sendall(b"held")
        with connect(proxy) as new:  # accepted, but never reaches the server
            new.sendall(b"new")
            assert nothing_arrives(old)
            assert nothing_arrives(new)
            after = proxy.stats()
            assert (after["bytes_up"], after["bytes_down"]) == (
                before["bytes_up"],
                before["bytes_down"],
            )
            assert after["accepted"] == before["accepted"] + 1
            proxy.set_mode("pass")  # nothing was lost: TCP would retransmit
            assert recv_exactly(old, 4) == b"held"
            assert recv_exactly(new, 3) == b"new"


def test_refuse_closes_the_listener_but_keeps_established_connections(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port)
    port = proxy.port
    with connect(proxy) as old:
        assert roundtrip(old) == b"ping"
        proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, port), timeout=DEADLINE)
        assert roundtrip(old, b"still") == b"still"
        proxy.set_mode("pass")
        assert proxy.port == port
        with connect(proxy) as new:
            assert roundtrip(new) == b"ping"


def test_reset_resets_established_connections_and_refuses_new_ones(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port)
    with connect(proxy) as old:
        assert roundtrip(old) == b"ping"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            old.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=DEADLINE)
    assert proxy.stats()["resets"] == 1
    assert proxy.stats()["active"] == 0
    proxy.set_mode("pass")
    with connect(proxy) as new:
        assert roundtrip(new) == b"ping"


def test_reset_all_keeps_serving_new_connections(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port)
    first, second = connect(proxy), connect(proxy)
    try:
        assert roundtrip(first) == roundtrip(second) == b"ping"
        assert proxy.reset_all() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        assert proxy.mode == "pass"
        with connect(proxy) as new:
            assert roundtrip(new) == b"ping"
    finally:
        first.close()
        second.close()


def test_blackhole_connections_can_be_reset_and_refused(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port, mode="blackhole")
    with connect(proxy) as held:
        held.sendall(b"x")
        proxy.set_mode("reset")  # held connections are reset too
        with pytest.raises(ConnectionResetError):
            held.recv(1)


def test_latency_delays_every_chunk(make_proxy: Callable[..., TcpProxy], echo_port: int) -> None:
    proxy = make_proxy(echo_port)
    with connect(proxy) as sock:
        proxy.set_latency(0.2)
        assert proxy.latency == 0.2
        start = time.monotonic()
        assert roundtrip(sock) == b"ping"
        # Each direction waits 0.2 s: a lower bound, which noise cannot break.
        assert time.monotonic() - start >= 0.4
        proxy.set_mode("pass", latency=0)
        assert roundtrip(sock, b"fast") == b"fast"


def test_server_not_listening_closes_the_client(make_proxy: Callable[..., TcpProxy]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = int(probe.getsockname()[1])
    proxy = make_proxy(dead_port)
    try:
        with connect(proxy) as sock:
            assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    wait_until(lambda: proxy.stats()["active"] == 0, "the failed link to be dropped")


def test_connections_beyond_max_connections_are_reset(
    make_proxy: Callable[..., TcpProxy], echo_port: int
) -> None:
    proxy = make_proxy(echo_port, max_connections=2)
    first, second = connect(proxy), connect(proxy)
    try:
        assert roundtrip(first) == roundtrip(second) == b"ping"
        try:  # the reset may come before connect() returns, or after
            with connect(proxy) as third:
                assert third.recv(1) == b""
        except ConnectionResetError:
            pass
        assert proxy.stats()["rejected"] == 1
        assert roundtrip(first) == b"ping"
    finally:
        first.close()
        second.close()


def test_close_stops_the_thread_closes_sockets_and_frees_the_port(echo_port: int) -> None:
    proxy = TcpProxy(echo_port)
    assert len(proxy_threads(proxy)) == 1
    sock = connect(proxy)
    try:
        assert roundtrip(sock) == b"ping"
        with proxy:
            pass
        assert proxy.closed
        assert proxy_threads(proxy) == []
        assert sock.recv(1) == b""
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=DEADLINE)
    proxy.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        proxy.set_mode("pass")
    again = TcpProxy(echo_port, port=proxy.port)  # the port is free again
    again.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "drop"}, ValueError),
        ({"host": "10.1.2.3"}, ValueError),
        ({"host": "example.com"}, ValueError),
        ({"target_host": "192.0.2.1"}, ValueError),
        ({"latency": -1}, ValueError),
        ({"latency": "1"}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"port": 70000}, ValueError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        TcpProxy(5432, **kwargs)  # type: ignore[arg-type]


def test_bad_mode_changes_are_refused(make_proxy: Callable[..., TcpProxy], echo_port: int) -> None:
    proxy = make_proxy(echo_port)
    with pytest.raises(ValueError, match="mode must be one of"):
        proxy.set_mode("drop")
    with pytest.raises(ValueError, match="latency"):
        proxy.set_latency(-0.5)
    assert proxy.mode == "pass"
    assert proxy.latency == 0.0


# ---------------------------------------------------------------------------
# With PostgreSQL
# ---------------------------------------------------------------------------


def test_postgres_through_the_proxy(
    make_proxy: Callable[..., TcpProxy], postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    proxy = make_proxy(postgres_server.port)
    dsn = proxy.make_dsn(postgres_dsn)
    params = psycopg2.extensions.parse_dsn(dsn)
    assert (params["host"], params["port"]) == (proxy.host, str(proxy.port))
    assert params["dbname"] == psycopg2.extensions.parse_dsn(postgres_dsn)["dbname"]
    assert select_one(proxy.dsn_for(postgres_server)) == 1
    assert select_one(dsn) == 1

    # reset_all: an open connection fails on its next use, as after a network reset.
    conn = psycopg2.connect(dsn)
    try:
        proxy.reset_all()
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert conn.closed
    finally:
        conn.close()

    proxy.set_mode("refuse")
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        select_one(dsn)
    proxy.set_mode("blackhole")  # the connect hangs until connect_timeout (2 s minimum)
    start = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        select_one(dsn, connect_timeout=2)
    assert time.monotonic() - start < 2 + DEADLINE  # no hang
    proxy.set_mode("pass")
    assert select_one(dsn) == 1


def test_postmaster_paused_behind_a_passing_proxy(
    make_proxy: Callable[..., TcpProxy], postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    """The proxy's upstream connect completes in the kernel backlog of a paused
    server, so clients behind it see the same hang as direct clients."""
    proxy = make_proxy(postgres_server.port)
    dsn = proxy.make_dsn(postgres_dsn)
    postgres_server.pause()
    try:
        with pytest.raises(psycopg2.OperationalError, match="timeout"):
            select_one(dsn, connect_timeout=2)
    finally:
        postgres_server.resume()
    assert select_one(dsn) == 1
