"""The batch scheduler: schedules in the database, one job per tick, catch-up, global jobs.

Service loops run with an injected clock on real SQLite and PostgreSQL; one test runs the
scheduler actor with the coordinator on a real local Ray.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import ray
import typer
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cur_ray.adapters.db.models import BatchJob, BatchSchedule
from cur_ray.domain.schedules import CronSchedule
from cur_ray.entrypoints.cli_scheduler import scheduler_command, schedules_command
from cur_ray.entrypoints.coordinator import COORDINATOR_NAME, get_coordinator
from cur_ray.entrypoints.http_api import create_app
from cur_ray.entrypoints.scheduler_actor import SCHEDULER_NAME, get_scheduler
from cur_ray.entrypoints.singletons import NAMESPACE
from cur_ray.errors import ConfigurationError
from cur_ray.samples.expected import expected_monthly
from cur_ray.samples.line_items import generate_line_items
from cur_ray.samples.writers import write_data_export
from cur_ray.services import jobs as jobs_service
from cur_ray.services.api_keys import create_api_key
from cur_ray.services.context import AppContext
from cur_ray.services.costs import monthly_costs
from cur_ray.services.files import list_files
from cur_ray.services.projects import add_project
from cur_ray.services.scheduler import (
    AGGREGATE_SCHEDULE_ID,
    FETCH_SCHEDULE_ID,
    ScheduleView,
    configure_schedules,
    list_schedules,
    run_tick,
)

UTC = dt.UTC
EXACT = Decimal("1e-8")
LEASE = dt.timedelta(seconds=60)


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def configure(ctx: AppContext, now: dt.datetime, **settings: Any) -> dict[str, ScheduleView]:
    """configure_schedules with these settings (flag on unless given) at ``now``."""
    values = {"cur_batch_scheduler_enabled": True, **settings}
    with ctx.db.transaction() as session:
        views = configure_schedules(session, ctx.settings.model_copy(update=values), now=now)
    return {v.schedule_id: v for v in views}


def schedules(ctx: AppContext) -> dict[str, ScheduleView]:
    with ctx.db.transaction() as session:
        return {v.schedule_id: v for v in list_schedules(session)}


def scheduled_jobs(ctx: AppContext) -> dict[str, jobs_service.JobView]:
    with ctx.db.transaction() as session:
        rows = session.scalars(select(BatchJob).where(BatchJob.trigger == "schedule")).all()
        return {row.job_id: jobs_service.JobView.of(row) for row in rows}


def fixed_clock(now: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: now


def tick_ids(schedule_id: str, ticks: list[dt.datetime]) -> set[str]:
    return {f"{schedule_id}:{t:%Y-%m-%dT%H:%M:%SZ}" for t in ticks}


# ---------------------------------------------------------------------------------------------
# (a) two schedulers on one database: one job per tick


def test_two_schedulers_enqueue_exactly_one_job_per_tick(
    database_url: str, make_ctx: Callable[..., AppContext]
) -> None:
    crons = {"cur_fetch_cron": "* * * * *", "cur_aggregate_cron": "*/2 * * * *"}
    start = at(2026, 11, 28, 14, 0)
    steps = 12
    contexts = [make_ctx(database_url), make_ctx(database_url)]
    barrier = threading.Barrier(len(contexts))
    created: list[list[str]] = [[] for _ in contexts]
    errors: list[BaseException] = []

    def scheduler(index: int) -> None:
        ctx = contexts[index]
        try:
            barrier.wait()
            configure(ctx, start - dt.timedelta(seconds=30), **crons)  # both start at once
            for step in range(steps):
                # The fake clocks disagree by a few seconds, as two clusters' clocks would.
                now = start + dt.timedelta(minutes=step, seconds=1 + 7 * index)
                barrier.wait()
                created[index].extend(run_tick(contexts[index], clock=fixed_clock(now)))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=scheduler, args=(i,)) for i in range(len(contexts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors

    minutes = [start + dt.timedelta(minutes=m) for m in range(steps)]
    want = tick_ids(FETCH_SCHEDULE_ID, minutes) | tick_ids(
        AGGREGATE_SCHEDULE_ID, [m for m in minutes if m.minute % 2 == 0]
    )
    both = created[0] + created[1]
    assert sorted(both) == sorted(want)  # each tick created once, by one of the two
    jobs = scheduled_jobs(contexts[0])
    assert set(jobs) == want
    for job_id, job in jobs.items():
        assert job.project_id is None
        assert job.trigger == "schedule"
        assert job.status == "waiting"
        assert job.name == (
            "cur-fetch" if job_id.startswith(FETCH_SCHEDULE_ID) else "cur-aggregate"
        )
    stored = schedules(contexts[0])
    assert set(stored) == {FETCH_SCHEDULE_ID, AGGREGATE_SCHEDULE_ID}  # never a second row
    assert stored[FETCH_SCHEDULE_ID].last_tick_at == minutes[-1]
    assert stored[FETCH_SCHEDULE_ID].next_tick_at == minutes[-1] + dt.timedelta(minutes=1)
    assert stored[AGGREGATE_SCHEDULE_ID].last_tick_at == at(2026, 11, 28, 14, 10)
    assert stored[AGGREGATE_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 14, 12)


# ---------------------------------------------------------------------------------------------
# (b) configuration: upsert, changed cron, flag off, invalid cron


def test_start_up_upserts_replaces_changed_cron_and_flag_off_disables(ctx: AppContext) -> None:
    t0 = at(2026, 11, 28, 13, 59, 30)
    first = configure(ctx, t0)
    assert {k: (v.cron, v.timezone, v.enabled) for k, v in first.items()} == {
        FETCH_SCHEDULE_ID: ("0 * * * *", "UTC", True),
        AGGREGATE_SCHEDULE_ID: ("15 * * * *", "UTC", True),
    }
    assert first[FETCH_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 14)
    assert first[AGGREGATE_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 14, 15)
    assert first[FETCH_SCHEDULE_ID].job_name == "cur-fetch"
    assert first[AGGREGATE_SCHEDULE_ID].job_name == "cur-aggregate"

    # A changed cron (and time zone) replaces the old one in place, from its next tick.
    changed = configure(
        ctx, t0, cur_fetch_cron="30 6 * * *", cur_scheduler_timezone="Europe/Berlin"
    )
    assert changed[FETCH_SCHEDULE_ID].cron == "30 6 * * *"
    assert changed[FETCH_SCHEDULE_ID].timezone == "Europe/Berlin"
    assert changed[FETCH_SCHEDULE_ID].next_tick_at == at(2026, 11, 29, 5, 30)  # 06:30 CET
    assert changed[AGGREGATE_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 14, 15)
    with ctx.db.transaction() as session:
        assert len(session.scalars(select(BatchSchedule)).all()) == 2

    # An invalid cron fails before anything is written, naming the variable.
    with pytest.raises(ConfigurationError) as raised:
        configure(ctx, t0, cur_aggregate_cron="61 * * * *")
    assert str(raised.value).startswith(
        "CUR_AGGREGATE_CRON: invalid cron expression '61 * * * *': "
    )
    assert schedules(ctx) == changed

    # Flag off: both disabled, nothing due, ever.
    off = configure(ctx, t0, cur_batch_scheduler_enabled=False)
    assert {v.enabled for v in off.values()} == {False}
    assert {v.next_tick_at for v in off.values()} == {None}
    assert run_tick(ctx, at(2026, 11, 29, 12)) == []
    assert run_tick(ctx, at(2027, 6, 1)) == []
    assert scheduled_jobs(ctx) == {}

    # Back on: starts at the next tick, no catch-up for the time it was off.
    on = configure(ctx, at(2026, 11, 30, 8, 20))
    assert on[AGGREGATE_SCHEDULE_ID].next_tick_at == at(2026, 11, 30, 9, 15)
    assert run_tick(ctx, at(2026, 11, 30, 8, 21)) == []


def test_schedules_are_shown_by_http_and_cli(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(ctx, at(2026, 11, 28, 13, 59, 30))
    run_tick(ctx, at(2026, 11, 28, 14, 0, 5))
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id="alpha", storage_url="file:///tmp/alpha")
        admin, _ = create_api_key(session, project_id=None, description="admin")
        alpha, _ = create_api_key(session, project_id="alpha", description=None)

    with TestClient(create_app(lambda: ctx), raise_server_exceptions=False) as client:
        shown = client.get("/schedules", headers={"Authorization": f"Bearer {admin}"})
        assert shown.status_code == 200, shown.text
        by_id = {s["scheduleId"]: s for s in shown.json()["schedules"]}
        assert by_id[FETCH_SCHEDULE_ID] == {
            "scheduleId": FETCH_SCHEDULE_ID,
            "jobName": "cur-fetch",
            "cron": "0 * * * *",
            "timezone": "UTC",
            "enabled": True,
            "lastTickAt": "2026-11-28T14:00:00+00:00",
            "nextTickAt": "2026-11-28T15:00:00+00:00",
            "updatedAt": by_id[FETCH_SCHEDULE_ID]["updatedAt"],
        }
        assert by_id[AGGREGATE_SCHEDULE_ID]["lastTickAt"] is None
        forbidden = client.get("/schedules", headers={"Authorization": f"Bearer {alpha}"})
        assert forbidden.status_code == 403
        assert forbidden.json() == {
            "error": {"code": "forbidden", "message": "this route needs an admin API key"}
        }
        assert client.get("/schedules").status_code == 401

    monkeypatch.setenv("DATABASE_URL", ctx.settings.database_url)
    result = CliRunner().invoke(local_cli(), ["schedules", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("{")
    listed = {s["scheduleId"]: s for s in json.loads(result.stdout)["schedules"]}
    assert listed == by_id
    table = CliRunner().invoke(local_cli(), ["schedules"], env={"COLUMNS": "80"})
    assert table.exit_code == 0
    assert "cron in UTC" in table.stdout
    [fetch_line] = [line for line in table.stdout.splitlines() if FETCH_SCHEDULE_ID in line]
    for text in ("0 * * * *", "yes", "2026-11-28 14:00", "2026-11-28 15:00"):
        assert text in fetch_line


def local_cli() -> typer.Typer:
    """The two commands as cli.py registers them."""
    app = typer.Typer()
    app.command("scheduler")(scheduler_command)
    app.command("schedules")(schedules_command)
    return app


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CUR_FETCH_CRON", "61 * * * *"), ("CUR_AGGREGATE_CRON", "15 * *")],
)
def test_cli_scheduler_exits_2_on_invalid_cron(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'never-created.db'}")
    monkeypatch.setenv("CUR_BATCH_SCHEDULER_ENABLED", "true")
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(local_cli(), ["scheduler"])
    assert result.exit_code == 2, result.output
    assert f"error: {variable}: invalid cron expression '{value}': " in result.stderr
    assert not (tmp_path / "never-created.db").exists()  # failed before Ray or the database
    as_json = CliRunner().invoke(local_cli(), ["scheduler", "--json"])
    assert as_json.exit_code == 2
    assert f"{variable}: invalid cron expression" in as_json.stdout


# ---------------------------------------------------------------------------------------------
# (c) restart after missed ticks: one catch-up job


def test_restart_after_missed_ticks_enqueues_one_catch_up_job(
    database_url: str, make_ctx: Callable[..., AppContext]
) -> None:
    before = make_ctx(database_url)
    configure(before, at(2026, 11, 28, 8, 59, 30))
    assert run_tick(before, at(2026, 11, 28, 9, 0, 10)) == [
        "cur-fetch-schedule:2026-11-28T09:00:00Z"
    ]
    before.close()  # the scheduler goes down for five hours: 10:00 ... 14:00 are missed

    after = make_ctx(database_url)  # a new process, the same settings
    restarted = configure(after, at(2026, 11, 28, 14, 7))
    assert restarted[FETCH_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 10)  # kept: overdue
    assert run_tick(after, at(2026, 11, 28, 14, 7)) == [
        "cur-fetch-schedule:2026-11-28T14:00:00Z",
        "cur-aggregate-schedule:2026-11-28T13:15:00Z",
    ]
    # Ticking again, or restarting again, adds nothing until the next tick is due.
    assert run_tick(after, at(2026, 11, 28, 14, 8)) == []
    configure(after, at(2026, 11, 28, 14, 9))
    assert run_tick(after, at(2026, 11, 28, 14, 9)) == []
    assert set(scheduled_jobs(after)) == {
        "cur-fetch-schedule:2026-11-28T09:00:00Z",
        "cur-fetch-schedule:2026-11-28T14:00:00Z",
        "cur-aggregate-schedule:2026-11-28T13:15:00Z",
    }
    stored = schedules(after)
    assert stored[FETCH_SCHEDULE_ID].last_tick_at == at(2026, 11, 28, 14)
    assert stored[FETCH_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 15)
    assert stored[AGGREGATE_SCHEDULE_ID].next_tick_at == at(2026, 11, 28, 14, 15)
    assert run_tick(after, at(2026, 11, 28, 14, 15)) == [
        "cur-aggregate-schedule:2026-11-28T14:15:00Z"
    ]


# ---------------------------------------------------------------------------------------------
# (d) a scheduled global aggregate over three projects, one of them broken


def write_project(root: Path, seed: int) -> list[Any]:
    items = generate_line_items(period=dt.date(2026, 10, 1), seed=seed, rows=300, accounts=2)
    write_data_export(
        root,
        prefix="",
        export="x",
        period=dt.date(2026, 10, 1),
        execution_id=f"e{seed}",
        items=items,
        files=2,
        write_manifest=False,
    )
    return items


def total(ctx: AppContext, project_id: str) -> Decimal:
    with ctx.db.transaction() as session:
        rows = monthly_costs(session, project_id)
    return sum((Decimal(r["unblended_cost"]) for r in rows), Decimal(0))


def file_statuses(ctx: AppContext, project_id: str) -> list[str]:
    with ctx.db.transaction() as session:
        return sorted(f["status"] for f in list_files(session, project_id))


def run_job(ctx: AppContext, job_id: str) -> jobs_service.JobView:
    job = jobs_service.run_one_job(ctx, "test-worker", LEASE)
    assert job is not None
    assert job.job_id == job_id
    return job


def test_scheduled_global_aggregate_isolates_a_broken_project(
    database_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    # Three files per run over three projects with two files each: a fair share is one each.
    ctx = make_ctx(database_url, cur_aggregate_max_files=3)
    items = {}
    for seed, project in enumerate(("alpha", "beta", "gamma"), start=1):
        items[project] = write_project(tmp_path / project, seed)
        with ctx.db.transaction() as session:
            add_project(
                session,
                ctx.settings,
                project_id=project,
                storage_url=f"file://{tmp_path / project}",
            )
    configure(ctx, at(2026, 11, 28, 13, 59, 30), cur_fetch_cron="0 14 * * *")

    [fetch_id] = run_tick(ctx, at(2026, 11, 28, 14, 0, 2))
    fetch = run_job(ctx, fetch_id)
    assert fetch.status == "completed", fetch.error
    assert {p["projectId"]: p["registered"] for p in fetch.result["projects"]} == {  # type: ignore[index]
        "alpha": 2,
        "beta": 2,
        "gamma": 2,
    }

    shutil.rmtree(tmp_path / "gamma")  # gamma's files vanish before they are aggregated

    results = []
    for tick in (at(2026, 11, 28, 14, 15, 3), at(2026, 11, 28, 15, 15, 3)):
        [aggregate_id] = run_tick(ctx, tick)
        assert aggregate_id.startswith(f"{AGGREGATE_SCHEDULE_ID}:")
        job = run_job(ctx, aggregate_id)
        assert job.status == "completed", job.error  # one broken project fails no job
        assert job.project_id is None
        results.append(job.result or {})

    for result in results:
        assert result["claimed"] == 3  # one file of each project: the limit is shared
        assert result["done"] == 2
        broken = {f["projectId"] for f in result["failed"]} | {
            e["projectId"] for e in result["projectErrors"]
        }
        assert broken == {"gamma"}
    assert file_statuses(ctx, "alpha") == file_statuses(ctx, "beta") == ["DONE", "DONE"]
    assert file_statuses(ctx, "gamma") == ["ERROR", "ERROR"]
    for project in ("alpha", "beta"):
        want = sum(f["unblended_cost"] or 0 for f in expected_monthly(items[project]).values())
        assert abs(total(ctx, project) - want) < EXACT
    assert total(ctx, "gamma") == 0


# ---------------------------------------------------------------------------------------------
# (e) the scheduler actor and the coordinator on a real Ray


@pytest.fixture
def actors_env(tmp_path: Path, make_ctx: Callable[..., AppContext]) -> Iterator[dict[str, str]]:
    """Environment of a scheduler and a coordinator on a fresh SQLite file; both killed after."""
    from cur_ray.adapters.db.engine import upgrade_database

    url = f"sqlite:///{tmp_path / 'cur_ray.db'}"
    upgrade_database(url)
    key = make_ctx(url).settings.cur_secrets_key
    assert key is not None
    yield {
        "DATABASE_URL": url,
        "CUR_SECRETS_KEY": key.get_secret_value(),
        "CUR_BATCH_SCHEDULER_ENABLED": "true",
        "CUR_FETCH_CRON": "0 0 1 1 *",
        "CUR_AGGREGATE_CRON": "0 0 1 1 *",
        "CUR_LEASE_SECONDS": "30",
        "RAY_AUTH_MODE": "disabled",
    }
    for name in (SCHEDULER_NAME, COORDINATOR_NAME):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


def wait_job(ctx: AppContext, job_id: str, timeout: float = 90) -> jobs_service.JobView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = scheduled_jobs(ctx).get(job_id)
        if job is not None and job.status in ("completed", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {scheduled_jobs(ctx)}")


@pytest.mark.usefixtures("ray_session")
def test_scheduler_actor_enqueues_and_the_coordinator_runs_the_tick(
    actors_env: dict[str, str], make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx(
        actors_env["DATABASE_URL"],
        cur_secrets_key=actors_env["CUR_SECRETS_KEY"],
        cur_fetch_cron=actors_env["CUR_FETCH_CRON"],
        cur_aggregate_cron=actors_env["CUR_AGGREGATE_CRON"],
    )
    items = write_project(tmp_path / "acme", seed=7)
    with ctx.db.transaction() as session:
        add_project(
            session, ctx.settings, project_id="acme", storage_url=f"file://{tmp_path / 'acme'}"
        )
    # The schedules were written last year by a scheduler that has been down since: the
    # yearly tick of this January 1st is overdue and must run once when the actor starts.
    configure(ctx, at(dt.datetime.now(UTC).year - 1, 6, 1))
    tick = CronSchedule("0 0 1 1 *").latest_at_or_before(dt.datetime.now(UTC))
    assert tick is not None
    fetch_id, aggregate_id = (
        f"{s}:{tick:%Y-%m-%dT%H:%M:%SZ}" for s in (FETCH_SCHEDULE_ID, AGGREGATE_SCHEDULE_ID)
    )

    get_coordinator(actors_env)
    scheduler = get_scheduler(actors_env)

    fetch = wait_job(ctx, fetch_id)
    assert fetch.status == "completed", fetch.error
    aggregate = wait_job(ctx, aggregate_id)
    assert aggregate.status == "completed", aggregate.error
    assert aggregate.result["done"] == 2  # type: ignore[index]
    want = sum(f["unblended_cost"] or 0 for f in expected_monthly(items).values())
    assert abs(total(ctx, "acme") - want) < EXACT

    assert ray.get(scheduler.tick_now.remote()) == []  # nothing more is due until next year
    status = ray.get(scheduler.status.remote())
    assert status["enabled"] is True
    assert status["running"] is True
    assert {j["jobId"] for j in status["recentJobs"]} == {fetch_id, aggregate_id}
    shown = {s["scheduleId"]: s for s in status["schedules"]}
    assert shown[FETCH_SCHEDULE_ID]["lastTickAt"] == tick.isoformat()
    assert shown[FETCH_SCHEDULE_ID]["nextTickAt"] == tick.replace(year=tick.year + 1).isoformat()
    assert get_scheduler(actors_env)._actor_id == scheduler._actor_id  # one per cluster
    assert set(scheduled_jobs(ctx)) == {fetch_id, aggregate_id}
