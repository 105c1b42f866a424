"""ReservoirPool keeps SQLAlchemy's pool contract, against a real server, on both drivers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, List, Tuple

import pytest
import sqlalchemy
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Engine

from pgreservoir import PoolOptions
from pgreservoir.sqlalchemy import ReservoirPool
from pgreservoir.testing import PostgresServer
from support import wait_until

MakeEngine = Callable[..., Engine]


def _pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _checkedout(engine: Engine) -> int:
    pool = engine.pool
    assert isinstance(pool, ReservoirPool)
    return pool.checkedout()


def _record(engine: Engine, names: Tuple[str, ...]) -> List[str]:
    seen: List[str] = []
    for name in names:
        event.listen(engine, name, lambda *args, _name=name: seen.append(_name))
    return seen


def test_importing_pgreservoir_does_not_import_sqlalchemy() -> None:
    code = "import sys, pgreservoir; assert 'sqlalchemy' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_events_fire_as_sqlalchemy_documents(make_engine: MakeEngine) -> None:
    engine = make_engine(pool_size=2, max_overflow=0)
    # Listeners added after create_engine() see every connection handed out.
    seen = _record(
        engine,
        (
            "first_connect",
            "connect",
            "checkout",
            "reset",
            "checkin",
            "invalidate",
            "soft_invalidate",
            "close",
        ),
    )
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert seen == ["first_connect", "connect", "checkout", "reset", "checkin"]
    seen.clear()
    with engine.connect() as conn:
        conn.connection.invalidate(soft=True)
    assert seen == ["checkout", "soft_invalidate", "reset", "checkin"]
    seen.clear()
    with engine.connect() as conn:  # the soft-invalidated one is replaced at checkout
        conn.invalidate()
    assert seen[:3] == ["close", "connect", "checkout"]
    assert seen[3:5] == ["invalidate", "close"]
    assert seen[-1] == "checkin"
    seen.clear()
    with engine.connect() as conn:  # the invalidated record reconnects
        conn.execute(text("SELECT 1"))
    assert seen == ["connect", "checkout", "reset", "checkin"]
    seen.clear()
    engine.dispose()
    assert seen == ["close"]


def test_creator_connect_args_and_do_connect_apply(make_engine: MakeEngine, url: str) -> None:
    engine = make_engine(connect_args={"application_name": "from-connect-args"})
    with engine.connect() as conn:
        name = conn.execute(text("SELECT current_setting('application_name')")).scalar_one()
    assert name == "from-connect-args"

    calls: List[str] = []
    engine2 = make_engine()

    @event.listens_for(engine2, "do_connect")
    def do_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        calls.append("do_connect")
        cparams["application_name"] = "from-do-connect"

    with engine2.connect() as conn:
        name = conn.execute(text("SELECT current_setting('application_name')")).scalar_one()
    assert (calls, name) == (["do_connect"], "from-do-connect")

    made: List[Any] = []
    base = make_engine()

    def creator() -> Any:
        raw = base.dialect.connect(**base.dialect.create_connect_args(base.url)[1])
        made.append(raw)
        return raw

    engine3 = make_engine(creator=creator)
    with engine3.connect() as conn:
        assert conn.connection.dbapi_connection is made[0]


def test_status_and_queuepool_counters(make_engine: MakeEngine) -> None:
    engine = make_engine(pool_size=2, max_overflow=1, pool_timeout=None)
    pool = engine.pool
    assert isinstance(pool, ReservoirPool)
    assert (pool.size(), pool.timeout(), pool.checkedin(), pool.checkedout()) == (2, None, 0, 0)
    c1, c2, c3 = engine.connect(), engine.connect(), engine.connect()
    assert (pool.checkedout(), pool.overflow()) == (3, 1)
    assert "Current Checked out connections: 3" in pool.status()
    c3.close()
    c2.close()
    c1.close()
    # At most pool_size idle: the overflow connection was closed on return.
    assert (pool.checkedin(), pool.checkedout(), pool.overflow()) == (2, 0, 0)
    assert pool.stats()["idle"] == 2


def test_timeout_raises_sqlalchemy_timeout_error(make_engine: MakeEngine) -> None:
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.2)
    with engine.connect(), pytest.raises(exc.TimeoutError, match="timed out"):
        engine.connect()
    with engine.connect() as conn:  # the slot was not lost
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert _checkedout(engine) == 0


def test_dispose_recreate_keeps_listeners(
    make_engine: MakeEngine, postgres_server: PostgresServer, url: str
) -> None:
    engine = make_engine(pool_size=3, max_overflow=0, pool_logging_name="mine", echo_pool=False)
    dbname = url.rsplit("/", 1)[1]
    checkouts: List[str] = []
    event.listen(engine, "checkout", lambda *args: checkouts.append("x"))
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        conn.close()
    assert postgres_server.connection_count(dbname) == 3
    old = engine.pool
    engine.dispose()
    assert engine.pool is not old
    assert isinstance(engine.pool, ReservoirPool)
    assert engine.pool.size() == 3
    wait_until(lambda: postgres_server.connection_count(dbname) == 0, "idle connections closed")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert len(checkouts) == 4  # the listener came along to the new pool


def test_connection_out_across_dispose_is_closed_on_return(
    make_engine: MakeEngine, postgres_server: PostgresServer, url: str
) -> None:
    engine = make_engine()
    dbname = url.rsplit("/", 1)[1]
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    engine.dispose()
    assert conn.execute(text("SELECT 2")).scalar_one() == 2  # still usable by its holder
    conn.close()
    wait_until(lambda: postgres_server.connection_count(dbname) == 0, "returned one closed")


def test_terminated_idle_connection_is_never_handed_out(
    make_engine: MakeEngine, postgres_server: PostgresServer, url: str
) -> None:
    # No pool_pre_ping: the zero-round-trip probe finds the dead ones.
    engine = make_engine(pool_size=4, max_overflow=0)
    dbname = url.rsplit("/", 1)[1]
    held = [engine.connect() for _ in range(4)]
    pids = set()
    for conn in held:
        pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        conn.close()
    postgres_server.terminate_backends(dbname)
    for _ in range(8):
        assert _pid(engine) not in pids
    assert _checkedout(engine) == 0


def test_disconnect_in_use_invalidates(
    make_engine: MakeEngine, postgres_server: PostgresServer, url: str
) -> None:
    engine = make_engine(pool_size=2, max_overflow=0)
    dbname = url.rsplit("/", 1)[1]
    invalidated: List[Any] = []
    event.listen(engine, "invalidate", lambda conn, rec, err: invalidated.append(err))
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        postgres_server.terminate_backends(dbname)
        with pytest.raises(exc.DBAPIError) as caught:
            conn.execute(text("SELECT 1"))
        assert caught.value.connection_invalidated
    assert len(invalidated) == 1
    assert _pid(engine) != pid
    assert _checkedout(engine) == 0


def test_server_restart_survived_without_pre_ping(
    make_engine: MakeEngine, postgres_server: PostgresServer
) -> None:
    engine = make_engine(pool_size=4, max_overflow=0)
    held = [engine.connect() for _ in range(4)]
    for conn in held:
        conn.execute(text("SELECT 1"))
        conn.close()
    postgres_server.restart(mode="immediate")
    # Every checkout after the restart works: no user code, no pre-ping.
    for _ in range(10):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert _checkedout(engine) == 0


def test_connect_error_reaches_the_caller(make_engine: MakeEngine, url: str) -> None:
    bad = url.rsplit("/", 1)[0] + "/no_such_database"
    engine = sqlalchemy.create_engine(bad, poolclass=ReservoirPool)
    try:
        with pytest.raises(exc.OperationalError, match="no_such_database"):
            engine.connect()
        assert _checkedout(engine) == 0
    finally:
        engine.dispose()


def test_pre_ping_and_recycle(make_engine: MakeEngine, postgres_server: PostgresServer) -> None:
    engine = make_engine(pool_pre_ping=True, pool_size=1, max_overflow=0)
    pid = _pid(engine)
    postgres_server.terminate_backends()
    assert _pid(engine) != pid

    # pool_recycle=0: every checkout replaces a connection opened before it.
    recycled = make_engine(pool_recycle=0, pool_size=1, max_overflow=0)
    closes: List[str] = []
    event.listen(recycled, "close", lambda *args: closes.append("close"))
    pids = {_pid(recycled) for _ in range(3)}
    assert len(pids) == 3
    assert len(closes) >= 2


@pytest.mark.parametrize("reset", ["rollback", "commit"])
def test_reset_on_return(make_engine: MakeEngine, reset: str) -> None:
    engine = make_engine(pool_reset_on_return=reset, pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x int)"))
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("INSERT INTO t VALUES (1)")
    cur.close()
    raw.close()  # returned with the transaction open: the pool resets it
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
    assert count == (1 if reset == "commit" else 0)


def test_every_queuepool_keyword_is_accepted(make_engine: MakeEngine) -> None:
    engine = make_engine(
        pool_size=3,
        max_overflow=-1,
        pool_timeout=5,
        pool_recycle=3600,
        pool_pre_ping=True,
        pool_use_lifo=True,
        pool_reset_on_return="rollback",
        pool_logging_name="kw",
        echo_pool=False,
        pool_options=PoolOptions(max_lifetime=1200, barge_window=0.0),
    )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    pool = engine.pool
    assert isinstance(pool, ReservoirPool)
    assert pool.pool_options.max_lifetime == 1200
    assert pool.pool_options.name == "kw"
    assert pool.recreate().pool_options.max_lifetime == 1200


def test_pool_options_that_need_raw_connections_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="'connect' event"):
        sqlalchemy.create_engine(
            url, poolclass=ReservoirPool, pool_options=PoolOptions(configure=print)
        )
    with pytest.raises(TypeError, match="PoolOptions"):
        sqlalchemy.create_engine(url, poolclass=ReservoirPool, pool_options={"timeout": 1})


def test_leak_report(make_engine: MakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(pool_options=PoolOptions(leak_threshold=0.05))
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        pool = engine.pool
        assert isinstance(pool, ReservoirPool)
        wait_until(lambda: pool.stats()["connections_leaked"] >= 1, "a leak report")
    assert "test_leak_report" in caplog.text  # where the connection was taken


def test_fork_child_gets_its_own_connections(make_engine: MakeEngine) -> None:
    import os

    engine = make_engine(pool_size=2, max_overflow=0)
    parent_pid = _pid(engine)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 0 if _pid(engine) != parent_pid else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read(1)
    _, status = os.waitpid(child, 0)
    assert answer == b"\x00", answer
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection was left alone by the child.
    assert _pid(engine) == parent_pid


def test_idle_ping_keeps_a_transaction_left_open(make_engine: MakeEngine) -> None:
    # reset_on_return=None leaves the transaction to the user; the pool's
    # idle ping (check_idle_after=0: before every hand-out) runs inside it.
    engine = make_engine(
        pool_reset_on_return=None,
        pool_size=1,
        max_overflow=0,
        pool_options=PoolOptions(check_idle_after=0),
    )
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("CREATE TEMP TABLE left_open (x int)")
    cur.close()
    raw_conn: Any = raw.dbapi_connection
    pid = raw_conn.info.backend_pid
    raw.close()
    raw = engine.raw_connection()
    try:
        raw_conn = raw.dbapi_connection
        assert raw_conn.info.backend_pid == pid  # kept, not discarded
        cur = raw.cursor()
        cur.execute("SELECT count(*) FROM left_open")  # the same transaction
        row: Any = cur.fetchone()
        assert row[0] == 0
        cur.close()
    finally:
        raw.rollback()
        raw.close()
