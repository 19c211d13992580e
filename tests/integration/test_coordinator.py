"""The coordinator actor on a real local Ray: jobs, restarts, killed workers."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from cur_ray.entrypoints.coordinator import get_coordinator
from cur_ray.samples.expected import expected_monthly
from cur_ray.samples.line_items import generate_line_items
from cur_ray.samples.writers import write_data_export, write_shared_legacy_sample
from cur_ray.services import jobs as jobs_service
from cur_ray.services.context import AppContext
from cur_ray.services.costs import monthly_costs
from cur_ray.services.files import list_files
from cur_ray.services.projects import add_project

pytestmark = pytest.mark.usefixtures("ray_session")
MARCH = dt.date(2024, 3, 1)
EXACT = Decimal("1e-8")


def enqueue(ctx: AppContext, name: str, project_id: str | None, **data: Any) -> str:
    with ctx.db.transaction() as session:
        view, _ = jobs_service.enqueue_job(
            session, name=name, project_id=project_id, trigger="cli", data=data or None
        )
    return view.job_id


def wait_job(ctx: AppContext, job_id: str, timeout: float = 120) -> jobs_service.JobView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ctx.db.transaction() as session:
            job = jobs_service.get_job(session, job_id)
        if job.status in ("completed", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def add(ctx: AppContext, project_id: str, root: Path) -> None:
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=project_id, storage_url=f"file://{root}")


def total(ctx: AppContext, project_id: str) -> Decimal:
    with ctx.db.transaction() as session:
        rows = monthly_costs(session, project_id)
    return sum((Decimal(r["unblended_cost"]) for r in rows), Decimal(0))


def statuses(ctx: AppContext, project_id: str) -> set[str]:
    with ctx.db.transaction() as session:
        return {f["status"] for f in list_files(session, project_id)}


def test_jobs_queued_before_the_coordinator_starts_run_exactly(
    ctx: AppContext, coordinator_env: dict[str, str], tmp_path: Path, shared_data: Path
) -> None:
    root = tmp_path / "bucket"
    write_shared_legacy_sample(root, shared_data / "aws-cur-legacy-sample.csv", prefix="cur")
    add(ctx, "acme", root)
    fetch_id = enqueue(ctx, "cur-fetch", "acme")
    aggregate_id = enqueue(ctx, "cur-aggregate", "acme")

    coordinator = get_coordinator(coordinator_env)  # starts after the jobs were written

    fetched = wait_job(ctx, fetch_id)
    assert fetched.status == "completed"
    assert fetched.result["projects"][0]["registered"] == 1  # type: ignore[index]
    aggregated = wait_job(ctx, aggregate_id)
    assert aggregated.status == "completed", aggregated.error
    assert aggregated.result["done"] == 1  # type: ignore[index]
    assert total(ctx, "acme") == Decimal("1.68230869740")
    status = ray.get(coordinator.status.remote())
    assert status["running"] == {}


def _many_files(root: Path, months: int = 2, files: int = 12) -> list[Any]:
    items_all = []
    for month in range(1, months + 1):
        period = dt.date(2024, month, 1)
        items = generate_line_items(period=period, seed=month, rows=4000, accounts=3)
        items_all.extend(items)
        write_data_export(
            root,
            prefix="",
            export="x",
            period=period,
            execution_id=f"e{month}",
            items=items,
            file_format="parquet",
            files=files,
            row_group_size=100,
            write_manifest=False,
        )
    return items_all


def test_coordinator_killed_mid_job_recovers_and_counts_once(
    ctx: AppContext, coordinator_env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    items = _many_files(root)
    add(ctx, "acme", root)
    coordinator = get_coordinator(coordinator_env)
    assert wait_job(ctx, enqueue(ctx, "cur-fetch", "acme")).status == "completed"

    job_id = enqueue(ctx, "cur-aggregate", "acme")
    ray.get(coordinator.notify.remote())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it holds the job and its files
        progress = ray.get(coordinator.job.remote(job_id)).get("progress")
        if progress and progress["total"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the job never started")
    ray.kill(coordinator, no_restart=False)  # Ray restarts it; it must pick up the pieces

    job = wait_job(ctx, job_id)

    assert job.status == "completed", job.error
    assert job.attempts == 2
    assert statuses(ctx, "acme") == {"DONE"}
    want = sum(f["unblended_cost"] for f in expected_monthly(items).values())
    assert abs(total(ctx, "acme") - want) < EXACT


def _kill_running_task(name: str, deadline: float) -> int:
    while time.monotonic() < deadline:
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if f"ray::{name}" in cmdline:
                os.kill(process.info["pid"], signal.SIGKILL)
                return int(process.info["pid"])
        time.sleep(0.01)
    raise AssertionError(f"no running {name} task seen")


def test_worker_killed_during_a_task_is_retried_and_counts_once(
    ctx: AppContext, coordinator_env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    items = _many_files(root, months=1, files=6)
    add(ctx, "acme", root)
    get_coordinator(coordinator_env)
    assert wait_job(ctx, enqueue(ctx, "cur-fetch", "acme")).status == "completed"

    job_id = enqueue(ctx, "cur-aggregate", "acme")
    ray.get(get_coordinator(coordinator_env).notify.remote())
    killed = _kill_running_task("aggregate_units_task", time.monotonic() + 60)
    job = wait_job(ctx, job_id)

    assert killed > 0
    assert job.status == "completed", job.error
    assert job.result["failed"] == []  # type: ignore[index]
    assert statuses(ctx, "acme") == {"DONE"}
    want = sum(f["unblended_cost"] for f in expected_monthly(items).values())
    assert abs(total(ctx, "acme") - want) < EXACT


def test_submit_is_idempotent_and_failed_project_is_reported(
    ctx: AppContext,
    coordinator_env: dict[str, str],
    tmp_path: Path,
    make_ctx: Callable[..., AppContext],
) -> None:
    add(ctx, "ghost-bucket", tmp_path / "does-not-exist")
    coordinator = get_coordinator(coordinator_env)
    first = ray.get(coordinator.submit.remote("cur-fetch", "ghost-bucket", "api", job_id="j-1"))
    again = ray.get(coordinator.submit.remote("cur-fetch", "ghost-bucket", "api", job_id="j-1"))
    assert first["jobId"] == again["jobId"] == "j-1"

    job = wait_job(ctx, "j-1")

    assert job.status == "completed"
    (project,) = job.result["projects"]  # type: ignore[index]
    assert project["errorType"] == "storage_access_denied"
    assert "does not exist" in project["error"]
