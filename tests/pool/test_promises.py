"""Issue 9 regression tests: promises the pool broke, one test per broken promise.

Each test states a promise of the public API (``ConnectionPool``, the
``pgreservoir.pool`` drop-in classes, ``pgreservoir.testing``) in its name and
checks it against a real PostgreSQL server, with network faults from
:class:`~pgreservoir.testing.TcpProxy`. They use nothing internal, so they run
unchanged against a rewritten engine.

How they stay bounded: every wait has a deadline (``wait_until``); a call that
may block (a getconn on a black-holed network, a close racing a hung connect)
runs in a daemon thread that is joined with a generous bound, several times
the timeout the promise names, and the test then unblocks it (the proxy goes
back to ``pass`` or is closed) before it ends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import select
import signal
import socket
import threading
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Type

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

from pgreservoir import ConnectionPool, PoolTimeout
from pgreservoir.testing import PostgresServer, TcpProxy
from support import DEADLINE, Flavor, backend_pid, scalar, wait_until

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class Call:
    """Run ``func`` in a daemon thread and keep its result or the exception it raised."""

    def __init__(self, func: Callable[[], Any], name: str) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(func,), name=name, daemon=True)
        self.thread.start()

    def _run(self, func: Callable[[], Any]) -> None:
        try:
            self.result = func()
        except BaseException as exc:
            self.error = exc

    def finished_within(self, seconds: float) -> bool:
        """Join the thread for up to ``seconds``; whether it has ended."""
        self.thread.join(seconds)
        return not self.thread.is_alive()


def unique_name(what: str) -> str:
    """A pool name no other pool (or its threads) shares."""
    return f"promise-{what}-{uuid.uuid4().hex[:8]}"


def pool_threads(name: str) -> List[threading.Thread]:
    """Live threads whose name carries the pool's name (the pool's background threads)."""
    return [t for t in threading.enumerate() if name in t.name]


def dbname_of(dsn: str) -> str:
    name: str = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    return name


def serves(pool: ConnectionPool, timeout: float = 0.5) -> bool:
    """Whether the pool hands out a working connection within ``timeout``."""
    try:
        conn = pool.getconn(timeout=timeout)
    except PoolTimeout:
        return False
    try:
        return bool(scalar(conn, "SELECT 1") == 1)
    finally:
        pool.putconn(conn)


def consistent(stats: Dict[str, Any]) -> bool:
    """Every counted connection is idle, in use or being opened: no slot is lost."""
    return bool(stats["size"] == stats["idle"] + stats["in_use"] + stats["opening"])


def socket_inodes_to(port: int) -> Set[str]:
    """``socket:[inode]`` links of this process's TCP sockets connected to ``port``."""
    found: Set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            link = os.readlink(f"/proc/self/fd/{name}")
        except (ValueError, OSError):
            continue
        if not link.startswith("socket:"):
            continue
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            peer = sock.getpeername()
        except OSError:
            continue
        finally:
            sock.close()
        if isinstance(peer, tuple) and peer[1] == port:
            found.add(link)
    return found


@pytest.fixture
def proxy(postgres_server: PostgresServer) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the session server, closed after the test."""
    with TcpProxy.for_server(postgres_server) as tcp_proxy:
        yield tcp_proxy


# ---------------------------------------------------------------------------
# 1. A process with more than 1024 open files
# ---------------------------------------------------------------------------


def test_getconn_works_with_more_than_1024_open_files(postgres_dsn: str, flavor: Flavor) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1024 + 512
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"hard RLIMIT_NOFILE {hard}"
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    fillers: List[int] = []

    def occupy_low_descriptors() -> None:
        # Take every free descriptor below 1024: new sockets get numbers >= 1024.
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
            if fillers[-1] >= 1024:
                return

    try:
        # psycopg2.pool works in such a process (the retries: see below).
        for _ in range(20):
            occupy_low_descriptors()
            reference = psycopg2.pool.SimpleConnectionPool(1, 1, postgres_dsn)
            conn = reference.getconn()
            if conn.fileno() >= 1024:
                break
            reference.closeall()
        try:
            assert conn.fileno() >= 1024
            assert scalar(conn, "SELECT 1") == 1
            reference.putconn(conn)
        finally:
            reference.closeall()

        pool = ConnectionPool(postgres_dsn, min_size=0, max_size=1, **flavor.pool_kwargs)
        try:
            # The premise: a high descriptor. Other threads of the test process
            # (earlier tests' pools winding down, the collector closing their
            # probes) may free a low one at any time: take it, and try again.
            for _ in range(20):
                occupy_low_descriptors()
                conn = pool.getconn(timeout=5)
                if conn.fileno() >= 1024:
                    break
                pool.putconn(conn, close=True)
            assert conn.fileno() >= 1024
            pid = backend_pid(conn)
            assert scalar(conn, "SELECT 1") == 1
            pool.putconn(conn)
            # The checkout check looks at it again: healthy, it must be reused,
            # not judged dead.
            conn = pool.getconn(timeout=5)
            assert backend_pid(conn) == pid
            assert scalar(conn, "SELECT 1") == 1
            pool.putconn(conn)
        finally:
            pool.close(0)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# 2. No step of getconn / putconn / close blocks without bound
# ---------------------------------------------------------------------------


def test_getconn_timeout_bounds_the_idle_check_on_a_blackholed_network(
    postgres_dsn: str, proxy: TcpProxy, flavor: Flavor
) -> None:
    # check_idle_after=0: every checkout makes a round trip first.
    pool = ConnectionPool(
        proxy.make_dsn(postgres_dsn), min_size=1, max_size=1, check_idle_after=0,
        **flavor.pool_kwargs,
    )
    call: Optional[Call] = None
    try:
        pool.wait(DEADLINE)
        proxy.set_mode("blackhole")
        call = Call(lambda: pool.getconn(timeout=1), "getconn-caller")
        assert call.finished_within(10), "getconn(timeout=1) still blocked after 10 s"
        assert call.error is None or isinstance(call.error, PoolTimeout), repr(call.error)
    finally:
        proxy.set_mode("pass")
        if call is not None:
            call.thread.join(DEADLINE)
            if call.result is not None:
                pool.putconn(call.result)
        pool.close(0)


def test_putconn_in_transaction_on_a_blackholed_network_returns(
    postgres_dsn: str, proxy: TcpProxy, flavor: Flavor
) -> None:
    pool = ConnectionPool(
        proxy.make_dsn(postgres_dsn),
        min_size=1,
        max_size=1,
        **flavor.pool_kwargs,
    )
    call: Optional[Call] = None
    try:
        conn = pool.getconn(timeout=DEADLINE)
        assert scalar(conn, "SELECT 1") == 1  # opens a transaction: putconn must roll back
        proxy.set_mode("blackhole")
        call = Call(lambda: pool.putconn(conn), "putconn-caller")
        # The rollback is bounded (5 s by default): generous bound.
        assert call.finished_within(20), "putconn() still blocked in the rollback after 20 s"
        assert call.error is None, repr(call.error)
        assert pool.stats()["in_use"] == 0
        proxy.set_mode("pass")
        assert serves(pool, timeout=DEADLINE)  # the slot was freed
    finally:
        proxy.set_mode("pass")
        if call is not None:
            call.thread.join(DEADLINE)
        pool.close(0)


def test_close_returns_while_a_putconn_is_stuck_in_its_rollback(
    postgres_dsn: str, proxy: TcpProxy, flavor: Flavor
) -> None:
    pool = ConnectionPool(
        proxy.make_dsn(postgres_dsn),
        min_size=1,
        max_size=1,
        **flavor.pool_kwargs,
    )
    putter: Optional[Call] = None
    closer: Optional[Call] = None
    try:
        conn = pool.getconn(timeout=DEADLINE)
        assert scalar(conn, "SELECT 1") == 1
        proxy.set_mode("blackhole")
        putter = Call(lambda: pool.putconn(conn), "putconn-caller")
        wait_until(lambda: pool.stats()["in_use"] == 0, "putconn to be under way")
        closer = Call(lambda: pool.close(timeout=1), "closer")
        assert closer.finished_within(10), "close(timeout=1) still blocked after 10 s"
        assert closer.error is None, repr(closer.error)
        assert putter.finished_within(10), "putconn() still blocked 10 s after close()"
    finally:
        proxy.set_mode("pass")
        for call in (putter, closer):
            if call is not None:
                call.thread.join(DEADLINE)
        pool.close(0)


def test_drop_in_getconn_with_a_timeout_is_bounded_while_connects_hang(
    postgres_server: PostgresServer,
) -> None:
    # The drop-in connects in the caller's thread only when the caller does
    # not wait (psycopg2's semantics); with a timeout it waits for a
    # background connect, so a hanging connect cannot hold it past the timeout.
    import pgreservoir.pool as compat

    with TcpProxy.for_server(postgres_server, mode="blackhole") as proxy:
        pool = compat.ThreadedConnectionPool(
            0,
            2,
            proxy.dsn_for(postgres_server, connect_timeout=60),
            pool_options=compat.PoolOptions(timeout=1.0),
        )
        call: Optional[Call] = None
        try:
            call = Call(pool.getconn, "drop-in-getconn")
            assert call.finished_within(10), "getconn() with timeout=1 still blocked after 10 s"
            assert isinstance(call.error, PoolTimeout), repr(call.error)
            assert str(call.error) == "connection pool exhausted"
        finally:
            proxy.set_mode("pass")
            if call is not None:
                call.thread.join(DEADLINE)
            pool.closeall()


# ---------------------------------------------------------------------------
# 3. An exception in a wait or a callback does not lose a slot
# ---------------------------------------------------------------------------


class Interrupt(BaseException):
    """Raised by a signal handler in the main thread, like KeyboardInterrupt."""


def test_getconn_interrupted_while_waiting_does_not_lose_the_slot(
    postgres_dsn: str, flavor: Flavor
) -> None:
    assert threading.current_thread() is threading.main_thread()
    main = threading.main_thread().ident
    assert main is not None

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise Interrupt()

    pool = ConnectionPool(postgres_dsn, min_size=1, max_size=1, **flavor.pool_kwargs)
    previous = signal.signal(signal.SIGUSR1, raise_interrupt)
    interrupter: Optional[threading.Thread] = None
    try:
        held = pool.getconn(timeout=DEADLINE)

        def interrupt_the_waiter() -> None:
            wait_until(lambda: pool.stats()["waiting"] == 1, "the main thread in line")
            signal.pthread_kill(main, signal.SIGUSR1)

        interrupter = threading.Thread(target=interrupt_the_waiter, daemon=True)
        interrupter.start()
        with pytest.raises(Interrupt):
            pool.getconn(timeout=DEADLINE)
        interrupter.join(DEADLINE)
        pool.putconn(held)
        # The interrupted caller left the line: the only slot serves again.
        conn = pool.getconn(timeout=5)
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
        assert pool.stats()["waiting"] == 0
    finally:
        if interrupter is not None:
            interrupter.join(DEADLINE)
        signal.signal(signal.SIGUSR1, previous)
        pool.close(0)


class CallbackAbort(BaseException):
    """A BaseException (not an Exception) raised by a user callback."""


@pytest.mark.parametrize("error", [CallbackAbort, KeyboardInterrupt])
def test_reset_raising_base_exception_propagates_and_frees_the_slot(
    postgres_dsn: str, error: Type[BaseException], flavor: Flavor
) -> None:
    raised: List[bool] = []

    def reset(conn: Any) -> None:
        if not raised:
            raised.append(True)
            raise error("from reset()")

    pool = ConnectionPool(
        postgres_dsn, min_size=1, max_size=1, reset=reset, **flavor.pool_kwargs
    )
    try:
        conn = pool.getconn(timeout=DEADLINE)
        with pytest.raises(error):
            pool.putconn(conn)
        # The slot is free again: the one-connection pool serves.
        conn = pool.getconn(timeout=5)
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
        wait_until(lambda: consistent(pool.stats()), "consistent stats (no slot lost)")
        assert pool.stats()["in_use"] == 0
    finally:
        pool.close(0)


# ---------------------------------------------------------------------------
# 4. fail_fast does not jam
# ---------------------------------------------------------------------------


def test_fail_fast_pool_connects_again_once_the_server_is_back(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    with TcpProxy.for_server(postgres_server, mode="refuse") as proxy:
        pool = ConnectionPool(proxy.make_dsn(postgres_dsn), min_size=0, max_size=2, fail_fast=True)
        try:
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=DEADLINE)  # fails fast on the refused connect
            proxy.set_mode("pass")
            # Nobody waits now; the server is back: the pool must serve again.
            wait_until(lambda: serves(pool), "the pool to serve again", timeout=10)
        finally:
            pool.close(0)


# ---------------------------------------------------------------------------
# 5. close() against the background work
# ---------------------------------------------------------------------------


def test_close_stops_configure_of_a_connect_in_progress(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    close_returned = threading.Event()
    after_close: List[bool] = []

    def configure(conn: Any) -> None:
        after_close.append(close_returned.is_set())

    name = unique_name("configure")
    # Every chunk delayed 0.3 s: the connect takes seconds.
    with TcpProxy.for_server(postgres_server, latency=0.3) as proxy:
        pool = ConnectionPool(
            proxy.make_dsn(postgres_dsn), min_size=1, configure=configure, name=name
        )
        try:
            wait_until(lambda: proxy.stats()["accepted"] >= 1, "the connect to be in progress")
            assert pool.stats()["connections_opened"] == 0
            pool.close(0)
            close_returned.set()
            # Wait for the connect to be over (the pool's thread gone, the
            # proxied connection closed), then look at what ran.
            wait_until(lambda: not pool_threads(name), "the pool's thread to end")
            wait_until(lambda: proxy.stats()["active"] == 0, "the connection to be closed")
            assert True not in after_close, "configure() ran after close() had returned"
        finally:
            close_returned.set()
            pool.close(0)


def test_close_returns_promptly_while_a_background_connect_hangs(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    with TcpProxy.for_server(postgres_server, mode="blackhole") as proxy:
        pool = ConnectionPool(proxy.make_dsn(postgres_dsn), min_size=1, connect_timeout=60)
        closer: Optional[Call] = None
        try:
            wait_until(lambda: proxy.stats()["accepted"] >= 1, "the connect to hang")
            closer = Call(lambda: pool.close(timeout=30), "closer")
            # Nothing is in use: close has nothing to wait for.
            assert closer.finished_within(10), (
                "close(timeout=30) with nothing in use still blocked after 10 s"
            )
            assert closer.error is None, repr(closer.error)
        finally:
            proxy.set_mode("pass")
            if closer is not None:
                closer.thread.join(DEADLINE)
            pool.close(0)


def test_background_threads_exit_after_close_once_the_hung_connect_returns(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    # Does not fail on the engine issue 9 was filed against (its thread already
    # exits once the connect returns); kept as a guard for the rewrite.
    name = unique_name("threads")
    with TcpProxy.for_server(postgres_server, mode="blackhole") as proxy:
        pool = ConnectionPool(
            proxy.make_dsn(postgres_dsn), min_size=1, connect_timeout=60, name=name
        )
        try:
            wait_until(lambda: proxy.stats()["accepted"] >= 1, "the connect to hang")
            assert pool_threads(name), "no background thread named after the pool"
            pool.close(0)
            proxy.set_mode("pass")  # the hung connect completes
            wait_until(lambda: not pool_threads(name), "the pool's threads to exit")
            assert pool.stats()["size"] == 0
        finally:
            proxy.set_mode("pass")
            pool.close(0)


class _PauseOnPoolRecord(logging.Handler):
    """Holds the pool's background thread in its first log record after it opened
    a connection, until the test has closed the pool (``resume``)."""

    def __init__(self, pool_name: str, pool: List[ConnectionPool]) -> None:
        super().__init__(logging.DEBUG)
        self._pool_name = pool_name
        self._pool = pool
        self.paused = threading.Event()
        self.resume = threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:
        # Overrides handle() (not emit()) so that no handler lock is held while paused.
        if self.paused.is_set() or self._pool_name not in threading.current_thread().name:
            return True
        if self._pool[0].stats()["connections_opened"] < 1:
            return True
        self.paused.set()
        self.resume.wait(DEADLINE)
        return True


def test_close_never_closes_a_connection_twice(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    name = unique_name("twice")
    logger = logging.getLogger("pgreservoir")
    holder: List[ConnectionPool] = []
    handler = _PauseOnPoolRecord(name, holder)
    level = logger.level
    with TcpProxy.for_server(postgres_server, mode="refuse") as proxy:
        pool = ConnectionPool(proxy.make_dsn(postgres_dsn), min_size=1, max_size=1, name=name)
        holder.append(pool)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        try:
            wait_until(lambda: pool.stats()["connect_errors"] >= 1, "a failed connect")
            proxy.set_mode("pass")
            # The pool opens its connection; if it logs (its recovery) from its
            # background thread afterwards, close() runs right then.
            wait_until(
                lambda: handler.paused.is_set() or pool.stats()["idle"] == 1,
                "the connection to be opened",
            )
            pool.close(0)
            handler.resume.set()
            wait_until(lambda: not pool_threads(name), "the pool's thread to end")
            stats = pool.stats()
            assert stats["size"] == 0, stats
            assert stats["connections_closed"] == stats["connections_opened"], stats
            wait_until(
                lambda: postgres_server.connection_count(dbname_of(postgres_dsn)) == 0,
                "no connection left on the server",
            )
        finally:
            handler.resume.set()
            logger.removeHandler(handler)
            logger.setLevel(level)
            pool.close(0)


# ---------------------------------------------------------------------------
# 6. The background work survives what escapes it
# ---------------------------------------------------------------------------


class ConfigureAbort(BaseException):
    """A BaseException raised by configure() once."""


def test_background_work_survives_a_base_exception_from_configure(
    postgres_dsn: str, flavor: Flavor
) -> None:
    calls: List[int] = []

    def configure(conn: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConfigureAbort("configure() failed once")

    pool = ConnectionPool(
        postgres_dsn, min_size=1, max_size=1, configure=configure, **flavor.pool_kwargs
    )
    try:
        wait_until(lambda: len(calls) >= 1, "the first connect")
        conn = pool.getconn(timeout=10)
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
    finally:
        pool.close(0)


# ---------------------------------------------------------------------------
# 7. Passwords never appear
# ---------------------------------------------------------------------------


def test_repr_does_not_show_sslpassword(postgres_dsn: str) -> None:
    pool = ConnectionPool(postgres_dsn, min_size=0, sslpassword="Ssl-s3cret-0451")
    try:
        assert "Ssl-s3cret-0451" not in repr(pool)
        assert "Ssl-s3cret-0451" not in str(pool)
    finally:
        pool.close(0)


@pytest.mark.parametrize(
    ("dsn", "secrets"),
    [
        ("host=127.0.0.1 password=correct horse", ["horse"]),
        ("postgresql://user:secretpw@[127.0.0.1/db", ["secretpw"]),
        ("postgresql://user:secret%zzpw@127.0.0.1/db", ["zzpw"]),
    ],
    ids=["keyword-dsn", "uri-bad-host", "uri-bad-password-escape"],
)
def test_malformed_dsn_error_does_not_echo_the_password(dsn: str, secrets: List[str]) -> None:
    with pytest.raises(ValueError, match=r"(?i)dsn|connection|conninfo|uri") as info:
        ConnectionPool(dsn, min_size=0)
    error = info.value
    shown = [str(error)]
    if error.__cause__ is not None:
        shown.append(str(error.__cause__))
    if error.__context__ is not None and not error.__suppress_context__:
        shown.append(str(error.__context__))
    for secret in secrets:
        for text in shown:
            assert secret not in text, f"password text {secret!r} shown in {text!r}"


# ---------------------------------------------------------------------------
# 8. No dead connection handed out; lost idle ones replaced
# ---------------------------------------------------------------------------


def wait_for_hangup(conn: Any, timeout: float) -> None:
    """Wait until the server's goodbye (FATAL, EOF) is readable on ``conn``'s socket.

    Only polls the descriptor (reads nothing), so it does not disturb a
    connection the pool holds; if the pool already closed it, that is fine too.
    """
    try:
        fd = conn.fileno()
    except Exception:  # psycopg2 or psycopg: closed already
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(timeout * 1000), "the server did not hang up"


def backend_gone(admin: Any, pid: int) -> bool:
    """Whether the server process ``pid`` has left pg_stat_activity."""
    return bool(scalar(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0)


def test_connection_terminated_right_after_return_is_not_handed_out(
    postgres_server: PostgresServer, postgres_dsn: str, flavor: Flavor
) -> None:
    pool = ConnectionPool(postgres_dsn, min_size=1, max_size=1, **flavor.pool_kwargs)
    admin = postgres_server.connect()
    failures: List[str] = []
    rounds = 40
    try:
        for attempt in range(rounds):
            conn = pool.getconn(timeout=DEADLINE)
            pid = backend_pid(conn)
            pool.putconn(conn)
            assert scalar(admin, "SELECT pg_terminate_backend(%s)", (pid,)) is True
            # The server has hung up (its FATAL is readable on the socket): the
            # connection is dead. Check out at once, without sleeping: within a
            # millisecond of the return is where a dead connection slipped out.
            wait_for_hangup(conn, DEADLINE)
            conn = pool.getconn(timeout=DEADLINE)
            try:
                scalar(conn, "SELECT 1")
            except flavor.Error as exc:
                failures.append(f"round {attempt}: {type(exc).__name__}: {str(exc).strip()}")
            pool.putconn(conn)
            wait_until(functools.partial(backend_gone, admin, pid), f"backend {pid} to exit")
        assert not failures, f"{len(failures)}/{rounds} dead connections handed out: {failures[0]}"
    finally:
        admin.close()
        pool.close(0)


def test_idle_connections_killed_server_side_are_replaced_without_a_caller(
    postgres_server: PostgresServer, postgres_dsn: str, flavor: Flavor
) -> None:
    dbname = dbname_of(postgres_dsn)
    pool = ConnectionPool(postgres_dsn, min_size=2, max_size=2, **flavor.pool_kwargs)
    try:
        pool.wait(DEADLINE)
        old = set(postgres_server.backend_pids(dbname))
        assert len(old) == 2
        assert postgres_server.terminate_backends(dbname) == 2

        def replaced() -> bool:
            now = set(postgres_server.backend_pids(dbname))
            return len(now) == 2 and not now & old

        # Nobody uses the pool: it must notice and replace them by itself.
        wait_until(replaced, "two new backends for the pool's database")
        assert pool.stats()["requests"] == 0
    finally:
        pool.close(0)


# ---------------------------------------------------------------------------
# 9. fork() while a connect is in flight
# ---------------------------------------------------------------------------


def test_fork_child_disowns_a_connection_being_opened(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    with TcpProxy.for_server(postgres_server, latency=0.3) as proxy:
        pool = ConnectionPool(
            proxy.make_dsn(postgres_dsn, sslmode="disable", gssencmode="disable"),
            min_size=1,
            max_size=1,
        )
        try:
            wait_until(lambda: proxy.stats()["accepted"] >= 1, "the connect to be in flight")
            in_flight = socket_inodes_to(proxy.port)
            assert len(in_flight) == 1, in_flight
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: report the sockets to the proxy it holds
                code = 1
                try:
                    os.close(read_end)
                    # Disowning at once is expected; a short grace is allowed.
                    with contextlib.suppress(AssertionError):
                        wait_until(
                            lambda: not socket_inodes_to(proxy.port) & in_flight,
                            "the inherited socket to be disowned",
                            timeout=5,
                        )
                    held = socket_inodes_to(proxy.port)
                    os.write(write_end, (" ".join(sorted(held)) + "\n").encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_end)
            # Still opening after the fork: the connect was in flight when it happened.
            assert pool.stats()["connections_opened"] == 0
            status: List[int] = []

            def child_exited() -> bool:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status.append(code)
                return bool(done)

            try:
                wait_until(child_exited, "the child to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise
            with os.fdopen(read_end) as reader:
                held_by_child = set(reader.readline().split())
            assert os.WIFEXITED(status[0])
            assert os.WEXITSTATUS(status[0]) == 0
            assert not held_by_child & in_flight, (
                "the child still holds the parent's connection being opened"
            )
        finally:
            pool.close(0)


# ---------------------------------------------------------------------------
# 10. Subclasses can override putconn()
# ---------------------------------------------------------------------------


def test_subclass_putconn_override_is_called(postgres_dsn: str) -> None:
    returned: List[Any] = []

    class RecordingPool(ConnectionPool):
        def putconn(self, conn: Any, close: bool = False) -> None:
            returned.append(conn)
            super().putconn(conn, close)

    pool = RecordingPool(postgres_dsn, min_size=1, max_size=1)
    try:
        conn = pool.getconn(timeout=DEADLINE)
        pool.putconn(conn)
        assert returned == [conn]
        assert pool.stats()["in_use"] == 0
    finally:
        pool.close(0)
