#!/usr/bin/env bash
# Run SQLAlchemy's own test suite (an unpacked sdist) on the stock pool and on
# ReservoirPool, per driver and file group; results in $OUT/<driver>-<mode>-<group>.txt.
#   tools/sqlalchemy_suite/run.sh /tmp/sqla-suite/sqlalchemy-2.1.9 "$(sed -n 1p urls)" psycopg2 [groups...]
# groups: engine pg orm suite (default), asyncio (give it the psycopg_async URL)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$1; url=$2; driver=$3; shift 3
groups=${*:-engine pg orm suite}
py=${PYTHON:-$here/../../.venv/bin/python}
OUT=${OUT:-/tmp/sqla-suite/results}
mkdir -p "$OUT"
cd "$root"
for group in $groups; do
    for mode in stock reservoir; do
        case $group in
            engine) pool=test/engine/test_pool.py
                    [ $mode = reservoir ] && pool=test/engine/test_pool_reservoir.py
                    files="$pool test/engine/test_reconnect.py test/engine/test_transaction.py test/engine/test_execute.py" ;;
            pg) files=test/dialect/postgresql/ ;;
            orm) files="test/orm/test_transaction.py test/orm/test_session.py" ;;
            suite) files=test/dialect/test_suite.py ;;
            asyncio) files=test/ext/asyncio/ ;;  # with a postgresql+psycopg_async URL
        esac
        flag=0; [ $mode = reservoir ] && flag=1
        RESERVOIR_POOL=$flag PYTHONPATH=$here timeout 3000 "$py" -m pytest -p shim -p no:cacheprovider \
            -p no:pgreservoir --dburi "$url" -q -rfE $files > "$OUT/$driver-$mode-$group.txt" 2>&1
        echo "$driver $mode $group: $(tail -1 "$OUT/$driver-$mode-$group.txt")"
    done
done
