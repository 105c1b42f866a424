"""Start a throwaway PostgreSQL for SQLAlchemy's own test suite and print its URLs.

SQLAlchemy's suite expects a database ``test`` with the schemas
``test_schema`` and ``test_schema_2``, and prepared transactions enabled.
Runs until interrupted (Ctrl-C or SIGTERM), then removes the server.

    python tools/sqlalchemy_suite/server.py > /tmp/sqla-suite/url.txt &
"""

from __future__ import annotations

import signal
import sys
import threading

from pgreservoir.testing import PostgresServer


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = {"max_prepared_transactions": "10", "max_connections": "400"}
    with PostgresServer(user="scott", settings=settings, max_connections=400) as server:
        server.create_database("test")
        conn = server.connect(dbname="test")
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE SCHEMA test_schema")
                cur.execute("CREATE SCHEMA test_schema_2")
                for extension in ("hstore", "citext"):
                    try:
                        cur.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
                    except Exception as exc:  # the suite skips what needs it
                        print(f"# no {extension}: {exc}", file=sys.stderr)
        finally:
            conn.close()
        base = f"scott@{server.host}:{server.port}/test"
        print(f"postgresql+psycopg2://{base}")
        print(f"postgresql+psycopg://{base}")
        print(f"postgresql+psycopg_async://{base}", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
