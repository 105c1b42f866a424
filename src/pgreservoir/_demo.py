"""A short demonstration: a throwaway PostgreSQL, 32 threads, 8 pooled connections.

Run it with ``python -m pgreservoir._demo`` (or ``scripts/demo.sh``); pass a
DSN to use your own server instead of a throwaway one.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterator, List, Optional

from .connection_pool import ConnectionPool


@contextlib.contextmanager
def _server(dsn: Optional[str]) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from .testing import PostgresServer

    print("starting a throwaway PostgreSQL server...", flush=True)
    with PostgresServer() as server:
        print(f"  {server.bindir} (version {server.version}) on port {server.port}", flush=True)
        yield server.dsn


def run(dsn: Optional[str] = None, threads: int = 32, size: int = 8, seconds: float = 3.0) -> int:
    """Run ``threads`` workers through a pool of ``size`` for ``seconds``; print the stats."""
    with _server(dsn) as conninfo, ConnectionPool(
        conninfo, min_size=size, max_size=size, name="demo"
    ) as pool:
        pool.wait(30)
        counts: List[int] = [0] * threads
        stop = time.monotonic() + seconds

        def worker(index: int) -> None:
            while time.monotonic() < stop:
                with pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.001)")
                counts[index] += 1

        print(f"{threads} threads sharing {size} connections for {seconds:.0f} s...", flush=True)
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        total = sum(counts)
        print(f"\n{total} transactions, {total / seconds:,.0f}/s")
        print(
            f"per thread: least {min(counts)}, most {max(counts)} "
            f"(fairness {min(counts) / max(*counts, 1):.2f}; 1.00 = perfectly even)"
        )
        print(f"\n{pool!r}\nstats():")
        for key, value in pool.stats().items():
            print(f"  {key:20} {value}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: an optional DSN as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    return run(args[0] if args else None)


if __name__ == "__main__":
    raise SystemExit(main())
