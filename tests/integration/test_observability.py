"""Metrics on Ray's metrics endpoint after a job; JSON logs with context and no secrets."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import ray

from cur_ray.adapters.aws import AwsTarget
from cur_ray.entrypoints.coordinator import get_coordinator
from cur_ray.samples.line_items import generate_line_items
from cur_ray.samples.writers import upload_tree, write_data_export, write_legacy_csv_export
from cur_ray.services import jobs as jobs_service
from cur_ray.services.api_keys import create_api_key
from cur_ray.services.context import AppContext
from cur_ray.services.projects import add_project

MARCH = dt.date(2024, 3, 1)
EXPECTED_SERIES = {
    "ray_cur_ray_jobs_total": {"name", "outcome"},
    "ray_cur_ray_job_duration_seconds_bucket": {"name"},
    "ray_cur_ray_queue_waiting_jobs": set(),
    "ray_cur_ray_files": {"status"},
    "ray_cur_ray_rows_read_total": set(),
    "ray_cur_ray_bytes_read_total": set(),
    "ray_cur_ray_file_processing_seconds_bucket": set(),
}
_SERIES = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def enqueue(ctx: AppContext, name: str, project_id: str) -> str:
    with ctx.db.transaction() as session:
        view, _ = jobs_service.enqueue_job(session, name=name, project_id=project_id, trigger="api")
    return view.job_id


def wait_job(ctx: AppContext, job_id: str) -> jobs_service.JobView:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with ctx.db.transaction() as session:
            job = jobs_service.get_job(session, job_id)
        if job.status in ("completed", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


def scrape(port: int) -> dict[str, list[dict[str, str]]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    series: dict[str, list[dict[str, str]]] = {}
    for line in body.decode().splitlines():
        match = _SERIES.match(line)
        if match and match["name"].startswith("ray_cur_ray_"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            labels["__value__"] = match["value"]
            series.setdefault(match["name"], []).append(labels)
    return series


@pytest.mark.usefixtures("ray_session")
def test_job_metrics_appear_on_the_metrics_endpoint(
    ctx: AppContext, coordinator_env: dict[str, str], ray_metrics_port: int, tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=31, rows=600)
    write_data_export(
        root,
        prefix="",
        export="x",
        period=MARCH,
        execution_id="e",
        items=items,
        file_format="parquet",
        files=2,
        write_manifest=False,
    )
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id="acme", storage_url=f"file://{root}")
    coordinator = get_coordinator(coordinator_env)
    coordinator_worker = ray.get(coordinator.status.remote())["rayWorkerId"]
    assert wait_job(ctx, enqueue(ctx, "cur-fetch", "acme")).status == "completed"
    assert wait_job(ctx, enqueue(ctx, "cur-aggregate", "acme")).status == "completed"

    deadline = time.monotonic() + 60  # Ray exports every few seconds
    series: dict[str, list[dict[str, str]]] = {}
    while time.monotonic() < deadline:
        series = scrape(ray_metrics_port)
        rows = series.get("ray_cur_ray_rows_read_total", [])
        # The files gauge is published by the coordinator's loop after the job: wait for it.
        # Only this test's coordinator counts: killed ones' last values stay exported a while.
        done = [
            float(f["__value__"])
            for f in series.get("ray_cur_ray_files", [])
            if f["status"] == "DONE" and f.get("WorkerId") == coordinator_worker
        ]
        if (
            set(EXPECTED_SERIES) <= set(series)
            and any(float(r["__value__"]) >= 600 for r in rows)
            and done
            and done[0] >= 2
        ):
            break
        time.sleep(1)
    missing = set(EXPECTED_SERIES) - set(series)
    assert not missing, f"not exported: {missing}"
    for name, tags in EXPECTED_SERIES.items():
        assert all(tags <= set(labels) for labels in series[name]), name
    jobs = {(s["name"], s["outcome"]) for s in series["ray_cur_ray_jobs_total"]}
    assert {("cur-fetch", "completed"), ("cur-aggregate", "completed")} <= jobs
    assert done == [2.0], "the coordinator's files gauge shows its 2 DONE files"
    assert max(float(r["__value__"]) for r in series["ray_cur_ray_rows_read_total"]) >= 600


def test_job_logs_carry_context_and_no_secret(
    ctx: AppContext, s3_endpoint: str, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    external_id = "ext-id-VERY-SECRET-4711"
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=32, rows=300)
    write_legacy_csv_export(
        root, prefix="cur", report="r", period=MARCH, assembly_id="a", items=items
    )
    broken = root / "cur" / "r" / "20240301-20240401" / "a" / "r-2.csv.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")  # not in the manifest: superseded
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tenant")
    upload_tree(root, s3, "tenant")
    s3.put_object(
        Bucket="tenant",
        Key="cur/x/data/BILLING_PERIOD=2024-03/corrupt.snappy.parquet",
        Body=b"PAR1 nope",
    )
    with ctx.db.transaction() as session:
        add_project(
            session,
            ctx.settings,
            project_id="acme",
            storage_url="s3://tenant/cur",
            role_arn="arn:aws:iam::123456789012:role/cur",
            external_id=external_id,
        )
        api_key, _ = create_api_key(session, project_id="acme", description=None)

    fetch_id = enqueue(ctx, "cur-fetch", "acme")
    aggregate_id = enqueue(ctx, "cur-aggregate", "acme")
    jobs_service.run_one_job(ctx, "test-worker", dt.timedelta(minutes=5))
    aggregated = jobs_service.run_one_job(ctx, "test-worker", dt.timedelta(minutes=5))

    assert aggregated is not None
    assert aggregated.status == "completed"
    assert len(aggregated.result["failed"]) == 1  # type: ignore[index]
    records = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert records
    by_job = {r.get("jobId") for r in records}
    assert {fetch_id, aggregate_id} <= by_job
    per_project = [r for r in records if r["message"].startswith("project ")]
    assert len(per_project) >= 4  # discovery and aggregation, started and finished
    assert all(r.get("projectId") == "acme" for r in per_project)
    assert all(r.get("jobId") in (fetch_id, aggregate_id) for r in per_project)
    failed = [r for r in records if r["message"] == "file failed"]
    assert failed
    assert failed[0]["objectKey"].endswith("corrupt.snappy.parquet")
    assert failed[0]["jobId"] == aggregate_id
    assert failed[0]["projectId"] == "acme"
    starts = [r for r in records if r["message"] == "project discovery finished"]
    assert starts
    assert starts[0]["registered"] == 2
    text = captured_logs.getvalue() + json.dumps([aggregated.result])
    creds = ctx.credentials.credentials_for(  # cached: the ones the jobs used
        AwsTarget(
            project_id="acme",
            role_arn="arn:aws:iam::123456789012:role/cur",
            external_id=external_id,
        )
    )
    for secret in (external_id, api_key, creds.secret_access_key, creds.session_token or "-"):
        assert secret not in text
