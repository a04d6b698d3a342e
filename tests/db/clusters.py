"""Throwaway PostgreSQL 15 clusters for tests that restart a server or need a replica.

Never the shared test cluster: each one lives under /var/tmp (the postgres OS user must
reach it even when the checkout is under /root), runs as the postgres OS user when the
tests run as root, and is stopped and removed afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import LIB_DIR

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Cluster:
    base: Path
    datadir: Path
    port: int
    log: Path
    as_owner: list[str]

    def dsn(self, dbname: str) -> str:
        return f"host=localhost port={self.port} user=postgres dbname={dbname}"

    def pg_ctl(self, *args: str) -> float:
        """Run pg_ctl as the cluster owner; return the seconds it took."""
        t0 = time.monotonic()
        subprocess.run([*self.as_owner, "env", "OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1",
                        str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log),
                        *args], check=True, capture_output=True, timeout=120)
        return time.monotonic() - t0

    def configure(self, settings: str) -> None:
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _owner() -> tuple[list[str], pwd.struct_passwd | None]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN}")
    if os.geteuid() != 0:
        return [], None
    # PostgreSQL refuses to run as root: run it as the postgres OS user.
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start a cluster as postgres")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres OS user")
    return ["runuser", "-u", "postgres", "--"], owner


def _settings(cluster: Cluster) -> str:
    return (f"listen_addresses = 'localhost'\nport = {cluster.port}\n"
            f"unix_socket_directories = '{cluster.base}'\n"
            f"segmentation.python_lib_dir = '{LIB_DIR}'\n")


@contextlib.contextmanager
def _new_cluster(prefix: str) -> Iterator[Cluster]:
    """An empty directory for a cluster; the cluster is stopped and removed afterwards."""
    as_owner, owner = _owner()
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir="/var/tmp"))
    cluster = Cluster(base, base / "data", _free_port(), base / "server.log", as_owner)
    try:
        if owner is not None:
            os.chown(base, owner.pw_uid, owner.pw_gid)
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster.pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster(prefix: str) -> Iterator[Cluster]:
    """A new, started cluster (initdb, trust auth for local connections)."""
    with _new_cluster(prefix) as cluster:
        subprocess.run([*cluster.as_owner, str(PG_BIN / "initdb"), "-D", str(cluster.datadir),
                        "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                        "--locale=C.UTF-8"], check=True, capture_output=True, timeout=120)
        cluster.configure(_settings(cluster))
        cluster.pg_ctl("-w", "-t", "60", "start")
        yield cluster


@contextlib.contextmanager
def streaming_standby(primary: Cluster) -> Iterator[Cluster]:
    """A hot standby of ``primary`` (pg_basebackup -R), started and streaming."""
    with _new_cluster("seg-standby") as standby:
        subprocess.run([*standby.as_owner, str(PG_BIN / "pg_basebackup"), "-h", "localhost",
                        "-p", str(primary.port), "-U", "postgres", "-D", str(standby.datadir),
                        "-R", "-X", "stream", "-c", "fast"],
                       check=True, capture_output=True, timeout=300)
        standby.configure(_settings(standby))
        standby.pg_ctl("-w", "-t", "60", "start")
        yield standby


def wait_for_replay(primary: psycopg.Connection, standby: psycopg.Connection,
                    timeout: float = 30.0) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    while not standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                              (lsn,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise TimeoutError(f"the standby did not replay up to {lsn} in {timeout} s")
        time.sleep(0.05)
