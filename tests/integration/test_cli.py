"""The ``cur-ray`` command line, through its real entry point and a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cur_ray.entrypoints.cli import app
from cur_ray.samples.writers import write_shared_focus_sample, write_shared_legacy_sample

FILE_FIELDS = {
    "project_id",
    "bucket_name",
    "object_key",
    "etag",
    "size_bytes",
    "billing_period",
    "report_name",
    "format",
    "version_id",
    "status",
    "attempts",
    "error_message",
}
MONTHLY_FIELDS = {
    "billing_period",
    "usage_account_id",
    "service_code",
    "service_name",
    "charge_category",
    "currency",
    "unblended_cost",
    "blended_cost",
    "net_unblended_cost",
    "amortized_cost",
    "net_amortized_cost",
    "list_cost",
    "line_items",
}


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, make_settings: Any) -> Any:
    """Run ``cur-ray …`` in-process against the test database; returns (exit code, stdout)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CUR_SECRETS_KEY", make_settings().cur_secrets_key.get_secret_value())
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout

    return run


def test_projects_fetch_files_aggregate_costs(cli: Any, tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "bucket"
    write_shared_legacy_sample(root, shared_data / "aws-cur-legacy-sample.csv", prefix="cur")
    write_shared_focus_sample(root, shared_data / "focus-1.0-sample.csv", prefix="exports")

    assert cli("projects", "add", "acme", "--storage-url", f"file://{root}")[0] == 0
    code, out = cli("projects", "list", "--json")
    assert code == 0
    assert [p["project_id"] for p in json.loads(out)] == ["acme"]

    code, out = cli("fetch", "acme", "--local", "--json")
    assert code == 0, out
    assert json.loads(out)["result"]["projects"][0]["registered"] == 2

    code, out = cli("files", "acme", "--status", "pending", "--json")
    files = json.loads(out)
    assert code == 0
    assert len(files) == 2
    assert set(files[0]) >= FILE_FIELDS
    assert {f["billing_period"] for f in files} == {"2023-11", "2024-09"}
    assert {f["format"] for f in files} == {"legacy-csv", "focus-parquet"}

    code, out = cli("aggregate", "acme", "--local", "--json")
    assert code == 0, out
    assert json.loads(out)["result"]["done"] == 2

    code, out = cli("costs", "monthly", "acme", "--from", "2023-11", "--to", "2023-11", "--json")
    rows = json.loads(out)
    assert code == 0
    assert set(rows[0]) >= MONTHLY_FIELDS
    assert sum(Decimal(r["unblended_cost"]) for r in rows) == Decimal("1.68230869740")
    code, out = cli("costs", "daily", "acme", "--from", "2024-09", "--json")
    days = json.loads(out)
    assert sum(Decimal(r["unblended_cost"]) for r in days) == Decimal("18.00663861840")
    assert all(r["usage_date"].startswith("2024-09-") for r in days)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("fetch", "ghost", "--local"), 2, "unknown project: ghost"),
        (("aggregate", "bad id!", "--local"), 2, "invalid project id"),
        (("costs", "monthly", "ghost"), 2, "unknown project"),
        (("files", "--status", "NOPE"), 2, "invalid status"),
        (("projects", "add", "x", "--storage-url", "ftp://nope"), 2, "storage URL"),
        (("projects", "disable", "ghost"), 2, "unknown project"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(
    cli: Any, args: tuple[str, ...], code: int, message: str
) -> None:
    exit_code, _ = cli(*args)
    assert exit_code == code
    json_code, out = cli(*args, "--json")
    assert json_code == code
    assert message in json.loads(out)["error"]["message"]


def test_disabled_project_is_refused(cli: Any, tmp_path: Path) -> None:
    assert cli("projects", "add", "sleepy", "--storage-url", f"file://{tmp_path}")[0] == 0
    assert cli("projects", "disable", "sleepy")[0] == 0
    code, out = cli("fetch", "sleepy", "--local", "--json")
    assert code == 2
    assert "disabled" in json.loads(out)["error"]["message"]


def test_failed_project_makes_fetch_exit_1(cli: Any, tmp_path: Path) -> None:
    assert cli("projects", "add", "gone", "--storage-url", f"file://{tmp_path}/missing")[0] == 0
    code, out = cli("fetch", "--local", "--json")
    assert code == 1
    assert "does not exist" in json.loads(out)["result"]["projects"][0]["error"]


def _cur_ray(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cur_ray", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
def test_fetch_and_aggregate_run_on_a_local_ray_coordinator(
    tmp_path: Path, shared_data: Path
) -> None:
    """The default path: the CLI starts a local Ray, submits jobs, prints the job record."""
    root = tmp_path / "bucket"
    write_shared_legacy_sample(root, shared_data / "aws-cur-legacy-sample.csv", prefix="cur")
    env = {**os.environ, "DATABASE_URL": "sqlite:///cli.db", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    assert _cur_ray(["db", "upgrade"], env, tmp_path).returncode == 0
    added = _cur_ray(["projects", "add", "acme", "--storage-url", f"file://{root}"], env, tmp_path)
    assert added.returncode == 0, added.stderr

    fetched = _cur_ray(["fetch", "acme", "--json"], env, tmp_path)
    aggregated = _cur_ray(["aggregate", "acme", "--json"], env, tmp_path)

    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert json.loads(fetched.stdout)["status"] == "completed"
    assert aggregated.returncode == 0, aggregated.stderr[-2000:]
    job = json.loads(aggregated.stdout)
    assert (job["status"], job["trigger"], job["result"]["done"]) == ("completed", "cli", 1)
    costs = _cur_ray(["costs", "monthly", "acme", "--json"], env, tmp_path)
    assert sum(Decimal(r["unblended_cost"]) for r in json.loads(costs.stdout)) == Decimal(
        "1.68230869740"
    )
    jobs = json.loads(_cur_ray(["jobs", "--json"], env, tmp_path).stdout)
    assert [j["status"] for j in jobs["jobs"]] == ["completed", "completed"]
    assert jobs["queue"]["completed"] == 2


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    result = _cur_ray(["demo", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["databaseUrl"].startswith("sqlite:///")
    assert report["aggregate"]["status"] == "completed"
    assert report["aggregate"]["result"]["failed"] == []
    assert report["fetch"]["result"]["projects"][0]["superseded"] >= 1
    periods = {r["billing_period"] for r in report["monthly"]}
    assert periods == {"2024-01", "2024-02", "2024-03", "2024-04"}
    again = _cur_ray(["demo", "--json", "--local"], env, tmp_path)  # re-runnable
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["monthly"] == report["monthly"]
