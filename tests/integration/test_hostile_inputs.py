"""Hostile manifests, project ids and parameters, on real SQLite and PostgreSQL (issue 8).

* Manifests are untrusted: one naming a key outside its connection's bucket and prefix (by
  ``../``, another bucket, an absolute path, a ``file://`` or ``http://`` URI, encoding
  tricks), or one that is malformed or too large, fails its project with a clear message
  and registers nothing, while the other projects of the same run are unaffected.
* Project ids and parameters that are overlong, unicode, SQL metacharacters or NUL bytes are
  refused by the CLI (exit 2, one line, no traceback) and by the HTTP API (422 or 404 in
  the one error shape, never a 5xx), and leave every table exactly as it was.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cur_ray.adapters.db.models import Base
from cur_ray.adapters.storage import MAX_MANIFEST_BYTES
from cur_ray.entrypoints.cli import app as cli_app
from cur_ray.entrypoints.http_api import create_app
from cur_ray.services.api_keys import create_api_key
from cur_ray.services.context import AppContext
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.files import list_files
from cur_ray.services.projects import add_project

pytestmark = pytest.mark.hostile

PERIOD = "20231101-20231201"
DATA_KEY = f"cur/rep/{PERIOD}/a1/rep-1.csv.gz"
MANIFEST_KEY = f"cur/rep/{PERIOD}/rep-Manifest.json"
ROLE = "arn:aws:iam::123456789012:role/cur"
OUTSIDE = "outside the connection's bucket and prefix"


def legacy_manifest(keys: list[Any]) -> bytes:
    """A legacy CUR manifest naming ``keys`` (any JSON values)."""
    return json.dumps({"assemblyId": "a1", "reportKeys": keys}).encode()


def snapshot(ctx: AppContext) -> dict[str, list[str]]:
    """Every row of every table, as text: equal snapshots mean untouched tables."""
    with ctx.db.engine.connect() as conn:
        return {
            table.name: sorted(repr(tuple(row)) for row in conn.execute(select(table)))
            for table in Base.metadata.sorted_tables
        }


def registered(ctx: AppContext, project_id: str) -> list[str]:
    with ctx.db.transaction() as session:
        return [f["object_key"] for f in list_files(session, project_id)]


# ------------------------------------------------------------------------------ manifests

# Manifest entries that must never be accepted on the s3 project "s3://{bucket}/cur".
S3_ESCAPES = {
    "outside-prefix": f"elsewhere/rep/{PERIOD}/a1/rep-1.csv.gz",
    "sibling-prefix": f"cur-other/rep/{PERIOD}/a1/rep-1.csv.gz",
    "dot-dot": f"cur/rep/{PERIOD}/../../../etc/passwd.csv",
    "encoded-dot-dot": "s3://{bucket}/cur/rep/%2E%2E/%2E%2E/%2E%2E/etc/rep-1.csv.gz",
    "dot-segment": f"cur/./rep/{PERIOD}/a1/rep-1.csv.gz",
    "empty-segment": f"cur//rep/{PERIOD}/a1/rep-1.csv.gz",
    "other-bucket": f"s3://another-bucket/cur/rep/{PERIOD}/a1/rep-1.csv.gz",
    "userinfo-bucket": "s3://{bucket}@evil/cur/rep/" + PERIOD + "/a1/rep-1.csv.gz",
    "absolute-key": f"/cur/rep/{PERIOD}/a1/rep-1.csv.gz",
    "absolute-path": "/etc/passwd",
    "file-uri": "file:///etc/passwd",
    "file-uri-same-path": "file:///{bucket}/cur/rep/" + PERIOD + "/a1/rep-1.csv.gz",
    "http-uri": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "backslashes": "cur\\rep\\..\\..\\etc\\rep-1.csv.gz",
    "nul-byte": f"cur/rep/{PERIOD}/a1/rep-1.csv.gz\x00.png",
    "empty-key": "",
}


@dataclass
class Tenant:
    """A project, what its storage holds and what the run must say about it."""

    project_id: str
    error_type: str | None  # None: healthy
    message: str = ""


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A boto3 S3 client on the moto server."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def s3_tenant(ctx: AppContext, s3: Any, project_id: str, manifest: bytes) -> None:
    """Bucket ``project_id`` with one data file and ``manifest``; project on ``…/cur``."""
    s3.create_bucket(Bucket=project_id)
    s3.put_object(Bucket=project_id, Key=DATA_KEY, Body=b"x")
    s3.put_object(Bucket=project_id, Key=MANIFEST_KEY, Body=manifest)
    with ctx.db.transaction() as session:
        add_project(
            session,
            ctx.settings,
            project_id=project_id,
            storage_url=f"s3://{project_id}/cur",
            role_arn=ROLE,
        )


def file_tenant(ctx: AppContext, root: Path, project_id: str, manifest: bytes) -> None:
    """Folder ``root/project_id`` (the project's storage) with a data file and ``manifest``."""
    folder = root / project_id
    for key, content in ((DATA_KEY, b"x"), (MANIFEST_KEY, manifest)):
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=project_id, storage_url=f"file://{folder}")


def test_hostile_manifests_fail_their_project_alone(
    ctx: AppContext, s3: Any, tmp_path: Path
) -> None:
    tenants: list[Tenant] = []
    for index, (name, template) in enumerate(S3_ESCAPES.items()):
        project = f"esc-{index:02d}-{name}"[:63]
        bad = template.replace("{bucket}", project)
        s3_tenant(ctx, s3, project, legacy_manifest([DATA_KEY, bad]))
        tenants.append(Tenant(project, "manifest_error", OUTSIDE))
    # On a local folder: URIs to elsewhere on the disk, or to S3.
    folder = tmp_path / "folders"
    for name, entry in {
        "file-outside": "file:///etc/passwd",
        "file-sibling": f"file://{folder}/file-healthy/cur/rep/{PERIOD}/a1/rep-1.csv.gz",
        "file-dot-dot": f"file://{folder}/file-dot-dot/cur/../../file-healthy/cur/x.csv.gz",
        "file-s3-uri": f"s3://file-s3-uri/{DATA_KEY}",
        "file-remote-host": f"file://evil.example/{folder}/file-remote-host/{DATA_KEY}",
    }.items():
        file_tenant(ctx, folder, name, legacy_manifest([DATA_KEY, entry]))
        tenants.append(Tenant(name, "manifest_error", OUTSIDE))
    # Malformed documents.
    for name, document, words in (
        ("not-json", b"{nope", "not valid JSON"),
        ("not-utf8", b'{"reportKeys": ["\xff\xfe"]}', "not valid JSON"),
        ("json-array", b"[]", "expected a JSON object"),
        ("keys-not-list", json.dumps({"reportKeys": DATA_KEY}).encode(), "list of strings"),
        ("keys-numbers", legacy_manifest([DATA_KEY, 7]), "list of strings"),
        ("keys-objects", legacy_manifest([{"key": DATA_KEY}]), "list of strings"),
        ("ten-mb-outside", legacy_manifest([DATA_KEY] + ["../x" * 25] * 100_000), OUTSIDE),
    ):
        s3_tenant(ctx, s3, name, document)
        tenants.append(Tenant(name, "manifest_error", words))
    over_cap = b'{"reportKeys": [' + b" " * MAX_MANIFEST_BYTES + b"]}"
    s3_tenant(ctx, s3, "s3-over-cap", over_cap)
    file_tenant(ctx, folder, "file-over-cap", over_cap)
    tenants += [
        Tenant("s3-over-cap", "storage_error", f"larger than {MAX_MANIFEST_BYTES} bytes"),
        Tenant("file-over-cap", "storage_error", f"larger than {MAX_MANIFEST_BYTES} bytes"),
    ]
    s3_tenant(ctx, s3, "s3-healthy", legacy_manifest([DATA_KEY, f"s3://s3-healthy/{DATA_KEY}"]))
    file_tenant(ctx, folder, "file-healthy", legacy_manifest([DATA_KEY]))
    tenants += [Tenant("s3-healthy", None), Tenant("file-healthy", None)]

    result = run_cur_fetch_batch(ctx=ctx)

    by_id = {p.projectId: p for p in result.projects}
    assert set(by_id) == {t.project_id for t in tenants}
    for tenant in tenants:
        outcome = by_id[tenant.project_id]
        if tenant.error_type is None:
            assert (outcome.error, outcome.registered) == (None, 1), outcome
            assert registered(ctx, tenant.project_id) == [DATA_KEY]
            continue
        assert outcome.errorType == tenant.error_type, outcome
        message = outcome.error or ""
        assert tenant.message in message, (tenant.project_id, message)
        assert "Manifest.json" in message, message  # names the manifest
        assert len(message) < 1000, (tenant.project_id, len(message))
        assert "\x00" not in message
        assert registered(ctx, tenant.project_id) == []
    assert len(result.failed_projects) == len(tenants) - 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_deeply_nested_manifest_is_a_manifest_error(ctx: AppContext, tmp_path: Path) -> None:
    file_tenant(ctx, tmp_path, "nested", b"[" * 200_000 + b"]" * 200_000)

    outcome = run_cur_fetch_batch("nested", ctx=ctx).projects[0]

    assert registered(ctx, "nested") == []
    assert outcome.errorType == "manifest_error", outcome


# ------------------------------------------------------------------ ids and parameters

HOSTILE_IDS = [
    "a" * 65,
    "a" * 100_000,
    "projét",
    "проект",
    "\U0001f642",
    "acme\u200b",  # zero-width space
    "' OR 1=1 --",
    "acme' OR '1'='1",
    "acme; DROP TABLE finops_billing_files; --",
    "%",
    "_",
    "acme%",
    "acme\x00",
    "\x00",
    "acme\n",
    " acme",
    "acme/../beta",
    "",
    "-x",
]
# Valid ids of no project; "acm_" would match "acme" if any query used LIKE unescaped.
UNKNOWN_IDS = ["acm_", "acme_", "ACME", "a" * 64]
HOSTILE_VALUES = [
    "' OR 1=1 --",
    "%",
    "_",
    "x\x00",
    "\x00",
    "é" * 1000,
    "x" * 100_000,
    "2024-03'; DELETE FROM finops_cost_service_monthly; --",
    "\u0662\u0660\u0662\u0664-\u0660\u0663",  # 2024-03 in Arabic-Indic digits
]


@dataclass
class World:
    """Two projects with files and costs, an admin key, and the database snapshot."""

    ctx: AppContext
    admin: dict[str, str]
    before: dict[str, list[str]]


@pytest.fixture
def world(ctx: AppContext, tmp_path: Path) -> World:
    """Projects acme and beta, each with a registered file and a job."""
    with ctx.db.transaction() as session:
        for project in ("acme", "beta"):
            root = tmp_path / project
            data = root / "x" / "data" / "BILLING_PERIOD=2024-03"
            data.mkdir(parents=True)
            (data / "x-1.csv").write_text("not,a,cur\n")
            add_project(session, ctx.settings, project_id=project, storage_url=f"file://{root}")
        key, _ = create_api_key(session, project_id=None, description="admin")
    run_cur_fetch_batch(ctx=ctx)
    return World(ctx, {"Authorization": f"Bearer {key}"}, snapshot(ctx))


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``cur-ray …`` in this process against the world's database."""
    settings = world.ctx.settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    key = settings.cur_secrets_key
    assert key is not None
    monkeypatch.setenv("CUR_SECRETS_KEY", key.get_secret_value())
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli_app, list(args))

    return run


def cli_commands(value: str) -> list[list[str]]:
    """Every command taking a project id, with ``value`` as the id."""
    return [
        ["projects", "add", value, "--storage-url", "file:///tmp/nowhere"],
        ["projects", "enable", value],
        ["projects", "disable", value],
        ["fetch", value, "--local"],
        ["aggregate", value, "--local"],
        ["files", value],
        ["requeue", value],
        ["costs", "monthly", value],
        ["costs", "daily", value],
        ["jobs", "--project", value],
        ["api-keys", "create", "--project", value],
    ]


def cli_parameters(value: str) -> list[list[str]]:
    """Every command taking a filter or a month, with ``value`` as it."""
    return [
        ["costs", "monthly", "acme", "--from", value],
        ["costs", "daily", "acme", "--to", value],
        ["files", "acme", "--status", value],
        ["jobs", "--status", value],
        ["api-keys", "revoke", value],
    ]


def assert_usage_error(result: Any, args: list[str]) -> None:
    """Exit 2 with a one-line error: no traceback, no Python exception escaping."""
    shown = repr(args)[:120]
    assert result.exit_code == 2, (shown, result.exit_code, result.output[-500:])
    assert isinstance(result.exception, SystemExit), (shown, result.exception)
    assert "Traceback" not in result.output, shown
    assert "error" in result.output.lower(), (shown, result.output[-300:])


def test_cli_refuses_hostile_ids_and_parameters(world: World, cli: Callable[..., Any]) -> None:
    # Hostile ids are refused before any query: the whole cross product runs on SQLite, and
    # on PostgreSQL the ids that reach it (unknown ones) plus a few with NUL bytes and SQL.
    everything = world.ctx.db.engine.dialect.name == "sqlite"
    ids = HOSTILE_IDS if everything else [v for v in HOSTILE_IDS if "\x00" in v or "'" in v]
    values = HOSTILE_VALUES if everything else [v for v in HOSTILE_VALUES if len(v) < 100]
    calls = 0
    for value in ids:
        for args in cli_commands(value):
            assert_usage_error(cli(*args), args)
            calls += 1
    for value in UNKNOWN_IDS:
        for args in cli_commands(value)[1:]:  # adding a valid id would succeed, rightly
            result = cli(*args)
            if args[0] == "jobs":  # a filter: no job of that project, not an error
                assert result.exit_code == 0, result.output
                assert "acme" not in result.output
                continue
            assert_usage_error(result, args)
            assert "unknown project" in result.output, (args, result.output)
            calls += 1
    for value in values:
        for args in cli_parameters(value):
            assert_usage_error(cli(*args), args)
            calls += 1
    add = ["projects", "add", "new", "--storage-url"]
    for args, words in (
        (["aggregate", "acme", "--local", "--limit", "0"], "limit"),
        (["aggregate", "acme", "--local", "--limit", "-1"], "limit"),
        (["jobs", "--limit", "1000000"], "limit"),
        ([*add, "file:///tmp/../etc"], "absolute folder"),
        ([*add, "s3://bucket/a\x00b"], "prefix"),
        ([*add, "s3://bucket/../x"], "prefix"),
        ([*add, "s3://Bucket/x"], "bucket"),
        ([*add, "http://bucket/x"], "storage URL must be"),
        ([*add, "s3://bucket/x", "--role-arn", "' OR 1=1 --"], "role ARN"),
    ):
        result = cli(*args)
        assert_usage_error(result, args)
        assert words.lower() in result.output.lower(), (args, result.output[-300:])
        calls += 1

    assert calls > (250 if everything else 80)
    assert snapshot(world.ctx) == world.before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_refuses_an_unbounded_aggregate_limit(world: World, cli: Callable[..., Any]) -> None:
    args = ["aggregate", "acme", "--local", "--limit", str(10**23)]
    assert_usage_error(cli(*args), args)
    assert snapshot(world.ctx) == world.before


@pytest.mark.parametrize("option", ["--region", "--endpoint-url"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_refuses_unvalidated_connection_fields(
    world: World, cli: Callable[..., Any], option: str
) -> None:
    args = ["projects", "add", "new", "--storage-url", "s3://bucket/cur", option, "us\x00east"]
    assert_usage_error(cli(*args), args)
    assert snapshot(world.ctx) == world.before


PROJECT_ROUTES = [
    ("POST", "/projects/{p}/batch/cur-fetch"),
    ("POST", "/projects/{p}/batch/cur-aggregate"),
    ("POST", "/projects/{p}/batch/requeue"),
    ("GET", "/projects/{p}/files"),
    ("GET", "/projects/{p}/costs/monthly"),
    ("GET", "/projects/{p}/costs/daily"),
]


def assert_client_error(response: Any, allowed: set[int]) -> None:
    """A 4xx of ``allowed`` in the one error shape, without a stack trace."""
    where = f"{response.request.method} {str(response.request.url)[:150]}"
    assert response.status_code in allowed, (where, response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error"}, where
    assert set(body["error"]) == {"code", "message"}, where
    assert len(response.text) < 2000, where


def test_http_refuses_hostile_ids_and_parameters(world: World) -> None:
    # Every project route of the app is covered.
    client = TestClient(create_app(lambda: world.ctx), raise_server_exceptions=False)
    spec = client.get("/openapi.json").json()
    documented = {
        (m.upper(), p.replace("{projectId}", "{p}"))
        for p, ops in spec["paths"].items()
        if "{projectId}" in p
        for m in ops
    }
    assert documented == set(PROJECT_ROUTES)
    calls = 0
    with client:
        for value in HOSTILE_IDS + UNKNOWN_IDS:
            # URLs are capped at 64 KiB by the client: 8 000 characters are overlong enough.
            value = value[:8000]
            path_value = urllib.parse.quote(value, safe="")
            expected = {404} if value in UNKNOWN_IDS else {404, 405, 422}
            for method, template in PROJECT_ROUTES:
                url = template.format(p=path_value)
                assert_client_error(client.request(method, url, headers=world.admin), expected)
                calls += 1
            listing = client.get("/jobs", params={"projectId": value}, headers=world.admin)
            if value in UNKNOWN_IDS:
                assert listing.status_code == 200  # a filter: simply no jobs
                assert listing.json()["jobs"] == []
            else:
                assert_client_error(listing, {422})
            if path_value:  # "/jobs/" is the listing, redirected
                job = client.get(f"/jobs/{path_value}", headers=world.admin)
                assert_client_error(job, {404, 405, 422})
            calls += 2
        for value in HOSTILE_VALUES:
            value = value[:8000]
            for url, params in (
                ("/jobs", {"status": value}),
                ("/jobs", {"name": value}),
                ("/jobs", {"limit": value}),
                ("/projects/acme/files", {"status": value}),
                ("/projects/acme/costs/monthly", {"from": value}),
                ("/projects/acme/costs/daily", {"to": value}),
            ):
                response = client.get(url, params=params, headers=world.admin)
                assert_client_error(response, {422})
                calls += 1
            header = {**world.admin, "Idempotency-Key": value.encode("utf-8")}
            response = client.post("/projects/acme/batch/cur-fetch", headers=header)
            assert_client_error(response, {422})
            calls += 1
        for body in ({"limit": "' OR 1=1 --"}, {"limit": 10**30}, {"limit": -1}, [1], "x"):
            response = client.post(
                "/projects/acme/batch/cur-aggregate", json=body, headers=world.admin
            )
            assert_client_error(response, {422})
            calls += 1

    assert calls > 200
    assert snapshot(world.ctx) == world.before
