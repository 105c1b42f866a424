"""A small ASGI app (Starlette) on ``pgreservoir.AsyncConnectionPool``.

The pool opens in the app's lifespan and closes with it; each request takes a
connection with ``async with pool.connection()``, which commits on success,
rolls back on error (or when the client goes away and the request is
cancelled), and always gives the connection back. Run it with::

    PGRESERVOIR_DSN="host=localhost dbname=scratch user=me" uvicorn asgi_app:app

(from this directory; ``pip install starlette uvicorn 'pgreservoir[psycopg]'``).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pgreservoir import AsyncConnectionPool, PoolTimeout


def create_app(dsn: str) -> Starlette:
    """The app, with its pool opened and closed by the lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncConnectionPool(dsn, min_size=2, max_size=10, timeout=5.0,
                                       name="asgi") as pool:
            await pool.wait()  # fail at start-up if the database is unreachable
            async with pool.connection() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL)"
                )
            app.state.pool = pool
            yield

    async def list_notes(request: Request) -> JSONResponse:
        async with request.app.state.pool.connection() as conn:
            cur = await conn.execute("SELECT id, body FROM notes ORDER BY id")
            rows = await cur.fetchall()
        return JSONResponse([{"id": i, "body": body} for i, body in rows])

    async def add_note(request: Request) -> JSONResponse:
        body = (await request.json()).get("body")
        if not isinstance(body, str) or not body:
            return JSONResponse({"error": "body must be a non-empty string"}, status_code=400)
        async with request.app.state.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO notes (body) VALUES (%s) RETURNING id", (body,)
            )
            row = await cur.fetchone()
        return JSONResponse({"id": row[0] if row else None, "body": body}, status_code=201)

    async def health(request: Request) -> JSONResponse:
        pool = request.app.state.pool
        try:
            async with pool.connection(timeout=1.0) as conn:
                await conn.execute("SELECT 1")
        except PoolTimeout as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": True, "pool": pool.stats()})

    routes = [
        Route("/notes", list_notes, methods=["GET"]),
        Route("/notes", add_note, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


app = create_app(os.environ.get("PGRESERVOIR_DSN", ""))
