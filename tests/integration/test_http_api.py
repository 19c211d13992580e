"""The HTTP API (SPEC §7) through FastAPI's TestClient over real SQLite and PostgreSQL.

Also the ``cur-ray api-keys`` CLI. Real HTTP through Ray Serve is tested elsewhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.adapters.db.models import (
    ApiKey,
    BatchJob,
    BillingFile,
    CostServiceMonthly,
    CostSummaryDaily,
)
from cur_ray.entrypoints.cli_api_keys import api_keys_app
from cur_ray.entrypoints.http_api import create_app
from cur_ray.errors import ConfigurationError
from cur_ray.services import costs as costs_service
from cur_ray.services import jobs as jobs_service
from cur_ray.services.api_keys import authenticate, create_api_key, revoke_api_key
from cur_ray.services.context import AppContext
from cur_ray.services.projects import add_project, set_enabled
from cur_ray.settings import Settings

ALPHA, BETA = "alpha", "beta"
KEY_RE = re.compile(r"^cur_[0-9a-f]{16}_[A-Za-z0-9_-]{43,}$")


class RecordingNotifier:
    """Counts wake-ups (the coordinator's stand-in)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    async def notify(self) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("coordinator unreachable")


@dataclass
class Api:
    ctx: AppContext
    client: TestClient
    notifier: RecordingNotifier
    admin: dict[str, str]
    alpha: dict[str, str]
    beta: dict[str, str]
    revoked: dict[str, str]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(ctx: AppContext, tmp_path: Path) -> Iterator[Api]:
    """Projects alpha and beta, an admin key, one key per project, a revoked key."""
    with ctx.db.transaction() as s:
        for project in (ALPHA, BETA):
            folder = tmp_path / project
            folder.mkdir()
            add_project(s, ctx.settings, project_id=project, storage_url=f"file://{folder}")
        admin, _ = create_api_key(s, project_id=None, description="admin")
        alpha, _ = create_api_key(s, project_id=ALPHA, description=None)
        beta, _ = create_api_key(s, project_id=BETA, description=None)
        revoked, view = create_api_key(s, project_id=ALPHA, description="old")
        revoke_api_key(s, view.key_id)
    notifier = RecordingNotifier()
    app = create_app(lambda: ctx, notifier=notifier)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(
            ctx, client, notifier, bearer(admin), bearer(alpha), bearer(beta), bearer(revoked)
        )


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape, the status, no stack trace."""
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    detail: dict[str, Any] = body["error"]
    return detail


def stored_job(ctx: AppContext, job_id: str) -> jobs_service.JobView:
    with ctx.db.transaction() as s:
        return jobs_service.get_job(s, job_id)


# ---------------------------------------------------------------------------------------------
# Triggers


def test_project_triggers_enqueue_a_waiting_job_and_wake_the_coordinator(api: Api) -> None:
    fetch = api.client.post(f"/projects/{ALPHA}/batch/cur-fetch", headers=api.alpha)
    assert fetch.status_code == 202, fetch.text
    body = fetch.json()
    assert set(body) == {"jobId", "name", "projectId", "status"}
    assert body["name"] == "cur-fetch"
    assert body["projectId"] == ALPHA
    assert body["status"] == "waiting"
    assert fetch.headers["Location"].endswith(f"/jobs/{body['jobId']}")
    assert api.notifier.calls == 1

    job = api.client.get(f"/jobs/{body['jobId']}", headers=api.alpha)
    assert job.status_code == 200, job.text
    shown = job.json()
    assert shown["jobId"] == body["jobId"]
    assert shown["status"] == "waiting"
    assert shown["trigger"] == "api"
    assert shown["projectId"] == ALPHA
    assert shown["attempts"] == 0
    stored = stored_job(api.ctx, body["jobId"])
    assert (stored.name, stored.project_id, stored.trigger, stored.status) == (
        "cur-fetch",
        ALPHA,
        "api",
        "waiting",
    )

    limited = api.client.post(
        f"/projects/{ALPHA}/batch/cur-aggregate", headers=api.alpha, json={"limit": 7}
    )
    assert limited.status_code == 202, limited.text
    assert limited.json()["name"] == "cur-aggregate"
    assert stored_job(api.ctx, limited.json()["jobId"]).limit == 7
    default = api.client.post(f"/projects/{ALPHA}/batch/cur-aggregate", headers=api.admin)
    assert default.status_code == 202, default.text
    assert stored_job(api.ctx, default.json()["jobId"]).limit is None
    assert api.notifier.calls == 3

    listed = api.client.get("/jobs", params={"projectId": ALPHA}, headers=api.alpha)
    assert listed.status_code == 200
    assert {j["jobId"] for j in listed.json()["jobs"]} == {
        body["jobId"],
        limited.json()["jobId"],
        default.json()["jobId"],
    }


def test_global_triggers_need_an_admin_key(api: Api) -> None:
    for name in ("cur-fetch", "cur-aggregate"):
        response = api.client.post(f"/batch/{name}", headers=api.admin)
        assert response.status_code == 202, response.text
        assert response.json()["projectId"] is None
        assert response.json()["name"] == name
        assert stored_job(api.ctx, response.json()["jobId"]).project_id is None
        assert_error(api.client.post(f"/batch/{name}", headers=api.alpha), 403, "forbidden")
    limited = api.client.post("/batch/cur-aggregate", headers=api.admin, json={"limit": 100000})
    assert limited.status_code == 202
    assert stored_job(api.ctx, limited.json()["jobId"]).limit == 100000


def test_idempotency_key_returns_the_same_job(api: Api) -> None:
    headers = {**api.alpha, "Idempotency-Key": "nightly-2024-03-01"}
    first = api.client.post(f"/projects/{ALPHA}/batch/cur-fetch", headers=headers)
    again = api.client.post(f"/projects/{ALPHA}/batch/cur-fetch", headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert first.json()["jobId"] == "nightly-2024-03-01"
    assert api.notifier.calls == 1  # the replay enqueued nothing new
    with api.ctx.db.transaction() as s:
        assert len(s.scalars(select(BatchJob)).all()) == 1

    # The same key for another job (or another project's job) is a conflict, not a leak.
    other = api.client.post(f"/projects/{ALPHA}/batch/cur-aggregate", headers=headers)
    assert_error(other, 409, "conflict")
    stolen = api.client.post(
        f"/projects/{BETA}/batch/cur-fetch",
        headers={**api.beta, "Idempotency-Key": "nightly-2024-03-01"},
    )
    assert_error(stolen, 409, "conflict")
    assert ALPHA not in stolen.text
    bad = api.client.post(
        f"/projects/{ALPHA}/batch/cur-fetch", headers={**api.alpha, "Idempotency-Key": "no way!"}
    )
    assert_error(bad, 422, "invalid_input")


def test_disabled_project_is_a_conflict(api: Api) -> None:
    with api.ctx.db.transaction() as s:
        set_enabled(s, BETA, False)
    assert_error(api.client.post(f"/projects/{BETA}/batch/cur-fetch", headers=api.beta), 409)


def test_notifier_failure_does_not_lose_the_job(ctx: AppContext, tmp_path: Path) -> None:
    with ctx.db.transaction() as s:
        add_project(s, ctx.settings, project_id=ALPHA, storage_url=f"file://{tmp_path}")
        key, _ = create_api_key(s, project_id=ALPHA, description=None)
    notifier = RecordingNotifier(fail=True)
    with TestClient(create_app(lambda: ctx, notifier), raise_server_exceptions=False) as client:
        response = client.post(f"/projects/{ALPHA}/batch/cur-fetch", headers=bearer(key))
    assert response.status_code == 202
    assert notifier.calls == 1
    assert stored_job(ctx, response.json()["jobId"]).status == "waiting"


# ---------------------------------------------------------------------------------------------
# Authentication and scope


def test_requests_without_a_valid_key_are_unauthorized(api: Api) -> None:
    secret_part = api.alpha["Authorization"].split("_", 2)[2]
    tampered = api.alpha["Authorization"][:-4] + "AAAA"
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": tampered},
        {"Authorization": "Bearer cur_0123456789abcdef_" + "x" * 43},
        {"Authorization": "Bearer " + "y" * 5000},
        api.revoked,
    ):
        response = api.client.get(f"/projects/{ALPHA}/files", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert secret_part not in response.text
    assert api.client.get(f"/projects/{ALPHA}/files", headers=api.alpha).status_code == 200


def test_project_key_cannot_read_other_projects_jobs(api: Api) -> None:
    alpha_job = api.client.post(f"/projects/{ALPHA}/batch/cur-fetch", headers=api.alpha)
    beta_job = api.client.post(f"/projects/{BETA}/batch/cur-fetch", headers=api.beta)
    global_job = api.client.post("/batch/cur-fetch", headers=api.admin)
    alpha_id, beta_id = alpha_job.json()["jobId"], beta_job.json()["jobId"]

    assert_error(api.client.get(f"/jobs/{alpha_id}", headers=api.beta), 403, "forbidden")
    gid = global_job.json()["jobId"]
    assert_error(api.client.get(f"/jobs/{gid}", headers=api.beta), 403, "forbidden")
    assert api.client.get(f"/jobs/{beta_id}", headers=api.beta).status_code == 200
    assert api.client.get(f"/jobs/{alpha_id}", headers=api.admin).status_code == 200

    # A project key's listing is forced to its project; asking for another one is refused.
    own = api.client.get("/jobs", headers=api.beta)
    assert [j["jobId"] for j in own.json()["jobs"]] == [beta_id]
    listing = api.client.get("/jobs", params={"projectId": ALPHA}, headers=api.beta)
    assert_error(listing, 403, "forbidden")
    everything = api.client.get("/jobs", headers=api.admin)
    assert {j["jobId"] for j in everything.json()["jobs"]} == {alpha_id, beta_id, gid}
    filtered = api.client.get(
        "/jobs", params={"name": "cur-fetch", "status": "waiting", "limit": 1}, headers=api.admin
    )
    assert len(filtered.json()["jobs"]) == 1


# ---------------------------------------------------------------------------------------------
# Routes x strangers: every route refuses callers without a key, and other projects' keys

PROJECT_ROUTES = [
    ("POST", "/projects/{p}/batch/cur-fetch"),
    ("POST", "/projects/{p}/batch/cur-aggregate"),
    ("POST", "/projects/{p}/batch/requeue"),
    ("GET", "/projects/{p}/files"),
    ("GET", "/projects/{p}/costs/monthly"),
    ("GET", "/projects/{p}/costs/daily"),
]
GLOBAL_ROUTES = [
    ("POST", "/batch/cur-fetch"),
    ("POST", "/batch/cur-aggregate"),
    ("GET", "/schedules"),
]
JOB_ROUTES = [("GET", "/jobs/{j}"), ("GET", "/jobs?projectId={p}")]


def test_every_route_refuses_strangers(api: Api) -> None:
    # The table above covers every route the app documents (a new route must be added here).
    spec = api.client.get("/openapi.json").json()
    app_routes = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path != "/healthz"
        for method in operations
    }
    table = {
        (m, p.replace("{p}", "{projectId}").replace("{j}", "{jobId}").split("?")[0])
        for m, p in PROJECT_ROUTES + GLOBAL_ROUTES + JOB_ROUTES
    }
    assert app_routes == table

    job_id = api.client.post(f"/projects/{ALPHA}/batch/cur-fetch", headers=api.alpha).json()[
        "jobId"
    ]
    for method, template in PROJECT_ROUTES + GLOBAL_ROUTES + JOB_ROUTES:
        url = template.format(p=ALPHA, j=job_id)
        for headers, expected in (({}, 401), (api.revoked, 401), (api.beta, 403)):
            response = api.client.request(method, url, headers=headers)
            assert response.status_code in {401, 403}
            assert_error(response, expected)
    # Nothing was enqueued, requeued or leaked by the refused calls.
    with api.ctx.db.transaction() as s:
        assert [j.job_id for j in s.scalars(select(BatchJob))] == [job_id]


# ---------------------------------------------------------------------------------------------
# 404 and 422


def test_unknown_ids_and_routes_are_not_found(api: Api) -> None:
    for method, template in PROJECT_ROUTES:
        response = api.client.request(method, template.format(p="nobody"), headers=api.admin)
        assert_error(response, 404, "not_found")
    assert_error(api.client.get("/jobs/no-such-job", headers=api.admin), 404, "not_found")
    assert_error(api.client.get("/nowhere"), 404, "not_found")
    assert_error(api.client.get("/projects/alpha/nowhere", headers=api.admin), 404)
    assert_error(api.client.delete(f"/jobs/{ALPHA}", headers=api.admin), 405)


@pytest.mark.parametrize("bad_id", ["bad id!", "x" * 65, "-leading-dash", "a.b"])
def test_invalid_project_ids_are_rejected(api: Api, bad_id: str) -> None:
    for method, template in PROJECT_ROUTES:
        response = api.client.request(method, template.format(p=bad_id), headers=api.admin)
        error = assert_error(response, 422, "invalid_input")
        assert "projectId" in error["message"]
    listing = api.client.get("/jobs", params={"projectId": bad_id}, headers=api.admin)
    assert_error(listing, 422, "invalid_input")


def test_invalid_input_is_422_without_echo(api: Api) -> None:
    aggregate = f"/projects/{ALPHA}/batch/cur-aggregate"
    secret = "s3cr3t-do-not-echo"
    for body in ({"limit": 0}, {"limit": 100001}, {"limit": secret}, {"limit": [secret]}):
        response = api.client.post(aggregate, headers=api.admin, json=body)
        error = assert_error(response, 422, "invalid_input")
        assert "body.limit" in error["message"]  # names the bad field...
        assert secret not in response.text  # ...never echoes the value
    extra = api.client.post(aggregate, headers=api.admin, json={"limit": 1, "limits": 2})
    assert "body.limits" in assert_error(extra, 422, "invalid_input")["message"]
    broken = api.client.post(
        aggregate, headers={**api.admin, "Content-Type": "application/json"}, content=b"{nope"
    )
    assert_error(broken, 422, "invalid_input")
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "many"}, {"status": "bogus"}):
        assert_error(api.client.get("/jobs", params=params, headers=api.admin), 422)
    assert_error(api.client.get("/jobs", params={"name": "nope"}, headers=api.admin), 422)
    assert_error(
        api.client.get(f"/projects/{ALPHA}/files", params={"status": "NOPE"}, headers=api.admin),
        422,
    )
    for path in ("monthly", "daily"):
        url = f"/projects/{ALPHA}/costs/{path}"
        for params in (
            {"from": "2024-13"},
            {"from": "March"},
            {"from": "2024-05", "to": "2024-01"},
        ):
            assert_error(api.client.get(url, params=params, headers=api.admin), 422)


# ---------------------------------------------------------------------------------------------
# Health, internal errors


def test_healthz_needs_no_key(api: Api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_unreachable(
    make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    broken = make_ctx(f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}")
    with TestClient(create_app(lambda: broken), raise_server_exceptions=False) as client:
        assert_error(client.get("/healthz"), 503, "database_error")
        well_formed = bearer("cur_0123456789abcdef_" + "x" * 43)  # so that it reaches the database
        assert_error(client.get("/jobs", headers=well_formed), 503, "database_error")


def test_unexpected_errors_are_opaque_500s(caplog: pytest.LogCaptureFixture) -> None:
    def exploding() -> AppContext:
        raise RuntimeError("postgresql://admin:hunter2@db/prod is down")

    def misconfigured() -> AppContext:
        raise ConfigurationError("DATABASE_URL is hunter2")

    logger = logging.getLogger("cur_ray.entrypoints.http_api")
    logger.addHandler(caplog.handler)  # the cur_ray logger may not propagate to the root
    try:
        with TestClient(create_app(exploding), raise_server_exceptions=False) as client:
            response = client.get("/jobs", headers=bearer("cur_whatever"))
            assert assert_error(response, 500) == {
                "code": "internal_error",
                "message": "internal error",
            }
            assert "hunter2" not in response.text
            assert client.get("/healthz").status_code == 503
        with TestClient(create_app(misconfigured), raise_server_exceptions=False) as client:
            response = client.get("/jobs", headers=bearer("cur_whatever"))
            assert assert_error(response, 500)["message"] == "internal error"
            assert "hunter2" not in response.text
    finally:
        logger.removeHandler(caplog.handler)
    traces = [getattr(r, "traceback", "") for r in caplog.records]
    assert any("RuntimeError" in t and "Traceback" in t for t in traces)


# ---------------------------------------------------------------------------------------------
# Files, requeue and costs return what the services return


def test_files_and_requeue(api: Api) -> None:
    with api.ctx.db.transaction() as s:
        for index, status in enumerate(("ERROR", "DONE", "ERROR")):
            s.add(
                BillingFile(
                    project_id=ALPHA if index < 2 else BETA,
                    bucket_name="b",
                    object_key=f"cur/{index}.csv.gz",
                    etag=f"e{index}",
                    size_bytes=10,
                    report_name="r",
                    billing_period=dt.date(2024, 3, 1),
                    format="csv",
                    status=status,
                    attempts=1,
                    error_message="bad file" if status == "ERROR" else None,
                )
            )
    files = api.client.get(f"/projects/{ALPHA}/files", headers=api.alpha)
    assert files.status_code == 200
    assert files.json()["projectId"] == ALPHA
    assert [f["object_key"] for f in files.json()["files"]] == ["cur/0.csv.gz", "cur/1.csv.gz"]
    errors = api.client.get(
        f"/projects/{ALPHA}/files", params={"status": "error"}, headers=api.alpha
    )
    assert [f["status"] for f in errors.json()["files"]] == ["ERROR"]

    requeued = api.client.post(f"/projects/{ALPHA}/batch/requeue", headers=api.alpha)
    assert requeued.status_code == 200
    assert requeued.json() == {"projectId": ALPHA, "requeued": 1}
    pending = api.client.get(
        f"/projects/{ALPHA}/files", params={"status": "PENDING"}, headers=api.alpha
    )
    assert [f["object_key"] for f in pending.json()["files"]] == ["cur/0.csv.gz"]
    with api.ctx.db.transaction() as s:  # beta's ERROR file was left alone
        beta_file = s.scalars(select(BillingFile).where(BillingFile.project_id == BETA)).one()
        assert beta_file.status == "ERROR"


def _insert_costs(ctx: AppContext) -> None:
    measures = {
        "unblended_cost": Decimal("12.345678901234567890"),
        "blended_cost": Decimal("12"),
        "net_unblended_cost": None,
        "amortized_cost": Decimal("0.000000000000000001"),
        "net_amortized_cost": Decimal("-1.5"),
        "list_cost": Decimal("100.10"),
        "line_items": 3,
    }
    with ctx.db.transaction() as s:
        for month in (1, 2, 3):
            period = dt.date(2024, month, 1)
            s.add(
                CostServiceMonthly(
                    project_id=ALPHA,
                    billing_period=period,
                    usage_account_id="111122223333",
                    service_code="AmazonS3",
                    service_name="Amazon Simple Storage Service",
                    charge_category="Usage",
                    currency="USD",
                    **measures,
                )
            )
            s.add(
                CostSummaryDaily(
                    project_id=ALPHA,
                    billing_period=period,
                    usage_date=period + dt.timedelta(days=4),
                    usage_account_id="111122223333",
                    currency="USD",
                    **measures,
                )
            )


@pytest.mark.parametrize("grain", ["monthly", "daily"])
def test_costs_return_what_the_service_returns(api: Api, grain: str) -> None:
    _insert_costs(api.ctx)
    service = costs_service.monthly_costs if grain == "monthly" else costs_service.daily_costs
    for params in (
        {},
        {"from": "2024-02"},
        {"from": "2024-02", "to": "2024-02"},
        {"to": "2024-01"},
    ):
        response = api.client.get(
            f"/projects/{ALPHA}/costs/{grain}", params=params, headers=api.alpha
        )
        assert response.status_code == 200, response.text
        with api.ctx.db.transaction() as s:
            expected = service(s, ALPHA, params.get("from"), params.get("to"))
        assert response.json() == {"projectId": ALPHA, "rows": expected}
    rows = api.client.get(f"/projects/{ALPHA}/costs/{grain}", headers=api.alpha).json()["rows"]
    assert len(rows) == 3
    assert rows[0]["unblended_cost"] == "12.34567890123456789"  # exact decimal strings
    assert rows[0]["amortized_cost"] == "0.000000000000000001"
    assert rows[0]["net_unblended_cost"] is None
    empty = api.client.get(f"/projects/{BETA}/costs/{grain}", headers=api.beta)
    assert empty.json() == {"projectId": BETA, "rows": []}


# ---------------------------------------------------------------------------------------------
# OpenAPI


def test_openapi_documents_routes_errors_and_bearer_auth(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    assert spec["info"]["title"] == "cur_ray API"
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    trigger = spec["paths"]["/projects/{projectId}/batch/cur-fetch"]["post"]
    assert trigger["security"] == [{"ApiKey": []}]
    assert trigger["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobAccepted"
    }
    for status in ("401", "403", "404", "422"):
        assert trigger["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert api.client.get("/docs").status_code == 200


# ---------------------------------------------------------------------------------------------
# CLI: cur-ray api-keys


@pytest.fixture
def cli_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> Iterator[AppContext]:
    """A migrated SQLite file with project alpha, named by DATABASE_URL for the CLI."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade_database(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    ctx = AppContext.from_settings(make_settings(database_url=url))
    with ctx.db.transaction() as s:
        add_project(s, ctx.settings, project_id=ALPHA, storage_url=f"file://{tmp_path}")
    # The CLI installs the JSON log handler; leave the logger as other tests expect it.
    logger = logging.getLogger("cur_ray")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        yield ctx
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate, logger.level = saved[1], saved[2]
        ctx.close()


def test_cli_creates_lists_and_revokes_keys(cli_database: AppContext) -> None:
    runner = CliRunner()
    created = runner.invoke(
        api_keys_app, ["create", "--project", ALPHA, "--description", "dashboard"]
    )
    assert created.exit_code == 0, created.output
    lines = created.stdout.splitlines()
    assert len(lines) == 1  # the key, once, and nothing else on stdout
    key = lines[0]
    assert KEY_RE.fullmatch(key)
    assert key not in created.stderr

    with cli_database.db.transaction() as s:
        rows = s.scalars(select(ApiKey)).all()
        assert len(rows) == 1
        row = rows[0]
        assert row.key_hash == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        stored = [row.key_id, row.key_hash, row.project_id, row.description]
        assert all(key not in str(value) for value in stored)
        assert key.split("_", 2)[2] not in row.key_hash
        principal = authenticate(s, key)
        assert principal is not None
        assert principal.project_id == ALPHA
        assert principal.can_access(ALPHA)
        assert not principal.can_access(BETA)
        assert not principal.is_admin

    admin = runner.invoke(api_keys_app, ["create", "--json"])
    assert admin.exit_code == 0, admin.output
    admin_json = json.loads(admin.stdout)
    assert KEY_RE.fullmatch(admin_json["key"])
    assert admin_json["projectId"] is None

    listed = runner.invoke(api_keys_app, ["list", "--json"])
    assert listed.exit_code == 0
    views = json.loads(listed.stdout)
    assert {v["keyId"] for v in views} == {row.key_id, admin_json["keyId"]}
    assert key not in listed.stdout
    assert row.key_hash not in listed.stdout
    assert admin_json["key"] not in listed.stdout
    table = runner.invoke(api_keys_app, ["list"])
    assert table.exit_code == 0
    assert row.key_id in table.stdout
    assert key not in table.stdout

    revoked = runner.invoke(api_keys_app, ["revoke", row.key_id])
    assert revoked.exit_code == 0, revoked.output
    assert row.key_id in revoked.stdout
    with cli_database.db.transaction() as s:
        assert authenticate(s, key) is None
        assert s.get(ApiKey, row.key_id).revoked_at is not None  # type: ignore[union-attr]
    again = runner.invoke(api_keys_app, ["revoke", row.key_id, "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["revoked"] is True


def test_cli_errors_have_exit_codes(cli_database: AppContext) -> None:
    runner = CliRunner()
    unknown = runner.invoke(api_keys_app, ["create", "--project", "nobody"])
    assert unknown.exit_code == 2
    assert unknown.stdout == ""
    assert "unknown project" in unknown.stderr
    invalid = runner.invoke(api_keys_app, ["create", "--project", "bad id!", "--json"])
    assert invalid.exit_code == 2
    assert json.loads(invalid.stdout)["error"]["code"] == "invalid_input"
    missing = runner.invoke(api_keys_app, ["revoke", "0123456789abcdef"])
    assert missing.exit_code == 2
    assert "unknown API key" in missing.stderr
    with cli_database.db.transaction() as s:
        assert s.scalars(select(ApiKey)).all() == []
