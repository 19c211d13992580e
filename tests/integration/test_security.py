"""Security checks of SPEC §5 on real SQLite and PostgreSQL (issue 8).

* API keys are stored only as hashes: the raw key appears in no column of any table.
* A project key cannot read, trigger or requeue another project on any route of the
  OpenAPI document (iterated, not listed by hand), and a caller without a key gets 401 even
  with a malformed body.
* Secrets (an external id, the ``CUR_SECRETS_KEY``, the AWS keys of a moto STS AssumeRole,
  an API key and its hash) never appear in logs, job results, API responses, CLI output or
  error messages; the external id is unreadable in the raw database row.
* Key rotation: ``CUR_SECRETS_KEY=new,old`` + ``cur-ray secrets rotate`` re-encrypts; then
  ``new`` alone decrypts and ``old`` alone no longer does; a missing key is a clear
  ConfigurationError.

AssumeRole's ExternalId and RoleSessionName are checked on the wire by
``tests/integration/test_cur_fetch.py::test_assume_role_uses_external_id_and_its_credentials_list_the_bucket``
(not repeated here).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, select, text
from typer.testing import CliRunner

from cur_ray.adapters.aws import AwsTarget
from cur_ray.adapters.crypto import SecretBox, generate_key
from cur_ray.adapters.db.models import BatchJob, BillingFile
from cur_ray.entrypoints.cli import app as cli_app
from cur_ray.entrypoints.http_api import create_app
from cur_ray.errors import ConfigurationError
from cur_ray.samples.line_items import generate_line_items
from cur_ray.samples.writers import upload_tree, write_legacy_csv_export
from cur_ray.services import jobs as jobs_service
from cur_ray.services.api_keys import create_api_key
from cur_ray.services.context import AppContext
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.projects import add_project

pytestmark = pytest.mark.hostile

MARCH = dt.date(2024, 3, 1)
ROLE = "arn:aws:iam::123456789012:role/cur-reader"
EXTERNAL_ID = "ext-id-Sup3r-S3cret-0042"
ALPHA, BETA = "alpha", "beta"


def dump_database(ctx: AppContext) -> str:
    """Every row of every table (reflected, so none is missed), as one text."""
    metadata = MetaData()
    metadata.reflect(ctx.db.engine)
    lines = []
    with ctx.db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                lines.append(f"{table.name}: {tuple(row)!r} {[str(v) for v in row]}")
    assert any(line.startswith("finops_api_keys") for line in lines)
    return "\n".join(lines)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def cli_env(ctx: AppContext, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Run ``cur-ray …`` in this process on the test database, with optional extra env."""
    monkeypatch.setenv("DATABASE_URL", ctx.settings.database_url)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    key = ctx.settings.cur_secrets_key
    assert key is not None
    monkeypatch.setenv("CUR_SECRETS_KEY", key.get_secret_value())
    runner = CliRunner()

    def run(*args: str, env: dict[str, str | None] | None = None) -> Any:
        return runner.invoke(cli_app, list(args), env=env)

    return run


# ------------------------------------------------------------------------------- API keys


def test_api_keys_are_stored_only_as_hashes(
    ctx: AppContext, cli_env: Callable[..., Any], tmp_path: Path
) -> None:
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=ALPHA, storage_url=f"file://{tmp_path}")
        service_key, _ = create_api_key(session, project_id=ALPHA, description="service")
    created = cli_env("api-keys", "create", "--project", ALPHA, "--json")
    assert created.exit_code == 0, created.output
    cli_key = re.search(r"cur_[0-9a-f]{16}_[A-Za-z0-9_-]{43,}", created.output)
    assert cli_key is not None, created.output
    keys = [service_key, cli_key.group(0)]

    dump = dump_database(ctx)
    for key in keys:
        secret = key.split("_", 2)[2]
        assert key not in dump
        assert secret not in dump
        assert hashlib.sha256(key.encode()).hexdigest() in dump  # what is stored instead
    if ctx.db.engine.dialect.name == "sqlite":  # not even in a stale page of the file
        raw = Path(ctx.db.engine.url.database or "").read_bytes()
        for key in keys:
            assert key.split("_", 2)[2].encode() not in raw
    listed = cli_env("api-keys", "list", "--json")
    assert listed.exit_code == 0
    for key in keys:
        assert key.split("_", 2)[2] not in listed.output
        assert hashlib.sha256(key.encode()).hexdigest() not in listed.output


# ---------------------------------------------------------------------- project scoping


def test_project_key_reaches_no_other_project_on_any_route(ctx: AppContext, tmp_path: Path) -> None:
    with ctx.db.transaction() as session:
        for project in (ALPHA, BETA):
            folder = tmp_path / project
            folder.mkdir()
            add_project(session, ctx.settings, project_id=project, storage_url=f"file://{folder}")
        alpha_key, _ = create_api_key(session, project_id=ALPHA, description=None)
        beta_job = jobs_service.enqueue_job(
            session, name=jobs_service.CUR_FETCH, project_id=BETA, trigger="api"
        )[0].job_id
        global_job = jobs_service.enqueue_job(
            session, name=jobs_service.CUR_FETCH, project_id=None, trigger="api"
        )[0].job_id
        session.add(
            BillingFile(
                project_id=BETA,
                bucket_name=str(tmp_path / BETA),
                object_key="x/data/BILLING_PERIOD=2024-03/x-1.csv",
                etag="e",
                size_bytes=1,
                billing_period=MARCH,
                report_name="x",
                format="cur2-csv",
                status="ERROR",
                attempts=1,
                error_message="beta's private error",
            )
        )

    def beta_state() -> list[Any]:
        with ctx.db.transaction() as session:
            jobs = session.scalars(select(BatchJob).order_by(BatchJob.job_id)).all()
            files = session.scalars(select(BillingFile)).all()
            return [(j.job_id, j.status) for j in jobs] + [(f.id, f.status) for f in files]

    before = beta_state()
    client = TestClient(create_app(lambda: ctx), raise_server_exceptions=False)
    spec = client.get("/openapi.json").json()
    refused = 0
    with client:
        for path, operations in spec["paths"].items():
            if path == "/healthz":
                continue
            for method, operation in operations.items():
                # The path's project is beta; a job id is beta's job, or the global one.
                for job_id in (beta_job, global_job):
                    url = path.replace("{projectId}", BETA).replace("{jobId}", job_id)
                    body = {"limit": 1} if "requestBody" in operation else None
                    names = {p["name"] for p in operation.get("parameters", [])}
                    params = {"projectId": BETA} if "projectId" in names else None
                    headers = {**bearer(alpha_key), "Idempotency-Key": "taken-by-beta"}
                    response = client.request(
                        method.upper(), url, headers=headers, json=body, params=params
                    )
                    where = f"{method.upper()} {url}"
                    assert response.status_code == 403, (where, response.text)
                    assert response.json()["error"]["code"] == "forbidden", where
                    assert beta_job not in response.text
                    assert "beta's private error" not in response.text
                    refused += 1
        # Without a projectId filter, alpha's key lists only alpha's jobs (none).
        listing = client.get("/jobs", headers=bearer(alpha_key))
        assert listing.status_code == 200
        assert listing.json()["jobs"] == []
        # No key: 401 first, even when the body is malformed (FastAPI parses it first).
        for headers in ({}, {"Authorization": "Bearer nope"}):
            for content in (b"{not json", b"\xa5\xe5", b'{"limit": "many"}'):
                response = client.post(
                    f"/projects/{ALPHA}/batch/cur-aggregate",
                    headers={**headers, "Content-Type": "application/json"},
                    content=content,
                )
                assert response.status_code == 401, (content, response.text)
                assert response.json()["error"]["code"] == "unauthorized"
        # With a key, an undecodable body is invalid input like any other (not FastAPI's 400).
        undecodable = client.post(
            f"/projects/{ALPHA}/batch/cur-aggregate",
            headers={**bearer(alpha_key), "Content-Type": "application/json"},
            content=b"\xa5\xe5",
        )
        assert undecodable.status_code == 422, undecodable.text
        assert undecodable.json()["error"]["code"] == "invalid_input"

    assert refused >= 2 * 11
    assert beta_state() == before  # nothing triggered, requeued or read into existence


# --------------------------------------------------------------------------- secrets


def test_secrets_never_leak_into_logs_results_responses_or_errors(
    ctx: AppContext,
    s3_endpoint: str,
    tmp_path: Path,
    captured_logs: io.StringIO,
    cli_env: Callable[..., Any],
) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=51, rows=200)
    write_legacy_csv_export(
        root, prefix="cur", report="r", period=MARCH, assembly_id="a", items=items
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tenant")
    upload_tree(root, s3, "tenant")
    s3.put_object(
        Bucket="tenant",
        Key="cur/x/data/BILLING_PERIOD=2024-03/corrupt.snappy.parquet",
        Body=b"PAR1 not parquet",
    )
    with ctx.db.transaction() as session:
        for project, url in ((ALPHA, "s3://tenant/cur"), (BETA, "s3://no-such-bucket/cur")):
            add_project(
                session,
                ctx.settings,
                project_id=project,
                storage_url=url,
                role_arn=ROLE,
                external_id=EXTERNAL_ID,
            )
        admin_key, _ = create_api_key(session, project_id=None, description="admin")
        alpha_key, _ = create_api_key(session, project_id=ALPHA, description=None)

    job_ids = []
    with ctx.db.transaction() as session:
        for name in (jobs_service.CUR_FETCH, jobs_service.CUR_AGGREGATE):
            view, _ = jobs_service.enqueue_job(session, name=name, project_id=None, trigger="api")
            job_ids.append(view.job_id)
    finished = [
        jobs_service.run_one_job(ctx, "test-worker", dt.timedelta(minutes=5)) for _ in job_ids
    ]
    assert [j.status for j in finished if j is not None] == ["completed", "completed"]
    results = json.dumps([j.result for j in finished if j is not None], default=str)
    assert "corrupt.snappy.parquet" in results  # errors are reported…
    assert "NoSuchBucket" in results

    texts = [captured_logs.getvalue(), results]
    with TestClient(create_app(lambda: ctx), raise_server_exceptions=False) as client:
        for key in (admin_key, alpha_key):
            for url in (
                "/jobs",
                *(f"/jobs/{job_id}" for job_id in job_ids),
                f"/projects/{ALPHA}/files",
                f"/projects/{BETA}/files",
                f"/projects/{ALPHA}/costs/monthly",
                f"/projects/{ALPHA}/costs/daily",
                "/schedules",
                "/projects/nobody/files",
                "/jobs/no-such-job",
            ):
                texts.append(client.get(url, headers=bearer(key)).text)
            texts.append(client.post("/batch/cur-fetch", headers=bearer(key)).text)
        texts.append(client.get("/jobs", headers=bearer(admin_key[:-2] + "xx")).text)
    for args in (
        ("projects", "list", "--json"),
        ("projects", "list"),
        ("jobs", "--json"),
        ("files", "--json"),
        ("api-keys", "list", "--json"),
        ("fetch", BETA, "--local", "--json"),
    ):
        texts.append(cli_env(*args).output)
    texts.append(captured_logs.getvalue())
    everything = "\n".join(texts)
    # Positive controls: the logs were captured, the CLI showed the projects.
    assert "cur_ray.services.cur_fetch" in everything
    assert '"has_external_id": true' in everything

    creds = ctx.credentials.credentials_for(  # cached: the ones the jobs used
        AwsTarget(project_id=ALPHA, role_arn=ROLE, external_id=EXTERNAL_ID)
    )
    secrets_key = ctx.settings.cur_secrets_key
    assert secrets_key is not None
    assert creds.session_token
    secrets = {
        "external id": EXTERNAL_ID,
        "CUR_SECRETS_KEY": secrets_key.get_secret_value(),
        "AWS secret access key": creds.secret_access_key,
        "AWS session token": creds.session_token,
        "admin API key": admin_key.split("_", 2)[2],
        "project API key": alpha_key.split("_", 2)[2],
        "API key hash": hashlib.sha256(admin_key.encode()).hexdigest(),
    }
    for name, secret in secrets.items():
        assert secret not in everything, f"{name} leaked"
    dump = dump_database(ctx)
    for name in ("external id", "CUR_SECRETS_KEY", "AWS secret access key", "AWS session token"):
        assert secrets[name] not in dump, f"{name} stored in the database"
    # The external id is unreadable in the raw row, yet decrypts with the key.
    with ctx.db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT external_id_encrypted FROM finops_project_connections")
        ).all()
    assert len(rows) == 2
    for (token,) in rows:
        assert EXTERNAL_ID not in token
        assert SecretBox(secrets["CUR_SECRETS_KEY"]).decrypt(token) == EXTERNAL_ID


# ------------------------------------------------------------------------ key rotation


def stored_tokens(ctx: AppContext) -> list[str]:
    with ctx.db.engine.connect() as conn:
        query = text(
            "SELECT external_id_encrypted FROM finops_project_connections "
            "WHERE external_id_encrypted IS NOT NULL ORDER BY project_id"
        )
        return [row[0] for row in conn.execute(query)]


def test_secrets_key_rotation(ctx: AppContext, cli_env: Callable[..., Any]) -> None:
    secrets_key = ctx.settings.cur_secrets_key
    assert secrets_key is not None
    old, new = secrets_key.get_secret_value(), generate_key()
    with ctx.db.transaction() as session:
        for project in (ALPHA, BETA):
            add_project(
                session,
                ctx.settings,
                project_id=project,
                storage_url=f"s3://{project}-bucket/cur",
                role_arn=ROLE,
                external_id=f"{EXTERNAL_ID}-{project}",
            )
    before = stored_tokens(ctx)

    rotated = cli_env("secrets", "rotate", env={"CUR_SECRETS_KEY": f"{new},{old}"})
    assert rotated.exit_code == 0, rotated.output
    assert "re-encrypted 2 secret(s)" in rotated.output

    after = stored_tokens(ctx)
    assert len(after) == 2
    assert set(after).isdisjoint(before)
    for token, project in zip(after, (ALPHA, BETA), strict=True):
        assert SecretBox(new).decrypt(token) == f"{EXTERNAL_ID}-{project}"
        with pytest.raises(ConfigurationError, match="wrong or removed key"):
            SecretBox(old).decrypt(token)
    # The new key alone now serves the services; the old key alone fails clearly.
    again = cli_env("secrets", "rotate", env={"CUR_SECRETS_KEY": new})
    assert again.exit_code == 0, again.output
    stale = cli_env("secrets", "rotate", env={"CUR_SECRETS_KEY": old})
    assert stale.exit_code == 1
    assert "cannot be decrypted with CUR_SECRETS_KEY" in stale.output
    assert old not in stale.output
    assert new not in stale.output
    assert "Traceback" not in stale.output
    for token in stored_tokens(ctx):
        assert SecretBox(new).decrypt(token).startswith(EXTERNAL_ID)


def test_missing_or_invalid_secrets_key_is_a_clear_configuration_error(
    ctx: AppContext, cli_env: Callable[..., Any], make_ctx: Callable[..., AppContext]
) -> None:
    with ctx.db.transaction() as session:
        add_project(
            session,
            ctx.settings,
            project_id=ALPHA,
            storage_url="s3://alpha-bucket/cur",
            role_arn=ROLE,
            external_id=EXTERNAL_ID,
        )
    keyless = make_ctx(ctx.settings.database_url, cur_secrets_key=None)
    with pytest.raises(ConfigurationError, match="CUR_SECRETS_KEY is not set"):
        run_cur_fetch_batch(ALPHA, ctx=keyless)
    with keyless.db.transaction() as session, pytest.raises(ConfigurationError, match="not set"):
        add_project(
            session,
            keyless.settings,
            project_id=BETA,
            storage_url="s3://beta-bucket/cur",
            role_arn=ROLE,
            external_id="another",
        )
    for env, words in (
        ({"CUR_SECRETS_KEY": None}, "CUR_SECRETS_KEY is not set"),
        ({"CUR_SECRETS_KEY": "not-a-fernet-key"}, "not a valid Fernet key"),
        ({"CUR_SECRETS_KEY": generate_key()}, "cannot be decrypted"),
    ):
        result = cli_env("fetch", ALPHA, "--local", env=env)
        assert result.exit_code == 1, (env, result.output)
        assert words in result.output, (env, result.output)
        assert "Traceback" not in result.output
        assert "not-a-fernet-key" not in result.output
    with ctx.db.transaction() as session:
        assert session.scalars(select(BillingFile)).all() == []
