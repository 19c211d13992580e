"""The durable job queue on real SQLite and PostgreSQL: enqueue, claim, run, retry, recover."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from cur_ray.adapters.db import jobs as store
from cur_ray.adapters.db.models import BatchJob, BillingFile, utcnow
from cur_ray.adapters.storage import FileSystemSpec
from cur_ray.domain.billing import FileStatus
from cur_ray.errors import ConflictError, InvalidInputError, NotFoundError
from cur_ray.samples.line_items import LineItem, generate_line_items
from cur_ray.samples.writers import write_legacy_csv_export
from cur_ray.services.context import AppContext
from cur_ray.services.cur_aggregate import FileOutcome, RetryPolicy
from cur_ray.services.jobs import (
    JobView,
    backoff_for,
    classify_failure,
    enqueue_job,
    get_job,
    list_jobs,
    queue_stats,
    run_one_job,
)
from cur_ray.services.projects import add_project, set_enabled

MARCH = dt.date(2024, 3, 1)
LEASE = dt.timedelta(minutes=5)


@pytest.fixture(scope="module")
def items() -> list[LineItem]:
    return generate_line_items(period=MARCH, seed=1, rows=300)


def add_local_project(
    ctx: AppContext, project_id: str, root: Path, items: Sequence[LineItem] = (), files: int = 2
) -> None:
    """A local-folder project, holding one legacy CSV delivery when ``items`` are given."""
    root.mkdir(parents=True, exist_ok=True)
    if items:
        write_legacy_csv_export(
            root, prefix="", report="rep", period=MARCH, assembly_id="a1", items=items, files=files
        )
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=project_id, storage_url=f"file://{root}")


def enqueue(ctx: AppContext, name: str, project_id: str | None, **kwargs: Any) -> JobView:
    with ctx.db.transaction() as session:
        view, _ = enqueue_job(session, name=name, project_id=project_id, trigger="cli", **kwargs)
    return view


def job_row(ctx: AppContext, job_id: str) -> BatchJob:
    with ctx.db.transaction() as session:
        row = store.get_job(session, job_id)
        assert row is not None
        session.expunge(row)
        return row


def job_count(ctx: AppContext) -> int:
    with ctx.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(BatchJob)) or 0)


def aware(moment: dt.datetime | None) -> dt.datetime:
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def time_passes(ctx: AppContext) -> None:
    """Make retry backoffs and file leases due, as if their time had come."""
    past = utcnow() - dt.timedelta(seconds=1)
    with ctx.db.transaction() as session:
        session.execute(update(BatchJob).where(BatchJob.status == "waiting").values(run_after=past))
        session.execute(
            update(BillingFile)
            .where(BillingFile.status == FileStatus.PROCESSING)
            .values(lease_expires_at=past)
        )


def run_all(ctx: AppContext, worker_id: str = "w1", **kwargs: Any) -> list[JobView]:
    ran = []
    while (view := run_one_job(ctx, worker_id, LEASE, **kwargs)) is not None:
        ran.append(view)
    return ran


# ---------------------------------------------------------------------------------------------
# Enqueue


def test_enqueue_is_idempotent_with_a_given_job_id(ctx: AppContext, tmp_path: Path) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme")
    job_id = "cur-aggregate-schedule:2024-03-01T00:15:00Z"
    with ctx.db.transaction() as session:
        first, created = enqueue_job(
            session,
            name="cur-aggregate",
            project_id="acme",
            trigger="schedule",
            data={"limit": 7},
            job_id=job_id,
        )
    assert created
    with ctx.db.transaction() as session:
        again, created_again = enqueue_job(
            session, name="cur-aggregate", project_id="acme", trigger="schedule", job_id=job_id
        )
    assert not created_again
    assert again.job_id == first.job_id
    assert again.created_at == first.created_at
    assert again.limit == 7  # the stored job, not the retried request
    assert job_count(ctx) == 1

    with ctx.db.transaction() as session, pytest.raises(ConflictError):
        enqueue_job(session, name="cur-fetch", project_id=None, trigger="api", job_id=job_id)

    body = first.as_dict()
    assert body["jobId"] == job_id
    assert body["status"] == "waiting"
    assert body["projectId"] == "acme"
    assert body["trigger"] == "schedule"
    assert body["attempts"] == 0
    assert body["maxAttempts"] == 3
    assert body["createdAt"].endswith("+00:00")
    # Read back from the database (naive on SQLite), timestamps still carry the offset.
    with ctx.db.transaction() as session:
        stored = get_job(session, job_id).as_dict()
    assert stored["createdAt"].endswith("+00:00")
    assert dt.datetime.fromisoformat(stored["createdAt"]) == aware(first.created_at)

    generated = {enqueue(ctx, "cur-fetch", None).job_id for _ in range(2)}
    assert len(generated) == 2
    assert job_id not in generated


def test_enqueue_refuses_invalid_unknown_and_disabled(ctx: AppContext, tmp_path: Path) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme")
    add_local_project(ctx, "paused", tmp_path / "paused")
    with ctx.db.transaction() as session:
        set_enabled(session, "paused", False)

    refused: list[tuple[type[Exception], dict[str, Any]]] = [
        (NotFoundError, {"project_id": "ghost"}),
        (ConflictError, {"project_id": "paused"}),
        (InvalidInputError, {"project_id": "no spaces"}),
        (InvalidInputError, {"name": "cur-delete"}),
        (InvalidInputError, {"trigger": "cron"}),
        (InvalidInputError, {"data": {"limit": 0}}),
        (InvalidInputError, {"data": {"limit": 100_001}}),
        (InvalidInputError, {"data": {"limit": "5"}}),
        (InvalidInputError, {"data": {"limit": True}}),
        (InvalidInputError, {"data": {"projectId": "other"}}),
        (InvalidInputError, {"name": "cur-fetch", "data": {"limit": 5}}),
        (InvalidInputError, {"job_id": "../etc/passwd"}),
        (InvalidInputError, {"job_id": ""}),
        (InvalidInputError, {"job_id": "x" * 129}),
    ]
    for error, overrides in refused:
        request: dict[str, Any] = {
            "name": "cur-aggregate",
            "project_id": "acme",
            "trigger": "api",
            **overrides,
        }
        with ctx.db.transaction() as session, pytest.raises(error):
            enqueue_job(session, **request)
    assert job_count(ctx) == 0

    with ctx.db.transaction() as session:
        _, created = enqueue_job(
            session,
            name="cur-aggregate",
            project_id="acme",
            trigger="notebook",
            data={"limit": 100_000},
        )
        assert created
        with pytest.raises(NotFoundError):
            get_job(session, "no-such-job")
        for bad in ({"status": "done"}, {"name": "x"}, {"project_id": "a b"}, {"limit": 0}):
            with pytest.raises(InvalidInputError):
                list_jobs(session, **bad)


# ---------------------------------------------------------------------------------------------
# Running


def test_run_one_job_runs_oldest_first_and_records_batch_counts(
    ctx: AppContext, tmp_path: Path, items: list[LineItem]
) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme", items, files=2)
    fetch = enqueue(ctx, "cur-fetch", "acme")
    aggregate = enqueue(ctx, "cur-aggregate", "acme", data={"limit": 10})
    claimed_files: list[int] = []
    # Hooks for Batch B are passed to every job: cur-fetch does not take them and ignores them.
    first = run_one_job(ctx, "w1", LEASE, on_claimed=claimed_files.append)
    assert first is not None
    assert first.job_id == fetch.job_id
    assert claimed_files == []
    fetched = job_row(ctx, fetch.job_id)
    assert fetched.status == "completed"
    assert fetched.attempts == 1
    assert fetched.claimed_by == "w1"
    assert fetched.error is None
    assert fetched.result is not None
    assert fetched.result["projects"][0]["registered"] == 2
    assert job_row(ctx, aggregate.job_id).status == "waiting"

    done = run_one_job(ctx, "w1", LEASE, on_claimed=claimed_files.append)
    assert done is not None
    assert done.job_id == aggregate.job_id
    assert claimed_files == [2]
    assert done.status == "completed"
    assert done.result is not None
    assert done.result["claimed"] == 2
    assert done.result["done"] == 2
    assert done.result["rowsRead"] == len(items)
    assert done.result["failedCount"] == 0
    assert done.started_at is not None
    assert done.finished_at is not None
    assert aware(done.finished_at) >= aware(done.started_at)

    assert run_one_job(ctx, "w1", LEASE) is None
    with ctx.db.transaction() as session:
        assert [j.job_id for j in list_jobs(session)] == [aggregate.job_id, fetch.job_id]
        assert [j.job_id for j in list_jobs(session, name="cur-fetch", status="COMPLETED")] == [
            fetch.job_id
        ]
        assert queue_stats(session) == {
            "waiting": 0,
            "active": 0,
            "completed": 2,
            "failed": 0,
            "failedLast24h": 0,
        }


def failing_runner(
    spec: FileSystemSpec,
    files: Sequence[Any],
    policy: RetryPolicy,
    on_progress: Callable[[], None],
) -> Iterable[FileOutcome]:
    """A runner whose connection to the workers keeps dropping."""
    raise ConnectionResetError("peer reset; token=s3cr3t")


def test_transient_failure_backs_off_then_fails_after_max_attempts(
    ctx: AppContext, tmp_path: Path, items: list[LineItem]
) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme", items, files=1)
    run_all(ctx)  # nothing queued yet
    enqueue(ctx, "cur-fetch", "acme")
    assert len(run_all(ctx)) == 1
    job = enqueue(ctx, "cur-aggregate", "acme")

    expected_waits = [backoff_for(1), backoff_for(2)]
    assert expected_waits == [dt.timedelta(seconds=5), dt.timedelta(seconds=10)]
    for attempt, wait in enumerate(expected_waits, start=1):
        before = utcnow()
        view = run_one_job(ctx, "w1", LEASE, runner=failing_runner)
        assert view is not None
        assert view.job_id == job.job_id
        assert view.status == "waiting"
        assert view.attempts == attempt
        assert view.error is not None
        assert "ConnectionResetError" in view.error
        assert "s3cr3t" not in view.error  # exception arguments never reach the job
        assert before + wait <= aware(view.run_after) <= utcnow() + wait
        # Not due yet: nobody takes it before its backoff has passed.
        assert run_one_job(ctx, "w2", LEASE) is None
        time_passes(ctx)

    final = run_one_job(ctx, "w1", LEASE, runner=failing_runner)
    assert final is not None
    assert final.status == "failed"
    assert final.attempts == 3
    assert final.finished_at is not None
    time_passes(ctx)
    assert run_one_job(ctx, "w1", LEASE) is None  # failed for good
    with ctx.db.transaction() as session:
        stats = queue_stats(session)
    assert stats["failed"] == 1
    assert stats["failedLast24h"] == 1
    assert stats["waiting"] == 0


def test_permanent_failure_is_not_retried(ctx: AppContext, tmp_path: Path) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme")
    job = enqueue(ctx, "cur-fetch", "acme")
    with ctx.db.transaction() as session:
        set_enabled(session, "acme", False)

    view = run_one_job(ctx, "w1", LEASE)
    assert view is not None
    assert view.job_id == job.job_id
    assert view.status == "failed"
    assert view.attempts == 1
    assert view.error is not None
    assert "disabled" in view.error
    assert classify_failure(ConflictError("x")) == ("x", False)
    assert classify_failure(ValueError("secret")) == ("internal error: ValueError", True)


def test_expired_lease_is_reclaimed_from_a_dead_coordinator(
    ctx: AppContext, tmp_path: Path
) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme")
    job = enqueue(ctx, "cur-fetch", "acme")
    with ctx.db.transaction() as session:
        claimed = store.claim_next_job(session, "dead", LEASE)
        assert claimed is not None
        assert claimed.job_id == job.job_id
    # The coordinator "dies" here. While its lease runs, the job stays its own.
    assert run_one_job(ctx, "alive", LEASE) is None
    with ctx.db.transaction() as session:
        session.execute(
            update(BatchJob)
            .where(BatchJob.job_id == job.job_id)
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )

    view = run_one_job(ctx, "alive", LEASE)
    assert view is not None
    assert view.job_id == job.job_id
    assert view.status == "completed"
    assert view.attempts == 2
    assert view.claimed_by == "alive"
    # A late word from the dead coordinator changes nothing.
    with ctx.db.transaction() as session:
        assert not store.complete_job(session, job.job_id, "dead", {"bogus": True})
        assert not store.fail_job(
            session, job.job_id, "dead", "late", retry=True, backoff=dt.timedelta(0)
        )
        assert not store.renew_job_lease(session, job.job_id, "dead", LEASE)
    assert job_row(ctx, job.job_id).result != {"bogus": True}

    # A job that has killed its coordinator on every attempt is failed, not run again.
    with ctx.db.transaction() as session:
        store.insert_job(
            session,
            job_id="poison",
            name="cur-fetch",
            project_id=None,
            trigger="api",
            data={"projectId": None},
            max_attempts=1,
        )
        assert store.claim_next_job(session, "dead", LEASE) is not None
        session.execute(
            update(BatchJob)
            .where(BatchJob.job_id == "poison")
            .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert run_one_job(ctx, "alive", LEASE) is None
    poison = job_row(ctx, "poison")
    assert poison.status == "failed"
    assert poison.attempts == 1
    assert poison.error is not None
    assert "lease expired" in poison.error


def test_a_live_worker_keeps_its_lease_while_the_job_runs(
    ctx: AppContext, tmp_path: Path, items: list[LineItem]
) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme", items, files=1)
    enqueue(ctx, "cur-fetch", "acme")
    run_all(ctx)
    job = enqueue(ctx, "cur-aggregate", "acme")
    short = dt.timedelta(seconds=0.6)
    stolen: list[str | None] = []

    file_holders: list[str | None] = []

    def slow_start(_claimed: int) -> None:
        with ctx.db.transaction() as session:
            file_holders.extend(session.scalars(select(BillingFile.claimed_by)))
        # Outlive the lease twice over, then let another worker try to take the job.
        threading.Event().wait(1.3)
        with ctx.db.transaction() as session:
            row = store.claim_next_job(session, "thief", short)
            stolen.append(None if row is None else row.job_id)

    # ``worker_id`` as a keyword goes to Batch B (holder of its file claims), not to the job.
    view = run_one_job(ctx, "w1", short, on_claimed=slow_start, worker_id="w1/files")
    assert stolen == [None]
    assert file_holders == ["w1/files"]
    assert view is not None
    assert view.job_id == job.job_id
    assert view.status == "completed"
    assert view.claimed_by == "w1"
    assert view.attempts == 1


def test_a_restarted_worker_hands_back_the_jobs_it_held(ctx: AppContext, tmp_path: Path) -> None:
    add_local_project(ctx, "acme", tmp_path / "acme")
    job = enqueue(ctx, "cur-fetch", "acme")
    with ctx.db.transaction() as session:
        store.insert_job(
            session,
            job_id="last-try",
            name="cur-fetch",
            project_id=None,
            trigger="api",
            data={"projectId": None},
            max_attempts=1,
        )
        assert store.claim_next_job(session, "coordinator:1", LEASE) is not None
        assert store.claim_next_job(session, "coordinator:1", LEASE) is not None
        assert store.claim_next_job(session, "coordinator:1", LEASE) is None
    with ctx.db.transaction() as session:
        assert store.requeue_jobs_held_by(session, "someone-else") == 0
        assert store.requeue_jobs_held_by(session, "coordinator:1") == 2
    assert job_row(ctx, "last-try").status == "failed"
    handed_back = job_row(ctx, job.job_id)
    assert handed_back.status == "waiting"
    assert handed_back.claimed_by is None
    assert handed_back.attempts == 1

    view = run_one_job(ctx, "coordinator:1", LEASE)
    assert view is not None
    assert view.job_id == job.job_id
    assert view.status == "completed"
    assert view.attempts == 2


def test_busy_projects_are_skipped(ctx: AppContext, tmp_path: Path) -> None:
    for project_id in ("a", "b"):
        add_local_project(ctx, project_id, tmp_path / project_id)
    job_a = enqueue(ctx, "cur-fetch", "a")
    job_b = enqueue(ctx, "cur-fetch", "b")
    job_all = enqueue(ctx, "cur-fetch", None)

    def claim(busy: set[str]) -> str | None:
        with ctx.db.transaction() as session:
            row = store.claim_next_job(session, "w1", LEASE, busy_projects=busy)
            return None if row is None else row.job_id

    assert claim({"a"}) == job_b.job_id
    assert claim({"a", "*"}) is None
    assert claim({"*"}) == job_a.job_id
    assert claim(set()) == job_all.job_id
    with ctx.db.transaction() as session:
        assert {j.job_id for j in list_jobs(session, status="active")} == {
            job_a.job_id,
            job_b.job_id,
            job_all.job_id,
        }


# ---------------------------------------------------------------------------------------------
# Concurrency and restarts


def test_concurrent_claimers_never_take_a_job_twice(
    postgres_url: str, make_ctx: Callable[..., AppContext]
) -> None:
    setup = make_ctx(postgres_url)
    for n in range(20):
        with setup.db.transaction() as session:
            store.insert_job(
                session,
                job_id=f"job-{n:02d}",
                name="cur-fetch",
                project_id=None,
                trigger="api",
                data={"projectId": None},
            )
    workers = 4
    contexts = [make_ctx(postgres_url) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claimer(worker_id: str, wctx: AppContext) -> None:
        mine: list[str] = []
        try:
            barrier.wait(timeout=10)
            while True:
                with wctx.db.transaction() as session:
                    row = store.claim_next_job(session, worker_id, LEASE)
                    if row is None:
                        break
                    mine.append(row.job_id)
        except BaseException as exc:
            errors.append(exc)
        claimed[worker_id] = mine

    threads = [threading.Thread(target=claimer, args=(f"w{i}", c)) for i, c in enumerate(contexts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    every = [job_id for mine in claimed.values() for job_id in mine]
    assert len(every) == 20
    assert set(every) == {f"job-{n:02d}" for n in range(20)}
    with setup.db.transaction() as session:
        rows = session.execute(select(BatchJob.job_id, BatchJob.claimed_by, BatchJob.attempts))
        holders = {job_id: (holder, attempts) for job_id, holder, attempts in rows}
    for worker_id, mine in claimed.items():
        for job_id in mine:
            assert holders[job_id] == (worker_id, 1)


def test_waiting_jobs_survive_a_restart(
    database_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    before = make_ctx(database_url)
    add_local_project(before, "acme", tmp_path / "acme")
    queued = [enqueue(before, "cur-fetch", "acme").job_id for _ in range(3)]
    before.close()  # the whole process goes away; only the database remains

    after = make_ctx(database_url)
    ran = run_all(after, worker_id="new-process")
    assert [view.job_id for view in ran] == queued
    assert all(view.status == "completed" for view in ran)
    with after.db.transaction() as session:
        assert queue_stats(session)["completed"] == 3
