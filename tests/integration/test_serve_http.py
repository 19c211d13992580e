"""Real HTTP against the Serve application, with the coordinator running the jobs."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2 as httpx
import pytest
import ray
from paths import SHARED_DATA, has_shared_data
from ray import serve

from cur_ray.adapters.crypto import generate_key
from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.entrypoints.coordinator import COORDINATOR_NAME
from cur_ray.entrypoints.serve_app import CurRayApi
from cur_ray.entrypoints.singletons import NAMESPACE
from cur_ray.samples.writers import write_shared_focus_sample, write_shared_legacy_sample
from cur_ray.services.api_keys import create_api_key
from cur_ray.services.context import AppContext
from cur_ray.services.projects import add_project
from cur_ray.settings import Settings

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[dict[str, Any]]:
    """A Serve app on 127.0.0.1 over a SQLite database with two projects and three keys."""
    if not has_shared_data():
        pytest.skip(f"real billing data not found at {SHARED_DATA}")
    data = SHARED_DATA
    work = tmp_path_factory.mktemp("serve")
    url = f"sqlite:///{work / 'api.db'}"
    upgrade_database(url)
    secrets_key = generate_key()
    ctx = AppContext.from_settings(Settings(database_url=url, cur_secrets_key=secrets_key))
    keys: dict[str, str] = {}
    with ctx.db.transaction() as session:
        for project, writer in (
            (
                "legacy",
                lambda root: write_shared_legacy_sample(
                    root, data / "aws-cur-legacy-sample.csv", prefix="cur"
                ),
            ),
            (
                "focus",
                lambda root: write_shared_focus_sample(
                    root, data / "focus-1.0-sample.csv", prefix="x"
                ),
            ),
        ):
            root = work / project
            writer(root)
            add_project(session, ctx.settings, project_id=project, storage_url=f"file://{root}")
            keys[project], _ = create_api_key(session, project_id=project, description=None)
        keys["admin"], _ = create_api_key(session, project_id=None, description="tests")
    env = {"DATABASE_URL": url, "CUR_SECRETS_KEY": secrets_key, "RAY_AUTH_MODE": "disabled"}
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = CurRayApi.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}})
    serve.run(app.bind(), name="cur_ray_test", route_prefix="/")
    try:
        yield {"base": f"http://127.0.0.1:{port}", "keys": keys, "ctx": ctx}
    finally:
        serve.shutdown()
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE), no_restart=True)
        ctx.close()


def call(api: dict[str, Any], method: str, path: str, key: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {api['keys'][key]}"} if key else {}
    return httpx.request(method, api["base"] + path, headers=headers, timeout=30, **kw)


def run_job(api: dict[str, Any], path: str, key: str, **kw: Any) -> dict[str, Any]:
    response = call(api, "POST", path, key, **kw)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"jobId", "name", "projectId", "status"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = call(api, "GET", f"/jobs/{body['jobId']}", key).json()
        if job["status"] in ("completed", "failed"):
            return dict(job)
        time.sleep(0.3)
    raise AssertionError(f"job did not finish: {job}")


def test_trigger_poll_and_read_exact_costs_over_http(api: dict[str, Any]) -> None:
    assert call(api, "GET", "/healthz").json() == {"status": "ok"}
    fetched = run_job(api, "/projects/legacy/batch/cur-fetch", "legacy")
    assert (fetched["status"], fetched["trigger"]) == ("completed", "api")
    aggregated = run_job(api, "/projects/legacy/batch/cur-aggregate", "legacy", json={"limit": 10})
    assert aggregated["status"] == "completed"
    assert aggregated["result"]["done"] == 1

    monthly = call(api, "GET", "/projects/legacy/costs/monthly?from=2023-11&to=2023-11", "legacy")
    assert monthly.status_code == 200
    rows = monthly.json()["rows"]
    assert sum(Decimal(r["unblended_cost"]) for r in rows) == Decimal("1.68230869740")
    s3 = sum(Decimal(r["unblended_cost"]) for r in rows if r["service_code"] == "AmazonS3")
    assert s3 == Decimal("1.44056535650")
    daily = call(api, "GET", "/projects/legacy/costs/daily", "legacy").json()["rows"]
    by_day = {r["usage_date"]: Decimal(r["unblended_cost"]) for r in daily}
    assert by_day["2023-11-01"] == Decimal("0.0830106084")


def test_global_jobs_need_an_admin_key_and_cover_all_projects(api: dict[str, Any]) -> None:
    assert call(api, "POST", "/batch/cur-fetch", "focus").status_code == 403
    assert run_job(api, "/batch/cur-fetch", "admin")["status"] == "completed"
    job = run_job(api, "/batch/cur-aggregate", "admin")
    assert job["status"] == "completed"
    rows = call(api, "GET", "/projects/focus/costs/monthly", "focus").json()["rows"]
    assert sum(Decimal(r["unblended_cost"]) for r in rows) == Decimal("18.00663861840")
    listed = call(api, "GET", "/jobs?projectId=focus", "focus")
    assert listed.status_code == 200
    assert call(api, "GET", "/jobs?projectId=legacy", "focus").status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("GET", "/projects/legacy/files", None, 401),
        ("GET", "/projects/legacy/costs/monthly", "focus", 403),
        ("POST", "/projects/legacy/batch/cur-fetch", "focus", 403),
        ("POST", "/projects/legacy/batch/requeue", "focus", 403),
        ("GET", "/projects/nobody/files", "admin", 404),
        ("GET", "/jobs/00000000-0000-0000-0000-000000000000", "admin", 404),
        ("GET", "/no/such/route", "admin", 404),
        ("POST", "/projects/bad%20id!/batch/cur-fetch", "admin", 422),
        ("GET", "/projects/legacy/costs/monthly?from=2023-13", "legacy", 422),
    ],
)
def test_errors_have_one_json_shape(
    api: dict[str, Any], method: str, path: str, key: str | None, status: int
) -> None:
    response = call(api, method, path, key)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert "Traceback" not in response.text


def test_bad_limit_is_422(api: dict[str, Any]) -> None:
    response = call(
        api, "POST", "/projects/legacy/batch/cur-aggregate", "legacy", json={"limit": 0}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"]


def test_openapi_is_served(api: dict[str, Any]) -> None:
    spec = call(api, "GET", "/openapi.json").json()
    assert "/projects/{projectId}/batch/cur-aggregate" in spec["paths"]
    assert call(api, "GET", "/docs").status_code == 200
