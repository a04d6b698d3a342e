#!/usr/bin/env bash
# Installs the operating-system packages Unified Segmentation needs on Debian 12
# (also used by Dockerfile.postgres): PostgreSQL 15 with PL/Python, a Python with
# venv for the loader, and the server headers and a C compiler for the native
# categorize_player(game_id, features) (native/categorize_features.c; without them
# that function runs in PL/Python). Idempotent: installs only what is missing.
set -euo pipefail

pg_major="${PG_MAJOR:-15}"
need=()
for pkg in "postgresql-${pg_major}" "postgresql-plpython3-${pg_major}" postgresql-contrib \
           python3 python3-venv python3-dev "postgresql-server-dev-${pg_major}" gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "error: missing packages ${need[*]}; run this script as root or install them" >&2
        exit 1
    fi
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Debian's cluster auto-creation is not wanted: the project runs its own cluster.
$sudo mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/50-no-main.conf >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
