"""The benchmarks run end to end on tiny data (CI smoke run; no timing is asserted).

Each benchmark runs as its own process: ``benchmarks.run`` starts its own local Ray (it
cannot share this session's ``ray.init``) and ``benchmarks.batch_a`` its own moto server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{module} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_batch_b_benchmark_smoke_run_checks_every_engine_and_reports(tmp_path: Path) -> None:
    out = _run("benchmarks.run", "--smoke", "--data-dir", str(tmp_path / "data"))

    # Equality of the engines is checked before any figure is printed (exit 1 otherwise).
    assert "results checked equal: (a) = (b) = (c) = (d)" in out
    for line in (
        "(a) Batch B via the coordinator on Ray (end to end)",
        "(b) DuckDB, same measures",
        "(c) plain pyarrow, single process",
        "(d) cur_ray aggregation in one process (no Ray, no DB)",
        "ratio (a)/(b):",
        "peak RSS (VmHWM, (a) runs): task workers",
        "coordinator",
        "CSV.gz, 1 file of 4,000 rows",
        "(b) DuckDB read_csv, same measures",
        "ratio (a)/(b) CSV.gz:",
    ):
        assert line in out, line
    assert "RESULTS DIFFER" not in out


def test_batch_a_benchmark_smoke_run_registers_every_object() -> None:
    out = _run("benchmarks.batch_a", "--smoke")

    assert "Batch A, 500 objects in moto S3" in out
    assert "bare paginated listing (boto3)" in out
    assert "ratio Batch A / listing:" in out
    assert "registered 500 of 500 listed objects" in out
