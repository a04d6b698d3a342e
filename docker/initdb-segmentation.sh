#!/usr/bin/env bash
# First start of the container: install Unified Segmentation into $POSTGRES_DB
# with the same loader as everywhere else (the library is already provisioned).
set -euo pipefail
/opt/segmentation/venv/bin/segmentation install --no-library \
    --dsn "host=/var/run/postgresql user=${POSTGRES_USER:-postgres} dbname=${POSTGRES_DB:-postgres}"
