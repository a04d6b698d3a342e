"""Concurrent load with pgbench: throughput and latency percentiles of one SQL statement."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from psycopg.conninfo import conninfo_to_dict


@dataclass
class LoadResult:
    """pgbench run of one script: ``tps`` (statements/s), latencies in milliseconds."""

    clients: int
    tps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    transactions: int
    failed: int


def run_pgbench(dsn: str, script: str, clients: int, seconds: int) -> LoadResult:
    """Run ``script`` (pgbench syntax) with ``clients`` clients for ``seconds``.

    Latencies come from pgbench's per-transaction log (microseconds), so the
    percentiles are exact, not pgbench's averages. Throughput is summed over the
    clients' steady-state windows (after each connection's first call).
    """
    params = conninfo_to_dict(dsn)
    with tempfile.TemporaryDirectory(prefix="segbench-") as tmp:
        script_path = Path(tmp, "script.sql")
        script_path.write_text(script)
        cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
               "-T", str(seconds), "-f", str(script_path), "-l", "--log-prefix",
               str(Path(tmp, "log"))]
        for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
            if params.get(key):
                cmd += [flag, str(params[key])]
        cmd.append(str(params.get("dbname", "postgres")))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr[-2000:]}")
        # Per client: (end time in s, latency in us) of every transaction.
        per_client: dict[str, list[tuple[float, int]]] = {}
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                f = line.split()
                if len(f) >= 6:
                    per_client.setdefault(f[0], []).append(
                        (int(f[4]) + int(f[5]) / 1e6, int(f[2])))
    # Steady state: each connection's first call loads the server-side library (a
    # one-off per backend), so it is left out of throughput and percentiles.
    latencies: list[int] = []
    tps = 0.0
    for txns in per_client.values():
        txns.sort()
        steady = txns[1:]
        latencies += [lat for _, lat in steady]
        if len(steady) > 1:
            tps += (len(steady) - 1) / (steady[-1][0] - steady[0][0])
    failed = 0
    for line in proc.stdout.splitlines():
        if line.startswith("number of failed transactions"):
            failed = int(line.split(":")[1].split()[0])
    lat = np.asarray(latencies, dtype=np.float64) / 1000.0
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99)) if lat.size else (
        float("nan"),) * 3
    return LoadResult(clients, tps, p50, p95, p99, int(lat.size), failed)
