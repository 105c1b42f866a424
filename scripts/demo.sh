#!/usr/bin/env bash
# The main job: start a throwaway PostgreSQL and run 32 threads through an
# 8-connection pool, printing its stats. Usage: scripts/demo.sh [DSN]
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m pgreservoir._demo "$@"
