"""Compare two logs of Django's test suite run with ``-v 2`` (as
scripts/django_suite.py --log writes them), test by test.

    python scripts/django_suite_compare.py stock.log ours.log

Prints each log's outcome counts, then every test whose outcome differs.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Dict, Optional

# "test_x (module.Class.test_x) ... ok", or the id alone when a docstring
# line follows, which then carries the " ... outcome".
_ID = re.compile(r"^(test\w*) \(([\w.]+)\)(?: \.\.\. (.*))?$")


def outcomes(path: str) -> Dict[str, str]:
    """Test id -> ok, FAIL, ERROR, skipped, expected failure..."""
    found: Dict[str, str] = {}
    pending: Optional[str] = None
    with open(path, errors="replace") as log:
        for raw in log:
            line = raw.rstrip("\n")
            match = _ID.match(line)
            if match:
                pending = match.group(2)
                if match.group(3) is not None:
                    found[pending] = _outcome(match.group(3))
                    pending = None
            elif pending and " ... " in line:
                found[pending] = _outcome(line.rsplit(" ... ", 1)[1])
                pending = None
    return found


def _outcome(text: str) -> str:
    return "skipped" if text.startswith("skipped") else text


def main() -> int:
    first, second = outcomes(sys.argv[1]), outcomes(sys.argv[2])
    for path, found in ((sys.argv[1], first), (sys.argv[2], second)):
        print(path, dict(Counter(found.values())))
    for test in sorted(set(first) | set(second)):
        if first.get(test) != second.get(test):
            print(f"  {test}: {first.get(test)} -> {second.get(test)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
