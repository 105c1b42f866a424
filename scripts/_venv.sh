# Sourced by the other scripts: make .venv and install the project into it,
# with the extras named in EXTRAS (default: dev). Safe to run again: it
# installs only when pyproject.toml or the extras asked for changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        # Debian/Ubuntu ship venv separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        "$PYTHON" -m venv .venv
    fi
fi
hash=$(sha1sum < pyproject.toml | cut -c1-12)
stamp=".venv/.installed-$hash-${EXTRAS//,/-}"
if [ ! -f "$stamp" ]; then
    echo "installing pgreservoir[$EXTRAS] into .venv ..." >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    # Stamps of an older pyproject.toml are stale; other extras' stay valid.
    find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash-*" -delete
    touch "$stamp"
fi
