"""The ``pgreservoir`` command (also ``python -m pgreservoir``).

Sub-commands:

``pgreservoir bench``
    Start a throwaway PostgreSQL server (or use ``--dsn``), run the same
    concurrent workloads through pgreservoir and every installed peer pool,
    and print one table. See ``pgreservoir bench --help`` and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _counts(text: str) -> List[int]:
    """A comma list of counts >= 1 (so, unlike other counts, no "1,000": write 1000)."""
    return [_positive_int(part.strip()) for part in text.split(",") if part.strip()] or [
        _positive_int(text)
    ]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _names(text: str) -> List[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    return [] if names == ["none"] else names


def _bench_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ._bench.command import DEFAULTS, QUICK
    from ._bench.contenders import CONTENDERS
    from ._bench.runner import WORKLOADS

    workloads = "; ".join(f"{w.key}: {w.description}" for w in WORKLOADS.values())
    contenders = "; ".join(f"{c.key}: {c.note}" for c in CONTENDERS)
    parser = subparsers.add_parser(
        "bench",
        help="compare pgreservoir with other pools on a real server",
        description=(
            "Run concurrent workloads through pgreservoir and the other installed "
            "pools, side by side, and print one table. Without --dsn a throwaway "
            "PostgreSQL server is started (and removed afterwards)."
        ),
        epilog=f"Workloads: {workloads}. Contenders: {contenders}.",
    )
    parser.add_argument("--dsn", help="run against this server (libpq DSN or URL)")
    parser.add_argument("--threads", type=_counts,
                        help=f"worker threads, or a comma list (8,32,128,512: one scenario "
                             f"per count; default {DEFAULTS['threads']}; the overhead "
                             "workload always uses 1)")
    parser.add_argument("--tasks", type=_counts,
                        help=f"asyncio tasks in the async-* workloads, or a comma list "
                             f"(default {DEFAULTS['tasks']}; async-overhead always uses 1)")
    parser.add_argument("--size", type=_positive_int,
                        help=f"connections per pool (default {DEFAULTS['size']})")
    parser.add_argument("--duration", type=_positive_float,
                        help=f"seconds per run (default {DEFAULTS['duration']}, "
                             f"--quick {QUICK['duration']})")
    parser.add_argument("--ops", type=_positive_int,
                        help="end each run after this many operations in total, "
                             "instead of after --duration")
    parser.add_argument("--rounds", type=_positive_int,
                        help=f"rounds; contenders are interleaved and the median "
                             f"is shown (default {DEFAULTS['rounds']}, --quick "
                             f"{QUICK['rounds']})")
    parser.add_argument("--workloads", type=_names, default=list(WORKLOADS),
                        help=f"comma-separated, or 'none' (default: {','.join(WORKLOADS)})")
    parser.add_argument("--contenders", type=_names,
                        help="comma-separated keys (default: every installed one): "
                             + ",".join(c.key for c in CONTENDERS))
    parser.add_argument("--quick", action="store_true",
                        help="a short run for CI: one round, short runs")
    parser.add_argument("--json", dest="json_path", metavar="FILE",
                        help="also write every figure (and each round's) as JSON")
    parser.add_argument("--plot", dest="plot_path", metavar="FILE.png",
                        help="also draw throughput and waits (needs matplotlib)")
    parser.add_argument("--memory", action="store_true",
                        help="also check that a million checkouts leave no memory "
                             "behind (tracemalloc; pgreservoir's pools unless "
                             "--contenders names others)")
    parser.add_argument("--memory-checkouts", type=_positive_int,
                        help="checkouts for --memory (default 1,000,000; --quick "
                             f"{QUICK['memory_checkouts']:,})")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on stderr")
    parser.add_argument("--transaction-pooling", action="store_true",
                        help="--dsn is a transaction-pooling proxy (PgBouncer "
                             "pool_mode=transaction, RDS Proxy, Supavisor): psycopg 3's "
                             "and asyncpg's prepared statements off for every contender")
    parser.add_argument("--list", action="store_true",
                        help="list the contenders, say which are installed, and exit")
    parser.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ._bench.command import BenchOptions, bench
    from ._bench.contenders import CONTENDERS
    from ._bench.runner import BenchError

    if args.list:
        for contender in CONTENDERS:
            missing = contender.missing()
            state = "installed" if missing is None else f"not installed ({missing})"
            print(f"{contender.key:<22} {state:<34} {contender.note}")
        return 0
    options = BenchOptions(
        dsn=args.dsn,
        threads=args.threads,
        tasks=args.tasks,
        size=args.size,
        duration=args.duration,
        ops=args.ops,
        rounds=args.rounds,
        workloads=args.workloads,
        contenders=args.contenders,
        quick=args.quick,
        json_path=args.json_path,
        plot_path=args.plot_path,
        memory=args.memory,
        memory_checkouts=args.memory_checkouts,
        progress=args.progress,
        transaction_pooling=args.transaction_pooling,
        argv=list(argv[1:]),
    )
    try:
        return bench(options, sys.stdout, sys.stderr)
    except BenchError as exc:
        print(f"pgreservoir bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pgreservoir bench: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pgreservoir`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pgreservoir",
        description="pgreservoir: a fast, fair, self-healing PostgreSQL connection pool.",
    )
    parser.add_argument("--version", action="version", version=f"pgreservoir {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _bench_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pgreservoir`` command; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = args.handler(args, arguments)
    return status


if __name__ == "__main__":
    sys.exit(main())
