#!/usr/bin/env bash
# The whole test suite: lint, type check, then pytest against real PostgreSQL
# servers that the tests start themselves. Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
echo "== ruff" && .venv/bin/ruff check src tests examples
echo "== mypy --strict" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/python -m pytest "$@"
