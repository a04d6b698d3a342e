#!/usr/bin/env bash
# A project-local PostgreSQL 15 cluster for the demo, tests and benchmarks.
#   scripts/pg-cluster.sh start|stop|status|url
# Listens on localhost:$SEG_PGPORT (default 55432) with trust auth for local
# connections only. PostgreSQL refuses to run as root, so when run as root the
# server runs as the postgres OS user.
set -euo pipefail

pg_major="${PG_MAJOR:-15}"
bindir="/usr/lib/postgresql/${pg_major}/bin"
port="${SEG_PGPORT:-55432}"
# Outside the checkout: the postgres user must be able to reach it even when the
# checkout lives under /root.
datadir="${SEG_PGDATA:-/var/tmp/unified-segmentation/pg${pg_major}-${port}}"
logfile="${datadir}.log"

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd="${1:-status}"
case "$cmd" in
start)
    if [ ! -s "${datadir}/PG_VERSION" ]; then
        mkdir -p "$(dirname "$datadir")"
        chmod 1777 "$(dirname "$datadir")" 2>/dev/null || true
        as_owner mkdir -p "$datadir"
        as_owner "$bindir/initdb" -D "$datadir" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        cat <<CONF | as_owner tee -a "$datadir/postgresql.conf" >/dev/null
# unified-segmentation project cluster
listen_addresses = 'localhost'
port = ${port}
unix_socket_directories = '${datadir}'
max_connections = 200
shared_buffers = 1GB
work_mem = 64MB
maintenance_work_mem = 512MB
max_wal_size = 4GB
track_functions = 'all'
fsync = ${SEG_PG_FSYNC:-on}
CONF
    fi
    if as_owner "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
        exit 0
    fi
    touch "$logfile"; chmod 666 "$logfile" 2>/dev/null || true
    # One BLAS thread per backend: many backends share 2 cores.
    as_owner env OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        "$bindir/pg_ctl" -D "$datadir" -l "$logfile" -w -t 60 start >/dev/null
    ;;
stop)
    if [ -s "${datadir}/PG_VERSION" ]; then
        as_owner "$bindir/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
restart)
    as_owner env OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        "$bindir/pg_ctl" -D "$datadir" -l "$logfile" -m fast -w restart >/dev/null
    ;;
status)
    as_owner "$bindir/pg_ctl" -D "$datadir" status
    ;;
url)
    echo "postgresql://postgres@localhost:${port}/postgres"
    ;;
datadir)
    echo "$datadir"
    ;;
*)
    echo "usage: $0 start|stop|restart|status|url|datadir" >&2
    exit 2
    ;;
esac
