"""Write test/engine/test_pool_reservoir.py: SQLAlchemy's test_pool.py with
QueuePool swapped for ReservoirPool (run it from the unpacked sdist).

    python tools/sqlalchemy_suite/swap_test_pool.py /tmp/sqla-suite/sqlalchemy-2.1.9
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def main(root: str) -> None:
    source = Path(root, "test", "engine", "test_pool.py")
    text = source.read_text()
    swapped = re.sub(r"\bpool\.QueuePool\b", "ReservoirPool", text)
    header = "from pgreservoir.sqlalchemy import ReservoirPool  # swapped in for QueuePool\n"
    Path(source.with_name("test_pool_reservoir.py")).write_text(header + swapped)


if __name__ == "__main__":
    main(sys.argv[1])
