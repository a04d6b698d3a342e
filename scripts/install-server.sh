#!/usr/bin/env bash
# The one install path for a database host, used by `make` (demo, test, bench)
# and by Dockerfile.postgres: OS packages, the loader's virtualenv, and the
# version-pinned server-side Python library. Idempotent.
#   scripts/install-server.sh [--venv DIR] [--lib-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=".venv"
lib_dir="${SEG_LIB_DIR:-/usr/local/lib/segmentation}"
extras="[dev]"
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="$2"; shift 2 ;;
        --lib-dir) lib_dir="$2"; shift 2 ;;
        --no-dev) extras=""; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

bash scripts/install-system-deps.sh

# The venv uses the system Python: the wheels provisioned for the server must
# match the Python embedded in PostgreSQL (python3.11 on Debian 12).
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras}"
    touch "$stamp"
fi

"$venv/bin/segmentation" provision-library --lib-dir "$lib_dir"
