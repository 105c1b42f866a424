"""A forked child opens connections only when it uses the pool (issue 15).

Before, every child (a multiprocessing worker that never touches the
database too) opened ``min_size`` connections at once.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any, Callable, Dict, List

from pgreservoir import ConnectionPool
from pgreservoir.testing import PostgresServer
from support import DEADLINE, Flavor, backend_pid, scalar, wait_until


def _backends(server: PostgresServer, app: str) -> int:
    admin = server.connect()
    try:
        return int(
            scalar(
                admin,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (app,),
            )
        )
    finally:
        admin.close()


def _in_child(body: Callable[[], Dict[str, Any]]) -> Any:
    """Fork; the child runs ``body``, reports its result, then waits for the
    parent's word before exiting. Returns the result and ``release()``, which
    gives that word and returns the child's exit status."""
    results_r, results_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(results_r)
            os.close(go_w)
            try:
                report = body()
            except BaseException as exc:
                report = {"error": repr(exc)}
            os.write(results_w, (json.dumps(report) + "\n").encode())
            os.read(go_r, 1)  # until the parent has looked
            code = 0
        finally:
            os._exit(code)
    os.close(results_w)
    os.close(go_r)
    with os.fdopen(results_r) as reader:
        line = reader.readline()

    def release() -> int:
        os.write(go_w, b"x")
        os.close(go_w)
        exited: List[int] = []

        def done() -> bool:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                exited.append(status)
            return bool(got)

        try:
            wait_until(done, "the child to exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        return exited[0]

    return json.loads(line or "{}"), release


def test_child_that_never_uses_the_pool_opens_nothing(
    postgres_server: PostgresServer, postgres_dsn: str, flavor: Flavor
) -> None:
    app = f"fork-idle-{uuid.uuid4().hex[:8]}"
    pool = ConnectionPool(
        postgres_dsn, min_size=2, max_size=4, application_name=app, **flavor.pool_kwargs
    )
    try:
        pool.wait(DEADLINE)
        assert _backends(postgres_server, app) == 2

        def child() -> Dict[str, Any]:
            stats = pool.stats()
            pool.wait(1.0)  # nothing to wait for: it opens on first use
            return {
                "size": stats["size"],
                "opening": stats["opening"],
                "thread": pool._shell.background_alive,
            }

        report, release = _in_child(child)
        try:
            assert report == {"size": 0, "opening": 0, "thread": False}, report
            # While the child lives, only the parent's connections exist.
            assert _backends(postgres_server, app) == 2
        finally:
            status = release()
        assert os.WIFEXITED(status)
        assert os.WEXITSTATUS(status) == 0
        with pool.connection() as conn:  # the parent is unaffected
            assert scalar(conn, "SELECT 1") == 1
        assert pool.stats()["connections_lost"] == 0
    finally:
        pool.close(0)


def test_child_that_uses_the_pool_connects_then_refills(
    postgres_server: PostgresServer, postgres_dsn: str, flavor: Flavor
) -> None:
    app = f"fork-used-{uuid.uuid4().hex[:8]}"
    pool = ConnectionPool(
        postgres_dsn, min_size=2, max_size=4, application_name=app, **flavor.pool_kwargs
    )
    try:
        pool.wait(DEADLINE)
        parent_pids = sorted(_pids(postgres_server, app))

        def child() -> Dict[str, Any]:
            with pool.connection(timeout=DEADLINE) as conn:
                one = scalar(conn, "SELECT 1")
                mine = backend_pid(conn)
            wait_until(lambda: pool.stats()["idle"] == 2, "the child's pool refilled")
            return {"one": one, "pid": mine, "size": pool.stats()["size"]}

        report, release = _in_child(child)
        try:
            assert report.get("one") == 1, report
            assert report["pid"] not in parent_pids
            assert report["size"] == 2
            # The child's two and the parent's two, all at once.
            wait_until(lambda: _backends(postgres_server, app) == 4, "four backends")
        finally:
            status = release()
        assert os.WIFEXITED(status)
        assert os.WEXITSTATUS(status) == 0
        # The child's backends end with it; the parent's stay.
        wait_until(
            lambda: sorted(_pids(postgres_server, app)) == parent_pids, "the child's backends gone"
        )
    finally:
        pool.close(0)


def _pids(server: PostgresServer, app: str) -> List[int]:
    admin = server.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
            return [int(row[0]) for row in cur.fetchall()]
    finally:
        admin.close()
