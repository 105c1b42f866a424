"""Run Django's own test suite against a throwaway PostgreSQL, on pgreservoir's
backend or Django's stock one, on psycopg 3 or psycopg2.

Django's sdist carries the suite (tests/runtests.py). Give its tests/ directory
with --tests-dir, or nothing to use the sdist of the installed Django
(downloaded with pip into a cache outside the repository, as
tests/django/test_django_suite.py does); for example:

    python scripts/django_suite.py --engine ours --driver psycopg2 --pool \\
        --log ours-psycopg2.log -- -v 2 backends transactions

The work is done by tests/django/_django_suite.py (shared with the test that
runs a slice of the suite in CI). Nothing is left out unless --leave-out names
it. The last line printed is a summary: ran / failures / errors / skipped /
expected failures / unexpected successes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "django"))

from _django_suite import ENGINES, SuiteError, django_tests_dir, run_suite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tests-dir", type=Path, help="Django's tests/ directory (default: fetch the sdist)"
    )
    parser.add_argument("--engine", choices=tuple(ENGINES), default="ours")
    parser.add_argument("--driver", choices=("psycopg", "psycopg2"), default="psycopg")
    parser.add_argument("--pool", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--leave-out", action="append", default=[], metavar="TEST_ID")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds")
    parser.add_argument("--log", type=Path, help="write runtests.py's output here")
    parser.add_argument("labels", nargs="*")
    args, extra = parser.parse_known_args()
    # Whatever follows "--" goes to runtests.py as it is (labels and options).
    rest = [arg for arg in [*extra, *args.labels] if arg != "--"]
    try:
        if args.tests_dir is None:
            import django

            args.tests_dir = django_tests_dir(django.__version__)
        run = run_suite(
            args.tests_dir, rest, engine=ENGINES[args.engine], driver=args.driver,
            pool=args.pool, parallel=args.parallel, leave_out=args.leave_out,
            timeout=args.timeout, log=args.log,
        )
    except SuiteError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(
        f"SUMMARY engine={args.engine} driver={args.driver} pool={args.pool} {run.summary()}"
        f" backend=[{run.backend}] left_out={len(run.left_out)}"
    )
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
