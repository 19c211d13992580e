"""Fault injection: what survives two clusters on one database, dead nodes and coordinators,
PostgreSQL connections terminated mid-transaction, S3 throttling, resets and truncated
bodies, and a month re-delivered while the previous version is being aggregated.

Every test checks the same ledger: each file ends ``DONE`` (or ``ERROR`` when it must) with
its partial sums stored once, the summaries equal the independent oracle to 1e-8, and where
PostgreSQL is observed while the faults happen, every snapshot of the cost tables is
consistent (summaries = the sum of the ``DONE`` files' partial sums, no partial sums of a
file that is not ``DONE``, no ``PROCESSING`` file past its lease). RELIABILITY.md cites
these tests with the figures they reached.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import psutil
import psycopg
import pytest
import servers
from processes import kill_session
from recording_proxy import Fault, RecordedRequest, RecordingProxy
from sqlalchemy import text

from cur_ray.adapters.db import jobs as job_store
from cur_ray.adapters.db.claims import ClaimedFile
from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.adapters.storage import S3_REQUEST_ATTEMPTS, FileSystemSpec
from cur_ray.errors import DatabaseError
from cur_ray.samples.expected import MEASURES, expected_daily, expected_monthly
from cur_ray.samples.line_items import LineItem, generate_line_items
from cur_ray.samples.writers import (
    _chunks,
    upload_tree,
    write_data_export,
    write_legacy_csv_export,
)
from cur_ray.services import jobs as jobs_service
from cur_ray.services.context import AppContext
from cur_ray.services.costs import daily_costs, monthly_costs
from cur_ray.services.cur_aggregate import (
    FileOutcome,
    RetryPolicy,
    run_cur_aggregate_batch,
    run_in_process,
)
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.projects import add_project

pytestmark = pytest.mark.faults

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("fault_cluster.py")
FEB, MARCH = dt.date(2024, 2, 1), dt.date(2024, 3, 1)
EXACT = Decimal("1e-8")
LEASE = dt.timedelta(seconds=30)


def report(test: str, **figures: Any) -> None:
    """Print the figures a test reached (``pytest -s`` shows them; RELIABILITY.md cites them)."""
    print(f"\nFAULTS {test}: {json.dumps(figures, default=str, sort_keys=True)}")


# ============================================================================ data + oracle
@dataclass
class Export:
    """A data-only export folder (every present file counts) and its line items per file."""

    root: Path
    items: list[LineItem]
    chunks: dict[str, Sequence[LineItem]]  # object key -> the line items written into it


def write_export(
    root: Path,
    *,
    seed: int,
    files_per_period: int,
    rows: int = 1000,
    periods: Sequence[dt.date] = (FEB, MARCH),
) -> Export:
    """Small CUR 2.0 Parquet files (``rows`` line items per period, split over the files)."""
    items: list[LineItem] = []
    chunks: dict[str, Sequence[LineItem]] = {}
    for number, period in enumerate(periods):
        period_items = generate_line_items(
            period=period, seed=seed * 100 + number, rows=rows, accounts=2
        )
        keys = write_data_export(
            root,
            prefix="",
            export="x",
            period=period,
            execution_id=f"e{number}",
            items=period_items,
            file_format="parquet",
            files=files_per_period,
            write_manifest=False,
        )
        # write_data_export splits the items into contiguous parts, in key order.
        chunks.update(zip(keys, _chunks(period_items, files_per_period), strict=True))
        items.extend(period_items)
    return Export(root=root, items=items, chunks=chunks)


def unblended(items: Iterable[LineItem]) -> Decimal:
    """The oracle's total unblended cost of some line items."""
    figures = expected_monthly(items).values()
    return sum((f["unblended_cost"] or Decimal(0) for f in figures), Decimal(0))


def add_local(ctx: AppContext, project_id: str, root: Path) -> None:
    """Register a ``file://`` project."""
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=project_id, storage_url=f"file://{root}")


def monthly(ctx: AppContext, project_id: str) -> list[dict[str, Any]]:
    """The project's monthly table, as the API serves it."""
    with ctx.db.transaction() as session:
        return monthly_costs(session, project_id)


def daily(ctx: AppContext, project_id: str) -> list[dict[str, Any]]:
    """The project's daily table, as the API serves it."""
    with ctx.db.transaction() as session:
        return daily_costs(session, project_id)


def table_total(rows: Iterable[dict[str, Any]]) -> Decimal:
    """Sum of ``unblended_cost`` over served rows."""
    return sum((Decimal(r["unblended_cost"]) for r in rows), Decimal(0))


def assert_exact(ctx: AppContext, project_id: str, items: Sequence[LineItem]) -> None:
    """Every monthly figure (all measures) and the daily total equal the oracle to 1e-8."""
    want = expected_monthly(items)
    got = {
        (
            r["billing_period"],
            r["usage_account_id"],
            r["service_code"],
            r["charge_category"],
            r["currency"],
        ): r
        for r in monthly(ctx, project_id)
    }
    assert set(got) == set(want), project_id
    for key, figures in want.items():
        for measure in MEASURES:
            expected, actual = figures[measure], got[key][measure]
            if expected is None:
                assert actual is None, (project_id, key, measure)
            else:
                assert abs(Decimal(str(actual)) - expected) < EXACT, (project_id, key, measure)
    assert abs(table_total(daily(ctx, project_id)) - unblended(items)) < EXACT, project_id


def files_of(ctx: AppContext, project_id: str | None = None) -> list[dict[str, Any]]:
    """Billing file rows (all projects when ``project_id`` is None)."""
    query = (
        "SELECT id, project_id, object_key, status, attempts, claimed_by, error_message "
        "FROM finops_billing_files" + (" WHERE project_id = :p" if project_id else "")
    )
    with ctx.db.transaction() as session:
        rows = session.execute(text(query), {"p": project_id}).mappings().all()
    return [dict(r) for r in rows]


def assert_file_costs_match(ctx: AppContext, exports: dict[str, Export]) -> int:
    """Each ``DONE`` file's stored partial sums are its own line items' groups, stored once.

    Returns how many files were checked. A file counted twice would have twice its rows or
    twice its cost; a file not ``DONE`` must have no partial sums at all.
    """
    with ctx.db.transaction() as session:
        rows = session.execute(
            text(
                "SELECT f.project_id, f.object_key, f.status, c.grain, count(c.id) AS n, "
                "sum(c.unblended_cost) AS cost FROM finops_billing_files f "
                "LEFT JOIN finops_file_costs c ON c.file_id = f.id "
                "GROUP BY f.project_id, f.object_key, f.status, c.grain"
            )
        ).all()
    stored: dict[tuple[str, str], dict[str | None, tuple[int, Decimal]]] = {}
    status: dict[tuple[str, str], str] = {}
    for project_id, key, file_status, grain, n, cost in rows:
        stored.setdefault((project_id, key), {})[grain] = (int(n), Decimal(str(cost or 0)))
        status[(project_id, key)] = file_status
    checked = 0
    for project_id, export in exports.items():
        for key, chunk in export.chunks.items():
            grains = stored[(project_id, key)]
            if status[(project_id, key)] != "DONE":
                assert set(grains) == {None}, (project_id, key, "costs of a file not DONE")
                continue
            assert grains["monthly"][0] == len(expected_monthly(chunk)), (project_id, key)
            assert grains["daily"][0] == len(expected_daily(chunk)), (project_id, key)
            assert abs(grains["monthly"][1] - unblended(chunk)) < EXACT, (project_id, key)
            assert abs(grains["daily"][1] - unblended(chunk)) < EXACT, (project_id, key)
            checked += 1
    return checked


class LogCounter(logging.Handler):
    """Counts the records of one logger with a given message (attached for a block)."""

    def __init__(self, logger: str, message: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger, self.message, self.count = logging.getLogger(logger), message, 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count a matching record."""
        self.count += record.getMessage() == self.message

    def __enter__(self) -> LogCounter:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


CONFLICT_RETRIED = "transaction lost a database conflict; running it again"


# ============================================================================= jobs
def enqueue(
    ctx: AppContext,
    name: str,
    project_id: str | None,
    *,
    limit: int | None = None,
) -> str:
    """Write a job into the durable queue, as the API, CLI or scheduler would."""
    with ctx.db.transaction() as session:
        view, _ = jobs_service.enqueue_job(
            session,
            name=name,
            project_id=project_id,
            trigger="cli",
            data={"limit": limit} if limit else None,
        )
    return view.job_id


def get_job(ctx: AppContext, job_id: str) -> jobs_service.JobView:
    """The job as stored."""
    with ctx.db.transaction() as session:
        return jobs_service.get_job(session, job_id)


def wait_job(ctx: AppContext, job_id: str, timeout: float = 120) -> jobs_service.JobView:
    """Poll the queue until ``job_id`` is completed or failed."""
    deadline = time.monotonic() + timeout
    job = get_job(ctx, job_id)
    while time.monotonic() < deadline:
        job = get_job(ctx, job_id)
        if job.status in ("completed", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def queue_and_files(ctx: AppContext) -> tuple[int, int]:
    """(waiting + active jobs, PENDING + PROCESSING files)."""
    with ctx.db.transaction() as session:
        jobs = session.scalar(
            text("SELECT count(*) FROM finops_batch_jobs WHERE status IN ('waiting', 'active')")
        )
        files = session.scalar(
            text(
                "SELECT count(*) FROM finops_billing_files "
                "WHERE status IN ('PENDING', 'PROCESSING')"
            )
        )
    return int(jobs or 0), int(files or 0)


# ====================================================================== PostgreSQL probes
def pg_connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A direct connection to the test database (libpq URL), for observers and the admin."""
    return psycopg.connect(servers.libpq_url(url), autocommit=autocommit)


@dataclass
class LedgerSample:
    """One consistent snapshot of the cost tables (one statement, one MVCC snapshot)."""

    at: float
    summary_total: Decimal
    done_total: Decimal
    orphan_rows: int
    expired_processing: int
    done: int
    processing: int


class LedgerObserver:
    """Samples the ledger of a data-only database in the background, one statement a time.

    In a data-only layout every ``DONE`` file contributes, so at every instant the monthly
    summaries must equal the sum of the ``DONE`` files' monthly partial sums, no file that
    is not ``DONE`` may have partial sums, and no ``PROCESSING`` file may be past its lease.
    """

    QUERY = """
        SELECT
          (SELECT coalesce(sum(unblended_cost), 0) FROM finops_cost_service_monthly),
          (SELECT coalesce(sum(c.unblended_cost), 0) FROM finops_file_costs c
             JOIN finops_billing_files f ON f.id = c.file_id
             WHERE f.status = 'DONE' AND c.grain = 'monthly'),
          (SELECT count(*) FROM finops_file_costs c
             JOIN finops_billing_files f ON f.id = c.file_id WHERE f.status <> 'DONE'),
          (SELECT count(*) FROM finops_billing_files
             WHERE status = 'PROCESSING' AND lease_expires_at < now()),
          (SELECT count(*) FROM finops_billing_files WHERE status = 'DONE'),
          (SELECT count(*) FROM finops_billing_files WHERE status = 'PROCESSING')
    """

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self._conn = pg_connect(url)
        self.pid = int(self._conn.info.backend_pid)
        self.interval = interval
        self.samples: list[LedgerSample] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-observer", daemon=True)

    def __enter__(self) -> LedgerObserver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                row = self._conn.execute(self.QUERY).fetchone()
            except psycopg.Error as exc:  # the observer must not die silently
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            assert row is not None
            self.samples.append(
                LedgerSample(
                    time.monotonic(),
                    Decimal(row[0]),
                    Decimal(row[1]),
                    int(row[2]),
                    int(row[3]),
                    int(row[4]),
                    int(row[5]),
                )
            )
            self._stop.wait(self.interval)

    def violations(self) -> list[LedgerSample]:
        """Snapshots that break the ledger's invariants."""
        return [
            s
            for s in self.samples
            if s.summary_total != s.done_total or s.orphan_rows or s.expired_processing
        ]

    def assert_consistent(self, min_samples: int = 10) -> None:
        """Enough samples were taken and none broke an invariant."""
        assert not self.errors, self.errors
        assert len(self.samples) >= min_samples, len(self.samples)
        bad = self.violations()
        assert not bad, bad[:5]


def warm_pool(ctx: AppContext, connections: int = 4) -> None:
    """Leave ``connections`` idle connections in the context's pool (to be terminated too)."""
    with contextlib.ExitStack() as stack:
        for _ in range(connections):
            stack.enter_context(ctx.db.engine.connect()).exec_driver_sql("SELECT 1")


def wait_for_blocked_backend(
    conn: psycopg.Connection[Any], table: str, timeout: float, exclude: Iterable[int] = ()
) -> int:
    """The pid of a backend of this database waiting on a lock in a statement on ``table``."""
    skip = [conn.info.backend_pid, *exclude]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE %s AND NOT (pid = ANY(%s))",
            (f"%{table}%", skip),
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.005)
    raise AssertionError(f"no statement on {table} ever waited for the test's lock")


def terminate_backends(conn: psycopg.Connection[Any], keep: Iterable[int]) -> int:
    """``pg_terminate_backend`` every other connection to this database; how many."""
    protected = [conn.info.backend_pid, *keep]
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND NOT (pid = ANY(%s))",
        (protected,),
    ).fetchall()
    return sum(1 for (done,) in rows if done)


@dataclass
class Terminator:
    """Holds a table lock so a write blocks, then terminates the database's connections.

    ``lock()`` takes ``LOCK TABLE … IN EXCLUSIVE MODE`` (reads go on, writes wait) in a
    transaction of its own; ``start()`` waits in a thread for the application's statement
    on that table to block, terminates every other backend of the database (the blocked
    one, idle pooled connections, lease renewals; never ``keep``), then releases the lock.
    """

    url: str
    table: str
    keep: list[int] = field(default_factory=list)
    terminated: int = 0
    blocked_pid: int | None = None
    waited_seconds: float = 0.0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._admin = pg_connect(self.url, autocommit=False)
        self._probe = pg_connect(self.url)
        self._thread = threading.Thread(target=self._run, name="terminator", daemon=True)

    def lock(self) -> None:
        """Take the table lock (held until the termination)."""
        self._admin.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")

    def start(self) -> Terminator:
        """Wait for the blocked write in the background."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            keep = [self._admin.info.backend_pid, *self.keep]
            self.blocked_pid = wait_for_blocked_backend(self._probe, self.table, 60, keep)
            self.waited_seconds = time.monotonic() - self._started
            self.terminated = terminate_backends(self._probe, keep)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self._admin.rollback()

    def join(self) -> None:
        """Wait for the thread, close the connections, re-raise what went wrong in it."""
        self._thread.join(timeout=90)
        self._admin.close()
        self._probe.close()
        if self.error is not None:
            raise self.error


# ============================================================= processes of other clusters
def ray_env(ray_dir: Path) -> dict[str, str]:
    """This environment, for a private, loopback-only Ray cluster without auth."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DATABASE_URL")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=str(ray_dir),
    )
    return env


@dataclass
class ClusterProcess:
    """``fault_cluster.py`` running in a session of its own, with a private Ray temp folder."""

    process: subprocess.Popen[bytes]
    ray_dir: Path
    out: Path
    err: Path
    stop_file: Path
    returncode: int | None = None
    left_behind: int = 0

    @classmethod
    def start(cls, command: str, config: dict[str, Any], folder: Path) -> ClusterProcess:
        """Start the helper; its output goes to files in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        # A short private folder: Unix socket paths are limited to 107 bytes.
        ray_dir = Path(tempfile.mkdtemp(prefix="cur-ray-f-", dir="/tmp"))
        stop_file = folder / "stop"
        out, err = folder / "out.jsonl", folder / "err.log"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(HELPER),
                    command,
                    json.dumps({**config, "stopFile": str(stop_file)}),
                ],
                cwd=REPO_ROOT,
                env=ray_env(ray_dir),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return cls(process, ray_dir, out, err, stop_file)

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines printed so far."""
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The first event ``name``; fails with the helper's stderr if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == name]
            if found:
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {name!r} event; stderr:\n{self.err.read_text()[-4000:]}")

    def stop(self, timeout: float) -> int | None:
        """Ask it to stop (stop file), wait, kill on timeout; clean up its whole session."""
        self.stop_file.touch()
        try:
            self.returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.returncode = None
        finally:
            self.process.kill()  # a no-op once it exited
            self.left_behind = kill_session(self.process.pid)
            shutil.rmtree(self.ray_dir, ignore_errors=True)
        return self.returncode


def coordinator_environment(ctx: AppContext) -> dict[str, str]:
    """What a coordinator needs to work on this test's database."""
    key = ctx.settings.cur_secrets_key
    return {
        "DATABASE_URL": ctx.settings.database_url,
        "CUR_SECRETS_KEY": key.get_secret_value() if key else "",
        "CUR_LEASE_SECONDS": str(int(LEASE.total_seconds())),
        "CUR_READ_RETRY_BASE_SECONDS": "0.01",
        "RAY_AUTH_MODE": "disabled",
        "LOG_LEVEL": "INFO",
    }


# ===================================================== 1. two clusters, one PostgreSQL
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_clusters_share_one_database_and_count_every_file_once(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx(postgres_url)
    exports = {
        f"tenant-{n}": write_export(tmp_path / f"tenant-{n}", seed=n + 1, files_per_period=20)
        for n in range(5)
    }
    for project_id, export in exports.items():
        add_local(ctx, project_id, export.root)
    n_files = sum(len(e.chunks) for e in exports.values())
    config = {"coordinatorEnv": coordinator_environment(ctx), "timeoutSeconds": 240}
    started = time.monotonic()
    clusters = [
        ClusterProcess.start("coordinator", config, tmp_path / f"cluster-{i}") for i in range(2)
    ]
    top_ups = 0
    try:
        ready = [c.wait_event("ready", 120) for c in clusters]
        up = time.monotonic() - started
        with LedgerObserver(postgres_url) as observer:
            work_started = time.monotonic()
            fetch_ids = [enqueue(ctx, "cur-fetch", project_id) for project_id in exports]
            fetched = [wait_job(ctx, job_id) for job_id in fetch_ids]
            aggregate_ids = []
            for _ in range(3):  # small limits: both coordinators' jobs share every project
                aggregate_ids += [enqueue(ctx, "cur-aggregate", p, limit=8) for p in exports]
                aggregate_ids.append(enqueue(ctx, "cur-aggregate", None, limit=25))
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                active_jobs, open_files = queue_and_files(ctx)
                if not active_jobs and not open_files:
                    break
                if not active_jobs:  # a job may claim fewer than its limit: top up
                    aggregate_ids.append(enqueue(ctx, "cur-aggregate", None, limit=50))
                    top_ups += 1
                time.sleep(0.3)
            else:
                pytest.fail(f"queue not drained: {queue_and_files(ctx)}")
            worked = time.monotonic() - work_started
    finally:
        returncodes = [c.stop(timeout=60) for c in clusters]

    # Both processes stopped cleanly, each from a coordinator that had nothing left to do.
    assert returncodes == [0, 0], [c.err.read_text()[-3000:] for c in clusters]
    stopped = [c.wait_event("stopped", 1) for c in clusters]
    assert [s["running"] for s in stopped] == [{}, {}]
    worker_ids = {r["workerId"] for r in ready}
    assert len(worker_ids) == 2  # two clusters, two coordinators

    assert all(j.status == "completed" and j.attempts == 1 for j in fetched)
    assert sum(j.result["projects"][0]["registered"] for j in fetched) == n_files  # type: ignore[index]
    aggregates = [get_job(ctx, job_id) for job_id in aggregate_ids]
    assert {(j.status, j.attempts) for j in aggregates} == {("completed", 1)}
    results = [j.result or {} for j in aggregates]
    # Every file was claimed once and written once, by exactly one of the two clusters.
    assert sum(r["claimed"] for r in results) == n_files
    assert sum(r["done"] for r in results) == n_files
    assert sum(r["lost"] for r in results) == 0
    assert all(r["failed"] == [] for r in results)
    done_by = {worker: 0 for worker in worker_ids}
    for job in aggregates:
        assert job.claimed_by in worker_ids
        done_by[job.claimed_by] += (job.result or {})["done"]
    assert all(done > 0 for done in done_by.values()), done_by  # both clusters did work

    files = files_of(ctx)
    assert len(files) == n_files
    assert {(f["status"], f["attempts"], f["claimed_by"]) for f in files} == {("DONE", 1, None)}
    assert assert_file_costs_match(ctx, exports) == n_files
    for project_id, export in exports.items():
        assert_exact(ctx, project_id, export.items)
    observer.assert_consistent()
    report(
        "two-clusters",
        files=n_files,
        projects=len(exports),
        aggregateJobs=len(aggregates),
        topUps=top_ups,
        doneByCoordinator=sorted(done_by.values()),
        jobsByCoordinator=sorted(
            sum(1 for j in aggregates if j.claimed_by == w) for w in worker_ids
        ),
        skipped=sum(r["skipped"] for r in results),
        total=str(sum((unblended(e.items) for e in exports.values()), Decimal(0))),
        ledgerSamples=len(observer.samples),
        clustersUpSeconds=round(up, 1),
        workSeconds=round(worked, 1),
        leftBehind=[c.left_behind for c in clusters],
    )


@pytest.mark.timeout(120)
def test_concurrent_writes_of_one_period_never_lose_a_file(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    """Two workers commit files of the same (project, period) at the same moment.

    Each write transaction recomputes the period's summaries from the files it can see. Under
    READ COMMITTED a transaction cannot see the other's uncommitted ``DONE`` files, so
    without serialisation the later commit overwrites the summaries with sums missing the
    other worker's files. The test holds the summary rows locked until both writers are
    inside their transactions, then lets them go.
    """
    export = write_export(tmp_path / "bucket", seed=50, files_per_period=12, periods=(MARCH,))
    setup = make_ctx(postgres_url)
    add_local(setup, "acme", export.root)
    run_cur_fetch_batch("acme", ctx=setup)
    assert run_cur_aggregate_batch("acme", 4, ctx=setup).done == 4  # summary rows exist
    workers = [make_ctx(postgres_url) for _ in range(2)]
    results: list[Any] = []
    admin = pg_connect(postgres_url, autocommit=False)
    admin.execute("SELECT id FROM finops_cost_service_monthly FOR UPDATE").fetchall()
    probe = pg_connect(postgres_url)
    threads = [
        threading.Thread(
            target=lambda c=c: results.append(run_cur_aggregate_batch("acme", 4, ctx=c))
        )
        for c in workers
    ]
    try:
        for number, thread in enumerate(threads, start=1):
            thread.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # wait until this writer waits on a lock
                row = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> %s",
                    (admin.info.backend_pid,),
                ).fetchone()
                if row and row[0] >= number:
                    break
                time.sleep(0.01)
            else:
                pytest.fail(f"writer {number} never reached its summaries")
    finally:
        admin.rollback()
        for thread in threads:
            thread.join(timeout=60)
        admin.close()
        probe.close()

    assert sorted(r.done for r in results) == [4, 4]
    with LedgerObserver(postgres_url) as observer:
        time.sleep(0.2)
    observer.assert_consistent(min_samples=1)
    sample = observer.samples[-1]
    assert sample.done == 12
    assert sample.summary_total == sample.done_total
    assert_exact(setup, "acme", export.items)


@pytest.mark.timeout(60)
def test_a_deadlock_victim_transaction_is_run_again(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    """PostgreSQL breaks a deadlock by rolling one transaction back; that one runs again.

    Batch A superseding files while Batch B locks them for its write can deadlock (two
    writers locking the same rows in different orders). The application's transaction
    starts waiting first, so its deadlock check fires first and it is the victim.
    """
    ctx = make_ctx(postgres_url)
    add_local(ctx, "acme", tmp_path)
    first, second = enqueue(ctx, "cur-fetch", "acme"), enqueue(ctx, "cur-fetch", "acme")
    lock = "SELECT 1 FROM finops_batch_jobs WHERE job_id = '{}' FOR UPDATE"
    runs: list[float] = []

    def work(session: Any) -> int:
        runs.append(time.monotonic())
        session.execute(text(lock.format(first)))
        session.execute(text(lock.format(second)))  # waits for the other transaction
        return len(runs)

    results: list[int] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(ctx.db.run_transaction(work))
        except BaseException as exc:
            failures.append(exc)

    with (
        pg_connect(postgres_url, autocommit=False) as other,
        pg_connect(postgres_url) as probe,
        LogCounter("cur_ray.adapters.db.engine", CONFLICT_RETRIED) as retried,
    ):
        other.execute(lock.format(second))
        thread = threading.Thread(target=run)
        thread.start()
        wait_for_blocked_backend(probe, "finops_batch_jobs", 30)
        started = time.monotonic()
        other.execute(lock.format(first))  # the cycle: PostgreSQL aborts one of the two
        waited = time.monotonic() - started
        other.rollback()
        thread.join(timeout=30)

    assert failures == []
    assert results == [2]  # the victim's second run went through
    assert retried.count == 1
    report("deadlock-retried", runs=len(runs), otherWaitedSeconds=round(waited, 2))


# ============================================================ 2a. a worker node removed
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_worker_node_removed_mid_job_loses_nothing(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx(postgres_url)
    # 1 000 rows per file: tasks long enough to be caught running on the victim node (with
    # 100, a fast machine finished the job between two looks).
    export = write_export(tmp_path / "bucket", seed=7, files_per_period=30, rows=30_000)
    add_local(ctx, "acme", export.root)
    config = {
        "coordinatorEnv": coordinator_environment(ctx),
        "projectId": "acme",
        "timeoutSeconds": 120,
    }
    started = time.monotonic()
    cluster = ClusterProcess.start("remove-node", config, tmp_path / "cluster")
    try:
        returncode = cluster.process.wait(timeout=200)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        cluster.stop(timeout=10)
    seconds = time.monotonic() - started

    assert returncode == 0, (cluster.events(), cluster.err.read_text()[-3000:])
    summary = cluster.wait_event("summary", 1)
    # The removed node was running row-group tasks, and did not host the coordinator.
    assert summary["runningOnRemovedNode"], summary
    assert summary["removedNode"] not in (summary["coordinatorNode"], summary["headNode"])
    aggregate = summary["jobs"]["aggregate"]
    assert aggregate["status"] == "completed", aggregate
    assert aggregate["attempts"] == 1  # the coordinator survived; Ray re-ran the lost tasks
    assert aggregate["result"]["done"] == len(export.chunks)
    assert aggregate["result"]["failed"] == []
    files = files_of(ctx, "acme")
    assert {(f["status"], f["attempts"]) for f in files} == {("DONE", 1)}
    assert assert_file_costs_match(ctx, {"acme": export}) == len(export.chunks)
    assert_exact(ctx, "acme", export.items)
    report(
        "worker-node-removed",
        files=len(export.chunks),
        tasksRunningOnRemovedNode=len(summary["runningOnRemovedNode"]),
        progressAtRemoval=summary["progressAtRemoval"],
        nodesWithResults=len(summary["taskNodes"]),
        phases=summary["seconds"],
        total=str(unblended(export.items)),
        seconds=round(seconds, 1),
    )


# ============================================================ 2b. the coordinator killed
@pytest.fixture
def pg_coordinator(
    postgres_url: str, make_ctx: Callable[..., AppContext]
) -> Iterator[tuple[AppContext, dict[str, str]]]:
    """A context and coordinator environment on a fresh PostgreSQL database; the actor is
    killed for good afterwards."""
    import ray

    from cur_ray.entrypoints.coordinator import COORDINATOR_NAME
    from cur_ray.entrypoints.singletons import NAMESPACE

    ctx = make_ctx(postgres_url)
    yield ctx, coordinator_environment(ctx)
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE), no_restart=True)


def _held(ctx: AppContext, job_id: str, attempt: int) -> bool:
    """True when the job runs its ``attempt`` and its files are claimed."""
    job = get_job(ctx, job_id)
    if job.status != "active" or job.attempts != attempt:
        return False
    with ctx.db.transaction() as session:
        held = session.scalar(
            text("SELECT count(*) FROM finops_billing_files WHERE claimed_by LIKE :holder"),
            {"holder": f"%/{job_id}"},
        )
    return bool(held)


def done_files(ctx: AppContext) -> int:
    """How many files are ``DONE``."""
    with ctx.db.transaction() as session:
        done = session.scalar(
            text("SELECT count(*) FROM finops_billing_files WHERE status = 'DONE'")
        )
    return int(done or 0)


def kill_coordinator(coordinator: Any, actor_id: str) -> float:
    """``ray.kill(…, no_restart=False)`` and wait until its process is gone; when it died."""
    import ray

    pid = ray._private.state.actors(actor_id)["Pid"]
    ray.kill(coordinator, no_restart=False)
    killed_at = time.monotonic()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.wait_procs([psutil.Process(pid)], timeout=30)
    return killed_at


def _open_writes(conn: psycopg.Connection[Any]) -> int:
    """Backends of this database inside a Batch B write statement right now."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state <> 'idle' AND xact_start IS NOT NULL AND ("
        "query ILIKE 'DELETE FROM finops_file_costs%' "
        "OR query ILIKE 'INSERT INTO finops_file_costs%' "
        "OR query ILIKE 'INSERT INTO finops_cost_%' "
        "OR query ILIKE 'UPDATE finops_billing_files SET status%')"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("ray_session")
def test_coordinator_killed_three_times_mid_job_counts_once(
    pg_coordinator: tuple[AppContext, dict[str, str]], postgres_url: str, tmp_path: Path
) -> None:
    import ray

    from cur_ray.entrypoints.coordinator import get_coordinator

    ctx, env = pg_coordinator
    exports = {
        f"p{n}": write_export(tmp_path / f"p{n}", seed=20 + n, files_per_period=5, rows=1200)
        for n in range(4)
    }
    for project_id, export in exports.items():
        add_local(ctx, project_id, export.root)
    assert not run_cur_fetch_batch(ctx=ctx).failed_projects
    n_files = sum(len(e.chunks) for e in exports.values())
    kills = 3
    seed = int(os.environ.get("CUR_RAY_FAULT_SEED", "20261128"))
    rng = random.Random(seed)

    coordinator = get_coordinator(env)
    worker_id = ray.get(coordinator.status.remote())["workerId"]
    actor_id = worker_id.split(":", 1)[1]
    # One global job over the four projects (four writes per attempt). A job interrupted by
    # its coordinator's death uses an attempt; give it room for the three kills.
    job_id = "kill-me-three-times"
    with ctx.db.transaction() as session:
        job_store.insert_job(
            session,
            job_id=job_id,
            name="cur-aggregate",
            project_id=None,
            trigger="cli",
            data={"projectId": None, "limit": None},
            max_attempts=kills + 2,
        )
    killed: list[dict[str, Any]] = []
    started = time.monotonic()
    with LedgerObserver(postgres_url) as observer, pg_connect(postgres_url) as probe:
        # Kill 1, deterministic: the first project's write transaction is blocked on a lock
        # the test holds (its claims are locked FOR UPDATE, its DELETE waits) when it dies.
        with pg_connect(postgres_url, autocommit=False) as admin:
            admin.execute("LOCK TABLE finops_file_costs IN EXCLUSIVE MODE")
            ray.get(coordinator.notify.remote())
            blocked = wait_for_blocked_backend(probe, "finops_file_costs", 60, [observer.pid])
            at_kill = kill_coordinator(coordinator, actor_id)
            admin.rollback()  # the dead client's backend gets the lock, then finds no client
        killed.append({"moment": "blocked in its write", "backend": blocked, "done": 0})
        # Kills 2 and 3: at random moments of the next attempts: after a random number of
        # this attempt's project writes (never the last one: the job must still run), then
        # a random delay.
        per_project = n_files // len(exports)
        for attempt in range(2, kills + 1):
            deadline = time.monotonic() + 60
            while not _held(ctx, job_id, attempt):
                assert time.monotonic() < deadline, get_job(ctx, job_id)
                time.sleep(0.02)
            killed[-1]["recoveredSeconds"] = round(time.monotonic() - at_kill, 2)
            done_before = done_files(ctx)
            writes = rng.randrange(max(1, (n_files - done_before) // per_project - 1))
            while done_files(ctx) < done_before + writes * per_project:
                assert time.monotonic() < deadline, get_job(ctx, job_id)
                time.sleep(0.01)
            time.sleep(rng.uniform(0.02, 0.3))
            in_write, done = _open_writes(probe), done_files(ctx)
            assert _held(ctx, job_id, attempt), ("the job ended before its kill", killed)
            at_kill = kill_coordinator(coordinator, actor_id)
            killed.append({"moment": "random", "openWrites": in_write, "done": done})
        job = wait_job(ctx, job_id, 150)
        killed[-1]["completedSeconds"] = round(time.monotonic() - at_kill, 2)
    seconds = time.monotonic() - started

    assert job.status == "completed", job.error
    assert job.attempts == kills + 1, (job.attempts, killed)
    assert ray._private.state.actors(actor_id)["NumRestarts"] == kills
    assert (job.result or {})["failed"] == []
    files = files_of(ctx)
    assert len(files) == n_files
    assert {f["status"] for f in files} == {"DONE"}
    assert {f["claimed_by"] for f in files} == {None}
    # The first write never committed: every file was claimed again after the first kill.
    assert min(f["attempts"] for f in files) >= 2
    assert max(f["attempts"] for f in files) <= kills + 1
    assert assert_file_costs_match(ctx, exports) == n_files
    for project_id, export in exports.items():
        assert_exact(ctx, project_id, export.items)
    observer.assert_consistent()
    report(
        "coordinator-killed",
        seed=seed,
        files=n_files,
        projects=len(exports),
        kills=killed,
        jobAttempts=job.attempts,
        restarts=ray._private.state.actors(actor_id)["NumRestarts"],
        fileAttempts=sorted({f["attempts"] for f in files}),
        processingPeak=max(s.processing for s in observer.samples),
        ledgerSamples=len(observer.samples),
        total=str(sum((unblended(e.items) for e in exports.values()), Decimal(0))),
        seconds=round(seconds, 1),
    )


# ================================================================== 3. PostgreSQL faults
@pytest.mark.timeout(120)
def test_connections_terminated_while_batch_a_registers(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    folder = root / "x" / "data" / "BILLING_PERIOD=2024-03"
    folder.mkdir(parents=True)
    n_objects = 3000
    for n in range(n_objects):
        (folder / f"x-{n:05d}.snappy.parquet").write_bytes(b"p")
    ctx = make_ctx(postgres_url)
    add_local(ctx, "acme", root)
    enqueue(ctx, "cur-fetch", "acme")
    warm_pool(ctx)

    with LedgerObserver(postgres_url, interval=0.2) as observer:
        terminator = Terminator(postgres_url, "finops_billing_files", keep=[observer.pid])
        terminator.lock()
        terminator.start()
        failed_at = time.monotonic()
        first = jobs_service.run_one_job(ctx, "worker-1", LEASE)
        terminator.join()
        assert first is not None
        # The pool still works at once (its dead connections are replaced), and the backoff
        # is honoured: nothing is runnable yet.
        assert jobs_service.run_one_job(ctx, "worker-1", LEASE) is None
        with ctx.db.transaction() as session:
            registered = session.scalar(text("SELECT count(*) FROM finops_billing_files"))
            versions = session.scalar(text("SELECT count(*) FROM finops_report_versions"))
        assert first.run_after is not None
        time.sleep(max(0.0, (first.run_after - dt.datetime.now(dt.UTC)).total_seconds()) + 0.1)
        second = jobs_service.run_one_job(ctx, "worker-1", LEASE)
        recovered = time.monotonic() - failed_at

    assert terminator.terminated >= 4  # the blocked writer and idle pooled connections
    assert (first.status, first.attempts) == ("waiting", 1)
    assert first.error is not None
    assert first.error.startswith("database")
    backoff = (first.run_after - (first.started_at or first.run_after)).total_seconds()
    assert 4 <= backoff <= 7, backoff  # jobs: 5 s before the second attempt
    assert (registered, versions) == (0, 0)  # the registration transaction left nothing
    assert second is not None
    assert (second.status, second.attempts) == ("completed", 2), second.error
    outcome = (second.result or {})["projects"][0]
    assert (outcome["listed"], outcome["registered"], outcome["error"]) == (
        n_objects,
        n_objects,
        None,
    )
    assert {(f["status"], f["attempts"]) for f in files_of(ctx, "acme")} == {("PENDING", 0)}
    observer.assert_consistent(min_samples=3)
    report(
        "pg-terminated-batch-a",
        objects=n_objects,
        terminatedBackends=terminator.terminated,
        blockedAfterSeconds=round(terminator.waited_seconds, 2),
        jobError=first.error,
        backoffSeconds=round(backoff, 2),
        recoveredSeconds=round(recovered, 1),
    )


@pytest.mark.timeout(120)
def test_connections_terminated_during_batch_b_write(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx(postgres_url)
    exports = {
        p: write_export(tmp_path / p, seed=30 + n, files_per_period=4, rows=800)
        for n, p in enumerate(("alpha", "beta"))
    }
    for project_id, export in exports.items():
        add_local(ctx, project_id, export.root)
    assert not run_cur_fetch_batch(ctx=ctx).failed_projects
    per_project = {p: len(e.chunks) for p, e in exports.items()}
    job_id = enqueue(ctx, "cur-aggregate", None)
    warm_pool(ctx)

    with LedgerObserver(postgres_url, interval=0.02) as observer:
        terminator = Terminator(postgres_url, "finops_file_costs", keep=[observer.pid])

        def runner(
            spec: FileSystemSpec,
            files: Sequence[ClaimedFile],
            policy: RetryPolicy,
            on_progress: Callable[[], None],
        ) -> Iterable[FileOutcome]:
            # alpha is written normally; beta's write will block on the lock, then its
            # connection (and every other one of the database) is terminated.
            if files[0].project_id == "beta":
                terminator.lock()
                terminator.start()
            return run_in_process(spec, files, policy, on_progress)

        first = jobs_service.run_one_job(ctx, "worker-1", LEASE, runner=runner)
        terminator.join()
        assert first is not None
        after_failure = {p: files_of(ctx, p) for p in exports}
        alpha_total = table_total(monthly(ctx, "alpha"))
        beta_rows = monthly(ctx, "beta")
        with ctx.db.transaction() as session:
            session.execute(  # skip the 5 s backoff: the retry itself is what is tested next
                text("UPDATE finops_batch_jobs SET run_after = :now WHERE job_id = :id"),
                {"now": dt.datetime.now(dt.UTC), "id": job_id},
            )
        second = jobs_service.run_one_job(ctx, "worker-2", LEASE)

    assert terminator.terminated >= 4  # the blocked writer and idle pooled connections
    assert (first.status, first.attempts) == ("waiting", 1)
    assert first.error is not None
    assert first.error.startswith("database")
    assert first.run_after is not None
    # alpha's transaction committed before the fault; beta's left nothing and its claims
    # were handed back at once (not left PROCESSING until their lease expired).
    assert {(f["status"], f["attempts"]) for f in after_failure["alpha"]} == {("DONE", 1)}
    assert {(f["status"], f["attempts"], f["claimed_by"]) for f in after_failure["beta"]} == {
        ("PENDING", 1, None)
    }
    assert abs(alpha_total - unblended(exports["alpha"].items)) < EXACT
    assert beta_rows == []
    assert second is not None
    assert (second.status, second.attempts) == ("completed", 2), second.error
    assert (second.result or {})["done"] == per_project["beta"]
    assert {(f["status"], f["attempts"]) for f in files_of(ctx, "alpha")} == {("DONE", 1)}
    assert {(f["status"], f["attempts"]) for f in files_of(ctx, "beta")} == {("DONE", 2)}
    assert assert_file_costs_match(ctx, exports) == sum(per_project.values())
    for project_id, export in exports.items():
        assert_exact(ctx, project_id, export.items)
    observer.assert_consistent()
    report(
        "pg-terminated-batch-b",
        files=per_project,
        terminatedBackends=terminator.terminated,
        jobError=first.error,
        ledgerSamples=len(observer.samples),
        total=str(sum((unblended(e.items) for e in exports.values()), Decimal(0))),
    )


# ======================================================================== 4. S3 faults
def get_of(key: str) -> Callable[[RecordedRequest], bool]:
    """Matches the GET requests of one object (HEAD requests pass through)."""
    return lambda r: r.method == "GET" and unquote(r.path.split("?")[0]).endswith("/" + key)


@pytest.mark.timeout(180)
def test_s3_throttling_resets_and_truncated_bodies(
    s3_endpoint: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    export = write_export(tmp_path / "bucket", seed=40, files_per_period=4, rows=800)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tenant")
    upload_tree(export.root, s3, "tenant")
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"  # the S3 path is what is tested here
    upgrade_database(database_url)
    retries = 2
    keys = sorted(export.chunks)
    throttled, reset, cut_once, always_503, always_cut = keys[:5]
    faults = {
        # More 503s than pyarrow's own attempts: one unit-level retry is needed.
        "throttled": Fault(get_of(throttled), times=S3_REQUEST_ATTEMPTS + 1),
        "reset": Fault(get_of(reset), drop_connection=True, times=S3_REQUEST_ATTEMPTS + 1),
        "cutOnce": Fault(get_of(cut_once), truncate=True, times=1),
        "always503": Fault(get_of(always_503), times=10**6),
        "alwaysCut": Fault(get_of(always_cut), truncate=True, times=10**6),
    }
    proxy = RecordingProxy(upstream=s3_endpoint).start()
    try:
        ctx = make_ctx(
            database_url,
            aws_endpoint_url=proxy.url,
            cur_read_retries=retries,
            cur_read_retry_base_seconds=0.01,
        )
        with ctx.db.transaction() as session:
            add_project(
                session,
                ctx.settings,
                project_id="acme",
                storage_url="s3://tenant",
                role_arn="arn:aws:iam::123456789012:role/cur-reader",
                external_id="ext-1",
            )
        assert run_cur_fetch_batch("acme", ctx=ctx).projects[0].registered == len(keys)
        proxy.faults.extend(faults.values())
        started = time.monotonic()
        result = run_cur_aggregate_batch("acme", ctx=ctx)
        seconds = time.monotonic() - started
    finally:
        proxy.stop()

    failed = {f.objectKey: f.error for f in result.failed}
    assert set(failed) == {always_503, always_cut}
    for key, message in failed.items():
        assert key in message  # the message names the file
        assert "storage read failed" in message
    assert "SLOW_DOWN" in failed[always_503]
    assert "partial file" in failed[always_cut]
    good = [k for k in keys if k not in failed]
    assert result.done == len(good)
    statuses = {f["object_key"]: (f["status"], f["attempts"]) for f in files_of(ctx, "acme")}
    assert {statuses[k] for k in good} == {("DONE", 1)}
    assert {statuses[k] for k in failed} == {("ERROR", 1)}
    # The transient faults were all served (and survived).
    for name in ("throttled", "reset", "cutOnce"):
        assert faults[name].times == 0, (name, faults[name])
    # A permanently failing object: each of the CUR_READ_RETRIES + 1 unit attempts
    # (tenacity) sends one GET that pyarrow's AWS client tries S3_REQUEST_ATTEMPTS times.
    for name in ("always503", "alwaysCut"):
        assert faults[name].hits == S3_REQUEST_ATTEMPTS * (retries + 1), (name, faults[name])
    heads = {
        k: sum(1 for r in proxy.requests if r.method == "HEAD" and unquote(r.path).endswith(k))
        for k in keys
    }
    # One HEAD per unit attempt: an untouched file is opened twice (plan, read); the
    # throttled one once more (tenacity retried its plan); a failing one retries + 1 times.
    untouched = keys[5]
    assert heads[untouched] == 2
    assert heads[throttled] == heads[untouched] + 1
    assert heads[always_503] == retries + 1
    good_items = [item for k in good for item in export.chunks[k]]
    assert_exact(ctx, "acme", good_items)
    report(
        "s3-faults",
        files=len(keys),
        done=result.done,
        failed=len(failed),
        faultHits={name: fault.hits for name, fault in faults.items()},
        headsPerKey=sorted(heads.values()),
        readRetries=retries,
        s3RequestAttempts=S3_REQUEST_ATTEMPTS,
        total=str(unblended(good_items)),
        aggregateSeconds=round(seconds, 1),
    )


# ==================================================== 5. re-delivery during aggregation
@dataclass
class Deliveries:
    """Successive deliveries (assemblies) of one legacy CUR month and their exact totals."""

    root: Path
    items: dict[str, list[LineItem]] = field(default_factory=dict)

    def deliver(self, assembly: str, seed: int, files: int) -> None:
        """Write a new assembly and point the month's manifest at it."""
        items = generate_line_items(period=MARCH, seed=seed, rows=300 + 50 * seed, accounts=2)
        write_legacy_csv_export(
            self.root,
            prefix="",
            report="rep",
            period=MARCH,
            assembly_id=assembly,
            items=items,
            files=files,
        )
        self.items[assembly] = items

    def shown(self, ctx: AppContext, project_id: str) -> str | None:
        """Which delivery the monthly table shows exactly (None: empty); fails on a mix."""
        rows = monthly(ctx, project_id)
        if not rows:
            return None
        total = table_total(rows)
        lines = sum(int(r["line_items"]) for r in rows)
        delivered = dict(self.items)  # a copy: another thread may be delivering
        matches = [
            a
            for a, items in delivered.items()
            if abs(total - unblended(items)) < EXACT
            and lines == sum(int(f["line_items"] or 0) for f in expected_monthly(items).values())
        ]
        assert len(matches) == 1, (total, lines, matches)
        return matches[0]


def test_redelivery_while_the_previous_version_is_aggregated(
    ctx: AppContext, tmp_path: Path
) -> None:
    months = Deliveries(tmp_path / "bucket")
    months.deliver("a1", seed=1, files=2)
    add_local(ctx, "acme", months.root)
    run_cur_fetch_batch("acme", ctx=ctx)
    assert run_cur_aggregate_batch("acme", ctx=ctx).done == 2
    seen = [months.shown(ctx, "acme")]
    months.deliver("a2", seed=2, files=3)
    run_cur_fetch_batch("acme", ctx=ctx)
    seen.append(months.shown(ctx, "acme"))

    def redelivering_runner(
        spec: FileSystemSpec,
        files: Sequence[ClaimedFile],
        policy: RetryPolicy,
        on_progress: Callable[[], None],
    ) -> Iterable[FileOutcome]:
        outcomes = list(run_in_process(spec, files, policy, on_progress))  # a2 read…
        seen.append(months.shown(ctx, "acme"))
        months.deliver("a3", seed=3, files=2)  # …a3 delivered and registered…
        run_cur_fetch_batch("acme", ctx=ctx)
        seen.append(months.shown(ctx, "acme"))
        return outcomes  # …then a2's results reach the write

    during = run_cur_aggregate_batch("acme", ctx=ctx, runner=redelivering_runner)
    seen.append(months.shown(ctx, "acme"))
    after = run_cur_aggregate_batch("acme", ctx=ctx)
    seen.append(months.shown(ctx, "acme"))

    # a2's claims were lost to the re-delivery: nothing of a2 was ever counted.
    assert (during.claimed, during.done, during.lost) == (3, 0, 3)
    assert after.done == 2
    assert seen == ["a1", "a1", "a1", "a1", "a1", "a3"]
    assert_exact(ctx, "acme", months.items["a3"])
    statuses = sorted((f["object_key"].split("/")[2], f["status"]) for f in files_of(ctx, "acme"))
    assert (
        statuses == [("a1", "SUPERSEDED")] * 2 + [("a2", "SUPERSEDED")] * 3 + [("a3", "DONE")] * 2
    )
    report("redelivery-runner", observations=seen, database=ctx.db.engine.dialect.name)


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_redeliveries_racing_aggregation_always_show_one_version(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx, fetcher = make_ctx(postgres_url), make_ctx(postgres_url)
    months = Deliveries(tmp_path / "bucket")
    months.deliver("a0", seed=10, files=2)
    add_local(ctx, "acme", months.root)
    run_cur_fetch_batch("acme", ctx=ctx)
    run_cur_aggregate_batch("acme", ctx=ctx)
    months.deliver("a1", seed=11, files=3)
    run_cur_fetch_batch("acme", ctx=ctx)
    stop = threading.Event()
    seen: list[str | None] = []
    mixed: list[str] = []
    database_errors: list[str] = []
    lost = 0

    def observe() -> None:
        watcher_ctx = make_ctx(postgres_url)
        while not stop.is_set():
            try:
                seen.append(months.shown(watcher_ctx, "acme"))
            except AssertionError as exc:
                mixed.append(str(exc))
                return
            except Exception as exc:  # the watcher must not die silently
                mixed.append(f"observer failed: {type(exc).__name__}: {exc}")
                return

    def redeliver(number: int) -> None:
        months.deliver(f"a{number}", seed=10 + number, files=3)
        try:
            run_cur_fetch_batch("acme", ctx=fetcher)
        except DatabaseError as exc:  # e.g. a deadlock victim: the next run repeats it
            database_errors.append(f"fetch: {exc.message}")

    def slow_runner(
        spec: FileSystemSpec,
        files: Sequence[ClaimedFile],
        policy: RetryPolicy,
        on_progress: Callable[[], None],
    ) -> Iterator[FileOutcome]:
        for outcome in run_in_process(spec, files, policy, on_progress):
            time.sleep(0.25)  # slow storage: widens the window for a re-delivery to land in
            yield outcome

    # When a(n) lands after a(n - 1)'s aggregation started: early (while its files are read:
    # their claims are lost) or late (after its write, or racing it).
    delays = (0.1, 1.0, 0.3, 1.2, 0.2, 0.9, 0.45, 0.7)
    watcher = threading.Thread(target=observe, daemon=True)
    watcher.start()
    rounds, raced = len(delays), 0
    retried = LogCounter("cur_ray.adapters.db.engine", CONFLICT_RETRIED).__enter__()
    try:
        for number, delay in enumerate(delays, start=2):
            racer = threading.Timer(delay, redeliver, args=(number,))
            racer.start()
            try:
                lost_now = run_cur_aggregate_batch("acme", ctx=ctx, runner=slow_runner).lost
            except DatabaseError as exc:
                database_errors.append(f"aggregate: {exc.message}")
                lost_now = 0
            racer.join()
            lost += lost_now
            raced += lost_now > 0
            assert not mixed, mixed
        for _ in range(5):  # settle: the latest delivery alone
            run_cur_fetch_batch("acme", ctx=ctx)
            run_cur_aggregate_batch("acme", ctx=ctx)
            if {f["status"] for f in files_of(ctx, "acme")} <= {"DONE", "SUPERSEDED"}:
                break
    finally:
        retried.__exit__()
        stop.set()
        watcher.join(timeout=30)

    assert not mixed, mixed
    assert database_errors == []  # deadlocks between the batches are retried in place
    latest = f"a{rounds + 1}"
    assert months.shown(ctx, "acme") == latest
    assert_exact(ctx, "acme", months.items[latest])
    assert len(seen) > 20
    shown = [s for s in seen if s is not None]
    assert shown == sorted(shown, key=lambda a: int(a[1:]))  # never back to an older one
    assert raced >= 1  # at least one re-delivery did land while its predecessor was read
    report(
        "redelivery-race",
        roundsWithLostClaims=raced,
        rounds=rounds,
        deliveries=len(months.items),
        observations=len(seen),
        versionsShown=sorted(set(shown), key=lambda a: int(a[1:])),
        lostClaims=lost,
        conflictsRetried=retried.count,
    )
