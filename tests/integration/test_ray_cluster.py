"""Real Ray clusters in subprocesses: three nodes on this machine, and ``ray job submit``.

Each test starts its own cluster in processes of its own session (the pytest process may hold
a local Ray already, and one process can join only one cluster), in a private Ray temp
folder, listening on 127.0.0.1 only, and kills every process of that session afterwards.
``ray stop`` is not used: it kills every Ray process on the machine, whoever started it.

Loopback only: Ray rewrites a ``127.0.0.1`` address to the machine's outward IP before
connecting (``resolve_ip_for_localhost``), which a loopback-only cluster does not listen on;
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it resolve "this node" to 127.0.0.1 instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from processes import kill_session

from cur_ray.adapters.crypto import generate_key
from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.samples.expected import MEASURES, expected_monthly
from cur_ray.samples.line_items import LineItem, generate_line_items
from cur_ray.samples.writers import write_data_export
from cur_ray.services.context import AppContext
from cur_ray.services.costs import monthly_costs
from cur_ray.services.projects import add_project
from cur_ray.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("multinode_job.py")
BIN = Path(sys.executable).parent  # the cluster's Python is this interpreter's
PROJECT = "acme"
PERIODS = (dt.date(2024, 2, 1), dt.date(2024, 3, 1))
FILES_PER_PERIOD = 6
FILES = FILES_PER_PERIOD * len(PERIODS)
EXACT = Decimal("1e-8")


@dataclass
class Project:
    """A migrated SQLite database holding one ``file://`` project with Parquet exports."""

    database_url: str
    secrets_key: str
    items: list[LineItem]

    def env(self) -> dict[str, str]:
        """The settings a coordinator (or a job's entrypoint) needs for this database."""
        return {
            "DATABASE_URL": self.database_url,
            "CUR_SECRETS_KEY": self.secrets_key,
            "CUR_LEASE_SECONDS": "30",
            "CUR_READ_RETRY_BASE_SECONDS": "0.01",
            "LOG_LEVEL": "INFO",
            "RAY_AUTH_MODE": "disabled",
        }


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """Two months of six Parquet files of 100-row groups each, registered as ``acme``.

    Each file is one aggregation task (its 20 row groups are far below the task's target
    rows). Tasks of a few tens of milliseconds: with fewer or smaller files, the node that
    gets the first lease can run them all before a second node is leased, and the
    multi-node test would prove nothing.
    """
    url = f"sqlite:///{tmp_path / 'cur_ray.db'}"
    upgrade_database(url)
    key = generate_key()
    root = tmp_path / "bucket"
    items: list[LineItem] = []
    for month, period in enumerate(PERIODS, start=1):
        period_items = generate_line_items(period=period, seed=month, rows=12_000, accounts=3)
        items.extend(period_items)
        write_data_export(
            root,
            prefix="",
            export="x",
            period=period,
            execution_id=f"e{month}",
            items=period_items,
            file_format="parquet",
            files=FILES_PER_PERIOD,
            row_group_size=100,
            write_manifest=False,
        )
    ctx = AppContext.from_settings(Settings(database_url=url, cur_secrets_key=key))  # type: ignore[arg-type]
    try:
        with ctx.db.transaction() as session:
            add_project(session, ctx.settings, project_id=PROJECT, storage_url=f"file://{root}")
    finally:
        ctx.close()
    return Project(database_url=url, secrets_key=key, items=items)


@pytest.fixture
def ray_dir() -> Iterator[Path]:
    """A private Ray temp folder with a short path (Unix socket paths are limited to 107)."""
    base = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108
    path = Path(tempfile.mkdtemp(prefix="cur-ray-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ray_env(ray_dir: Path) -> dict[str, str]:
    """This environment, for processes of a private, loopback-only cluster without auth."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DATABASE_URL")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=str(ray_dir),
    )
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_exact(rows: list[dict[str, Any]], items: Sequence[LineItem]) -> None:
    """Every monthly figure equals the independent oracle's to 1e-8."""
    want = expected_monthly(items)
    got = {
        (
            r["billing_period"],
            r["usage_account_id"],
            r["service_code"],
            r["charge_category"],
            r["currency"],
        ): r
        for r in rows
    }
    assert set(got) == set(want)
    for key, figures in want.items():
        for measure in MEASURES:
            expected, actual = figures[measure], got[key][measure]
            if expected is None:
                assert actual is None, (key, measure)
            else:
                assert abs(Decimal(str(actual)) - expected) < EXACT, (key, measure)
    total = sum((f["unblended_cost"] or Decimal(0) for f in want.values()), Decimal(0))
    assert abs(sum(Decimal(r["unblended_cost"]) for r in rows) - total) < EXACT


def read_monthly(database_url: str) -> list[dict[str, Any]]:
    """The project's monthly cost rows, read directly from the database."""
    ctx = AppContext.from_settings(Settings(database_url=database_url))
    try:
        with ctx.db.transaction() as session:
            return monthly_costs(session, PROJECT)
    finally:
        ctx.close()


# ------------------------------------------------------------------------------- multi-node
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_three_node_cluster_spreads_row_group_tasks_over_both_workers(
    project: Project, ray_dir: Path, tmp_path: Path
) -> None:
    config = {
        "databaseUrl": project.database_url,
        "projectId": PROJECT,
        "coordinatorEnv": project.env(),
        "timeoutSeconds": 90,
    }
    out, err = tmp_path / "multinode.out", tmp_path / "multinode.err"
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        helper = subprocess.Popen(
            [sys.executable, str(HELPER), json.dumps(config)],
            cwd=REPO_ROOT,
            env=ray_env(ray_dir),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            returncode: int | None = helper.wait(timeout=150)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            helper.kill()  # a no-op once it exited
            kill_session(helper.pid)
    seconds = time.monotonic() - started

    assert returncode == 0, err.read_text()[-4000:]
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    fetch, aggregate = summary["jobs"]["fetch"], summary["jobs"]["aggregate"]
    assert fetch["status"] == "completed", fetch
    assert fetch["result"]["projects"][0]["registered"] == FILES
    assert aggregate["status"] == "completed", aggregate
    assert aggregate["result"]["done"] == FILES
    assert aggregate["result"]["failed"] == []
    # The row-group tasks ran on both worker nodes, and never on the CPU-less head.
    assert len(summary["workerNodes"]) == 2
    assert summary["taskNodes"] == summary["workerNodes"], summary
    assert summary["headNode"] not in summary["taskNodes"]
    assert_exact(read_monthly(project.database_url), project.items)
    print(f"multi-node: {seconds:.1f}s in all, phases {summary['seconds']}")


# ---------------------------------------------------------------------------- ray job submit
@dataclass
class Head:
    """A head node started with ``ray start``: its GCS port and its Jobs API address."""

    gcs_port: int
    dashboard_url: str


@pytest.fixture
def ray_head(ray_dir: Path, tmp_path: Path) -> Iterator[Head]:
    """``ray start --head`` with the dashboard (the Jobs API), 2 CPUs, private and local."""
    gcs, dashboard = free_port(), free_port()
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        # Fixed defaults (10001, 52365) would clash with other clusters on this machine.
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--num-cpus=2",
        f"--temp-dir={ray_dir / 'ray'}",
        "--disable-usage-stats",
    ]
    log = tmp_path / "ray-start.log"
    with log.open("w") as output:
        start = subprocess.Popen(
            command,
            env=ray_env(ray_dir),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert start.wait(timeout=90) == 0, log.read_text()[-4000:]
        yield Head(gcs, f"http://127.0.0.1:{dashboard}")
    finally:
        start.kill()  # a no-op once it exited
        kill_session(start.pid)


def submit(
    head: Head, entrypoint: list[str], runtime_env: dict[str, Any], env: dict[str, str]
) -> str:
    """``ray job submit`` (it waits for the job); check the job succeeded; return its logs."""
    submission_id = f"cur-ray-test-{uuid.uuid4().hex[:12]}"
    submitted = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            head.dashboard_url,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(REPO_ROOT),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *entrypoint,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    with urllib.request.urlopen(f"{head.dashboard_url}/api/jobs/{submission_id}") as response:  # noqa: S310
        status = json.load(response)["status"]
    logs = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", head.dashboard_url, submission_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert status == "SUCCEEDED", f"{status}\n{submitted.stdout[-3000:]}{submitted.stderr[-3000:]}"
    return logs


def job_record(logs: str) -> dict[str, Any]:
    """The job record ``cur-ray … --json`` printed (indented JSON among Ray's log lines)."""
    decoder = json.JSONDecoder()
    records = []
    offset = 0
    for line in logs.splitlines(keepends=True):
        if line.rstrip("\n") == "{":
            with contextlib.suppress(ValueError):
                value, _ = decoder.raw_decode(logs, offset)
                if isinstance(value, dict) and "jobId" in value:
                    records.append(value)
        offset += len(line)
    assert records, logs[-3000:]
    return records[-1]


def coordinators(head: Head) -> list[dict[str, Any]]:
    """The Coordinator actors this cluster knows (state API of its dashboard)."""
    url = (
        f"{head.dashboard_url}/api/v0/actors?limit=100&detail=false"
        "&filter_keys=class_name&filter_predicates=%3D&filter_values=Coordinator"
    )
    with urllib.request.urlopen(url) as response:  # noqa: S310
        return list(json.load(response)["data"]["result"]["result"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_job_submit_runs_both_batches_on_a_running_head(
    project: Project, ray_dir: Path, ray_head: Head
) -> None:
    started = time.monotonic()
    runtime_env = {
        "env_vars": project.env(),
        # Ray 2.60 skips .git and .venv and honours .gitignore; say so anyway.
        "excludes": [".venv/", ".git/", ".mypy_cache/", ".ruff_cache/", ".pytest_cache/"],
    }
    cur_ray = str(BIN / "cur-ray")  # the cluster's interpreter's console script
    env = ray_env(ray_dir)

    fetch_logs = submit(ray_head, [cur_ray, "fetch", PROJECT, "--json"], runtime_env, env)
    aggregate_logs = submit(ray_head, [cur_ray, "aggregate", PROJECT, "--json"], runtime_env, env)
    submitted = time.monotonic() - started

    fetched, aggregated = job_record(fetch_logs), job_record(aggregate_logs)
    assert fetched["status"] == "completed", fetched
    assert fetched["result"]["projects"][0]["registered"] == FILES
    assert aggregated["status"] == "completed", aggregated
    assert aggregated["result"]["done"] == FILES
    assert aggregated["result"]["failed"] == []
    # The entrypoint joined this cluster (RAY_ADDRESS from the job supervisor) rather than
    # starting a local Ray, and the coordinator it created lives here.
    for logs in (fetch_logs, aggregate_logs):
        assert (
            f"Connecting to existing Ray cluster at address: 127.0.0.1:{ray_head.gcs_port}" in logs
        )
        assert "Started a local Ray instance" not in logs
    alive = [a for a in coordinators(ray_head) if a["state"] == "ALIVE"]
    assert [(a["name"], a["ray_namespace"]) for a in alive] == [("cur_ray_coordinator", "cur_ray")]

    costs = subprocess.run(
        [cur_ray, "costs", "monthly", PROJECT, "--json"],
        env={**env, "DATABASE_URL": project.database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert_exact(json.loads(costs.stdout), project.items)
    print(f"ray job submit: {submitted:.1f}s for both jobs")
