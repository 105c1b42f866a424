"""A tiny Django project for the backend's tests: settings, one view, its URLconf.

Settings are made in-test (``settings.configure``) against a PostgreSQL
server of the tests' own, so every alias points at a real database:

``default``  pooled (max_size 4): the project's requests go here
``small``    pooled, max_size 1, CONN_HEALTH_CHECKS: every checkout gets the same backend
``role``     pooled with ``assume_role`` and a user ``configure`` that counts calls
``tmpl``     pooled, on a database of its own (used as a CREATE DATABASE template)
``direct``   ``OPTIONS["pool"]`` False: a new connection per connect, as Django does
``docs``     docs/django.md's settings example

The module is also the ROOT_URLCONF.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

from pgreservoir.testing import PostgresServer

__all__ = [
    "DRIVER",
    "MAX_SIZE",
    "backends",
    "configure",
    "configure_calls",
    "urlpatterns",
    "wait_until",
]

#: Which driver this process expects Django to have picked: the psycopg2 run
#: of these tests sets it, with ``import psycopg`` made to fail.
DRIVER = os.environ.get("PGRESERVOIR_TEST_DJANGO_DRIVER", "psycopg")

MAX_SIZE = 4
DBNAME = "django_app"
TEMPLATE_DB = "django_tmpl"
APP_NAME = "pgr-django-default"  # tells the default alias's backends from the others
ROLE = "django_owner"

_calls_lock = threading.Lock()
_calls: List[int] = [0]


def configure_calls() -> int:
    """How often the ``role`` alias's own ``configure`` ran (once per new connection)."""
    with _calls_lock:
        return _calls[0]


def _count_configure(conn: Any) -> None:
    with _calls_lock:
        _calls[0] += 1


def _database(server: PostgresServer, name: str, **extra: Any) -> Dict[str, Any]:
    return {
        "ENGINE": "pgreservoir.django",
        "NAME": name,
        "USER": server.user,
        "HOST": server.host,
        "PORT": str(server.port),
        **extra,
    }


def docs_example() -> Dict[str, Any]:
    """The DATABASES of docs/django.md's settings example (its first python block)."""
    text = (Path(__file__).parents[2] / "docs" / "django.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: Dict[str, Any] = {}
    exec(block, namespace)
    databases: Dict[str, Any] = namespace["DATABASES"]
    return databases


def configure(server: PostgresServer) -> None:
    """settings.configure() for this project on ``server``, then django.setup()."""
    from django.conf import settings

    import django

    server.create_database(DBNAME)
    server.create_database(TEMPLATE_DB)
    admin = connect_admin(server)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {ROLE}")
    finally:
        admin.close()
    settings.configure(
        DEBUG=False,
        SECRET_KEY="pgreservoir-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        USE_TZ=False,  # the connections then use TIME_ZONE
        TIME_ZONE="Asia/Tokyo",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.postgres"],
        MIDDLEWARE=[],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        DATABASES={
            "default": _database(
                server,
                DBNAME,
                OPTIONS={
                    "application_name": APP_NAME,
                    "pool": {"max_size": MAX_SIZE, "timeout": 30},
                },
            ),
            "small": _database(
                server,
                DBNAME,
                CONN_HEALTH_CHECKS=True,
                OPTIONS={"pool": {"min_size": 1, "max_size": 1, "timeout": 10}},
            ),
            "role": _database(
                server,
                DBNAME,
                OPTIONS={
                    "assume_role": ROLE,
                    "pool": {"max_size": 2, "configure": _count_configure},
                },
            ),
            "tmpl": _database(server, TEMPLATE_DB, OPTIONS={"pool": True}),
            "direct": _database(server, DBNAME, OPTIONS={}),
            # docs/django.md's example as it is, but for where the server is.
            "docs": {
                **docs_example()["default"],
                **{k: v for k, v in _database(server, DBNAME).items() if k != "ENGINE"},
            },
        },
    )
    django.setup()
    with connections["default"].cursor() as cur:
        cur.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
        cur.execute(f"GRANT ALL ON items TO {ROLE}")
    connections["default"].close()


def connect_admin(server: PostgresServer, dbname: str = "postgres") -> Any:
    """A connection outside Django and its pools, in autocommit (psycopg2 or psycopg 3)."""
    if DRIVER == "psycopg2":
        import psycopg2

        conn = psycopg2.connect(server.make_dsn(dbname))
        conn.autocommit = True
        return conn
    import psycopg

    return psycopg.connect(server.make_dsn(dbname), autocommit=True)


def backends(admin: Any, dbname: str = DBNAME, app: str = "%") -> int:
    """Client backends connected to ``dbname`` now (the admin connection aside),
    of applications named like ``app``."""
    with admin.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
            "AND application_name LIKE %s",
            [dbname, app],
        )
        row = cur.fetchone()
    return int(row[0])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` s.
    (tests/support.py's twin: that module imports psycopg, which the psycopg2
    run of these tests must not.)"""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def pid_view(request: HttpRequest) -> HttpResponse:
    """The backend serving this request, and its time zone, after a short query."""
    with connections["default"].cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), current_setting('TimeZone'), pg_sleep(0.002)")
        pid, zone, _ = cur.fetchone()
    return HttpResponse(f"{pid} {zone}")


urlpatterns = [path("pid", pid_view)]
