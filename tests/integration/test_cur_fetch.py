"""Batch A end to end on real databases, a local folder and moto's S3/STS server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from recording_proxy import RecordingProxy
from sqlalchemy import func, select, text

from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.adapters.db.models import BillingFile
from cur_ray.errors import ConflictError, NotFoundError
from cur_ray.services.context import AppContext
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.files import list_files
from cur_ray.services.projects import add_project, set_enabled

LEGACY_RANGE = "20231101-20231201"


def write(root: Path, key: str, content: bytes | str = b"x") -> str:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return key


def legacy_manifest(assembly: str, keys: list[str]) -> str:
    return json.dumps(
        {
            "assemblyId": assembly,
            "billingPeriod": {"start": "20231101T000000.000Z", "end": "20231201T000000.000Z"},
            "reportKeys": keys,
            "compression": "GZIP",
        }
    )


def export_manifest(execution: str, uris: list[str], columns: list[str] | None = None) -> str:
    return json.dumps(
        {
            "executionId": execution,
            "billingPeriod": {"start": "2024-09-01T00:00:00.000Z"},
            "dataFiles": uris,
            "columns": [{"name": c, "type": "string"} for c in (columns or [])],
        }
    )


def add(ctx: AppContext, project_id: str, url: str, **kwargs: Any) -> None:
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=project_id, storage_url=url, **kwargs)


def files_by_key(ctx: AppContext, project_id: str) -> dict[str, dict[str, Any]]:
    with ctx.db.transaction() as session:
        return {f["object_key"]: f for f in list_files(session, project_id)}


def legacy_assembly(root: Path, prefix: str, assembly: str, parts: int = 1) -> list[str]:
    return [
        write(root, f"{prefix}rep/{LEGACY_RANGE}/{assembly}/rep-{n}.csv.gz", f"{assembly}-{n}")
        for n in range(1, parts + 1)
    ]


def test_legacy_assemblies_only_current_one_is_pending(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    old = legacy_assembly(root, "", "a1", parts=2)
    new = legacy_assembly(root, "", "a2", parts=2)
    write(root, f"rep/{LEGACY_RANGE}/rep-Manifest.json", legacy_manifest("a2", new))
    write(root, f"rep/{LEGACY_RANGE}/a1/rep-Manifest.json", legacy_manifest("a1", old))
    write(root, "aws-programmatic-access-test-object", "ignored")
    add(ctx, "acme", f"file://{root}")

    result = run_cur_fetch_batch("acme", ctx=ctx)

    outcome = result.projects[0]
    assert (outcome.error, outcome.listed, outcome.registered, outcome.superseded) == (
        None,
        7,
        2,
        2,
    )
    files = files_by_key(ctx, "acme")
    assert {k: f["status"] for k, f in files.items()} == {
        **{k: "SUPERSEDED" for k in old},
        **{k: "PENDING" for k in new},
    }
    assert {files[k]["version_id"] for k in new} == {"a2"}
    assert files[new[0]]["billing_period"] == "2023-11"
    assert files[new[0]]["format"] == "legacy-csv"
    assert files[new[0]]["report_name"] == "rep"

    # A third delivery: the manifest now names a3, so a2 is superseded.
    newest = legacy_assembly(root, "", "a3")
    write(root, f"rep/{LEGACY_RANGE}/rep-Manifest.json", legacy_manifest("a3", newest))
    again = run_cur_fetch_batch("acme", ctx=ctx).projects[0]
    assert (again.registered, again.superseded) == (1, 2)
    statuses = {k: f["status"] for k, f in files_by_key(ctx, "acme").items()}
    assert [k for k, s in statuses.items() if s == "PENDING"] == newest


def test_fetch_twice_registers_nothing_new(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    keys = legacy_assembly(root, "", "a1", parts=3)
    write(root, f"rep/{LEGACY_RANGE}/rep-Manifest.json", legacy_manifest("a1", keys))
    add(ctx, "acme", f"file://{root}")
    assert run_cur_fetch_batch("acme", ctx=ctx).projects[0].registered == 3
    second = run_cur_fetch_batch("acme", ctx=ctx).projects[0]
    assert (second.registered, second.requeued, second.superseded) == (0, 0, 0)
    with ctx.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(BillingFile)) == 3


def test_cur2_focus_and_data_only_layouts(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    period = "BILLING_PERIOD=2024-09"
    cur2 = write(root, f"cur/cur2/data/{period}/cur2-00001.snappy.parquet")
    write(
        root,
        f"cur/cur2/metadata/{period}/cur2-Manifest.json",
        export_manifest("exec-1", [f"file://{root}/{cur2}"], ["line_item_unblended_cost"]),
    )
    focus = write(root, f"cur/focus/data/{period}/focus-00001.csv.gz")
    write(
        root,
        f"cur/focus/metadata/{period}/focus-Manifest.json",
        export_manifest("exec-9", [f"file://{root}/{focus}"], ["BilledCost", "EffectiveCost"]),
    )
    data_only = [
        write(root, f"cur/replica/data/BILLING_PERIOD=2024-08/replica-0000{n}.snappy.parquet")
        for n in (1, 2)
    ]
    athena = write(root, "cur/old/old/year=2023/month=7/old-00001.snappy.parquet")
    add(ctx, "acme", f"file://{root}")

    assert run_cur_fetch_batch("acme", ctx=ctx).projects[0].registered == 5

    files = files_by_key(ctx, "acme")
    assert (files[cur2]["format"], files[cur2]["version_id"]) == ("cur2-parquet", "exec-1")
    assert (files[focus]["format"], files[focus]["version_id"]) == ("focus-csv", "exec-9")
    assert files[focus]["billing_period"] == "2024-09"
    for key in data_only:
        assert (files[key]["version_id"], files[key]["status"]) == (None, "PENDING")
        assert (files[key]["report_name"], files[key]["billing_period"]) == ("replica", "2024-08")
    assert (files[athena]["format"], files[athena]["billing_period"]) == (
        "legacy-parquet",
        "2023-07",
    )


def test_overwritten_object_is_requeued_and_deleted_one_superseded(
    ctx: AppContext, tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    keep, change, drop = (
        write(root, f"x/data/BILLING_PERIOD=2024-08/x-0000{n}.csv.gz", f"v1-{n}") for n in (1, 2, 3)
    )
    add(ctx, "acme", f"file://{root}")
    run_cur_fetch_batch("acme", ctx=ctx)
    with ctx.db.transaction() as session:  # as if Batch B had processed them
        session.execute(text("UPDATE finops_billing_files SET status = 'DONE'"))
    before = files_by_key(ctx, "acme")

    write(root, change, "version two, longer")
    (root / drop).unlink()
    outcome = run_cur_fetch_batch("acme", ctx=ctx).projects[0]

    assert (outcome.requeued, outcome.superseded, outcome.registered) == (1, 1, 0)
    after = files_by_key(ctx, "acme")
    assert after[keep]["status"] == "DONE"
    assert after[change]["status"] == "PENDING"
    assert after[change]["etag"] != before[change]["etag"]
    assert after[drop]["status"] == "SUPERSEDED"


@pytest.mark.parametrize(
    "bad_key",
    [
        "elsewhere/rep/20231101-20231201/a1/rep-1.csv.gz",
        "cur/rep/20231101-20231201/../../../etc/passwd.csv",
        "s3://another-bucket/cur/rep/20231101-20231201/a1/rep-1.csv.gz",
    ],
)
def test_manifest_naming_keys_outside_the_prefix_is_rejected(
    ctx: AppContext, s3_endpoint: str, bad_key: str
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tenant")
    good = "cur/rep/20231101-20231201/a1/rep-1.csv.gz"
    s3.put_object(Bucket="tenant", Key=good, Body=b"x")
    s3.put_object(
        Bucket="tenant",
        Key="cur/rep/20231101-20231201/rep-Manifest.json",
        Body=legacy_manifest("a1", [good, bad_key]).encode(),
    )
    add(ctx, "acme", "s3://tenant/cur", role_arn="arn:aws:iam::123456789012:role/cur")

    outcome = run_cur_fetch_batch("acme", ctx=ctx).projects[0]

    assert outcome.errorType == "manifest_error"
    assert "outside the connection's bucket and prefix" in (outcome.error or "")
    assert files_by_key(ctx, "acme") == {}


def test_malformed_manifest_fails_only_that_project(ctx: AppContext, tmp_path: Path) -> None:
    broken, healthy = tmp_path / "broken", tmp_path / "healthy"
    legacy_assembly(broken, "", "a1")
    write(broken, f"rep/{LEGACY_RANGE}/rep-Manifest.json", "{not json")
    keys = legacy_assembly(healthy, "", "a1")
    write(healthy, f"rep/{LEGACY_RANGE}/rep-Manifest.json", legacy_manifest("a1", keys))
    add(ctx, "broken", f"file://{broken}")
    add(ctx, "healthy", f"file://{healthy}")

    result = run_cur_fetch_batch(ctx=ctx)

    by_id = {p.projectId: p for p in result.projects}
    assert by_id["broken"].errorType == "manifest_error"
    assert "not valid JSON" in (by_id["broken"].error or "")
    assert (by_id["healthy"].error, by_id["healthy"].registered) == (None, 1)


def test_unknown_and_disabled_projects_are_refused(ctx: AppContext, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="unknown project: ghost"):
        run_cur_fetch_batch("ghost", ctx=ctx)
    add(ctx, "sleepy", f"file://{tmp_path}")
    with ctx.db.transaction() as session:
        set_enabled(session, "sleepy", False)
    with pytest.raises(ConflictError, match="disabled"):
        run_cur_fetch_batch("sleepy", ctx=ctx)
    assert run_cur_fetch_batch(ctx=ctx).projects == []  # global runs skip disabled projects


def test_assume_role_uses_external_id_and_its_credentials_list_the_bucket(
    s3_endpoint: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"  # the S3 path is what is tested here
    upgrade_database(database_url)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tenant-a")
    keys = [f"cur/x/data/BILLING_PERIOD=2024-09/x-{n:05d}.snappy.parquet" for n in range(1105)]
    for key in keys:
        s3.put_object(Bucket="tenant-a", Key=key, Body=b"p")
    proxy = RecordingProxy(upstream=s3_endpoint).start()
    try:
        ctx = make_ctx(database_url, aws_endpoint_url=proxy.url)
        role = "arn:aws:iam::210987654321:role/cur-reader"
        add(ctx, "tenant-a", "s3://tenant-a/cur", role_arn=role, external_id="ext-7731")

        outcome = run_cur_fetch_batch("tenant-a", ctx=ctx).projects[0]
    finally:
        proxy.stop()

    assert (outcome.error, outcome.listed, outcome.registered) == (None, 1105, 1105)
    assume = [r for r in proxy.requests if b"Action=AssumeRole" in r.body]
    assert len(assume) == 1
    body = assume[0].body.decode()
    assert "ExternalId=ext-7731" in body
    assert "RoleSessionName=cur-ray-tenant-a" in body
    assert "RoleArn=arn%3Aaws%3Aiam%3A%3A210987654321%3Arole%2Fcur-reader" in body
    listings = [r for r in proxy.requests if r.method == "GET" and "list-type=2" in r.path]
    assert len(listings) == 2  # 1105 keys: two pages of ListObjectsV2
    for request in listings:
        authorization = request.headers["Authorization"]
        assert "Credential=testing/" not in authorization
        assert "x-amz-security-token" in {h.lower() for h in request.headers}
    access_keys = {
        r.headers["Authorization"].split("Credential=")[1].split("/")[0] for r in listings
    }
    assert len(access_keys) == 1
    assert access_keys != {"testing"}


def test_access_denied_and_missing_bucket_do_not_stop_healthy_project(
    ctx: AppContext, s3_endpoint: str
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="healthy")
    s3.put_object(Bucket="healthy", Key="cur/x/data/BILLING_PERIOD=2024-09/x-1.csv.gz", Body=b"c")
    role = "arn:aws:iam::123456789012:role/cur"
    add(ctx, "gone", "s3://no-such-bucket/cur", role_arn=role)
    add(ctx, "healthy", "s3://healthy/cur", role_arn=role)
    add(ctx, "no-role", "s3://healthy/cur")  # static keys not enabled: refused

    result = run_cur_fetch_batch(ctx=ctx)

    by_id = {p.projectId: p for p in result.projects}
    assert by_id["healthy"].registered == 1
    assert by_id["healthy"].error is None
    assert by_id["gone"].errorType == "storage_access_denied"
    assert "NoSuchBucket" in (by_id["gone"].error or "")
    assert "no role ARN" in (by_id["no-role"].error or "")
    assert len(result.failed_projects) == 2


def test_static_key_fallback_only_when_enabled(
    database_url: str, s3_endpoint: str, make_ctx: Callable[..., AppContext]
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="legacy-tenant")
    s3.put_object(Bucket="legacy-tenant", Key="x/data/BILLING_PERIOD=2024-01/x-1.csv", Body=b"c")
    ctx = make_ctx(database_url, cur_allow_static_credentials=True)
    add(ctx, "old", "s3://legacy-tenant")
    outcome = run_cur_fetch_batch("old", ctx=ctx).projects[0]
    assert (outcome.error, outcome.registered) == (None, 1)


def test_external_id_is_encrypted_at_rest(ctx: AppContext) -> None:
    add(ctx, "acme", "s3://tenant/cur", role_arn="arn:aws:iam::1:role/r", external_id="s3cr3t-x")
    with ctx.db.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM finops_project_connections")).one()
    assert "s3cr3t-x" not in json.dumps([str(v) for v in row])
    assert row._mapping["external_id_encrypted"]


@pytest.mark.postgres
def test_concurrent_fetch_runs_register_each_file_once(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    keys = [
        write(root, f"x/data/BILLING_PERIOD=2024-0{m}/x-{n:03d}.csv.gz", f"{m}{n}")
        for m in (1, 2, 3)
        for n in range(150)
    ]
    add(make_ctx(postgres_url), "acme", f"file://{root}")
    contexts = [make_ctx(postgres_url) for _ in range(4)]
    barrier = threading.Barrier(len(contexts))
    results: list[int] = []
    errors: list[BaseException] = []

    def fetch(ctx: AppContext) -> None:
        try:
            barrier.wait()
            results.append(run_cur_fetch_batch("acme", ctx=ctx).projects[0].registered)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(c,)) for c in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(results) == len(keys)  # every file registered by exactly one run
    with contexts[0].db.transaction() as session:
        rows = session.execute(
            select(BillingFile.object_key, func.count()).group_by(BillingFile.object_key)
        ).all()
    assert len(rows) == len(keys)
    assert {count for _, count in rows} == {1}
