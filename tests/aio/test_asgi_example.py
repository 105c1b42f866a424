"""examples/asgi_app.py through an ASGI test client: the pool opens in the
app's lifespan, serves every request, and closes with the app."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import psycopg
from starlette.testclient import TestClient

from pgreservoir.testing import PostgresServer
from support import wait_until

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "asgi_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("asgi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_asgi_app_uses_the_pool_per_request(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"])
    app = load_example().create_app(postgres_dsn)
    with TestClient(app) as client:
        pool = app.state.pool
        assert pool.stats()["size"] == 2  # opened in the lifespan
        assert client.get("/notes").json() == []
        created = client.post("/notes", json={"body": "first"})
        assert created.status_code == 201
        assert client.post("/notes", json={"body": ""}).status_code == 400
        # Concurrent requests (the test client runs the app on its own loop).
        with concurrent.futures.ThreadPoolExecutor(8) as executor:
            statuses = list(executor.map(
                lambda i: client.post("/notes", json={"body": f"note {i}"}).status_code,
                range(40),
            ))
        assert statuses == [201] * 40
        notes = client.get("/notes").json()
        assert len(notes) == 41
        health = client.get("/health").json()
        assert health["ok"] is True
        assert health["pool"]["in_use"] == 0
        assert health["pool"]["size"] <= 10
        assert postgres_server.connection_count(dbname) == health["pool"]["size"]
    # The lifespan closed the pool: nothing left on the server, no task running.
    assert pool.closed
    assert pool._shell.tasks == set()
    # The pool has closed its sockets; each backend leaves pg_stat_activity
    # once it has read the goodbye and exited, a moment later.
    wait_until(
        lambda: postgres_server.connection_count(dbname) == 0, "the server's backends to exit"
    )
