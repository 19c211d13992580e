"""The benchmark: Batch B through the coordinator on a local Ray vs DuckDB vs plain pyarrow.

    python -m benchmarks.run --rows 8000000 --files 4        # the measurement
    python -m benchmarks.run --smoke                         # seconds; what CI runs

One run, the same files for every engine:

(a) Batch B end to end through the coordinator actor on a running local Ray: enqueue, claim,
    plan and aggregation tasks, merge, one write per project, statuses, job completion seen
    in the database. Ray start-up, worker start-up (a warm-up job runs first) and Batch A
    registration are excluded.
(b) DuckDB computing the same measures (``benchmarks.reference.duckdb_sql``).
(c) plain single-process pyarrow (``benchmarks.reference.pyarrow_aggregate``).
(d) for context: cur_ray's own aggregation in this process (no Ray, no database).

Results of every engine are compared (to 1e-8 per measure and output row) before any time
is printed; a difference exits with status 1. Then: wall times (best and median of
``--repeat``), rows/s, (a)/(b), peak RSS (VmHWM) of the task workers and the coordinator,
the CSV.gz figures against DuckDB's ``read_csv``, and optionally the peak RSS of the workers
while Batch B aggregates one big file (``--big-file-rows``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from benchmarks.generate import Dataset, DatasetSpec, ensure_dataset
from benchmarks.reference import (
    Figures,
    Results,
    compare,
    duckdb_aggregate,
    figures_of,
    key_of,
    pyarrow_aggregate,
)

SMOKE = {
    "rows": 30_000,
    "files": 2,
    "csv_rows": 4_000,
    "repeat": 1,
    "repeat_other": 1,
    "big_file_rows": 0,
}


# ------------------------------------------------------------------------------- memory


def _status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _title(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline()).strip()
    return ""


@dataclass
class RayProcesses:
    """This driver's Ray processes: the coordinator actor and the task workers.

    Peak RSS is read from the kernel (``VmHWM``), reset before each measured run through
    ``/proc/<pid>/clear_refs``; a sampler thread also reads it every 200 ms so workers that
    exit during a run are not missed (the kernel's peak is exact; the sampling only decides
    which processes are looked at).
    """

    peaks: dict[int, int] = field(default_factory=dict)  # pid -> KiB (VmHWM)
    anon: dict[int, int] = field(default_factory=dict)  # pid -> KiB (largest RssAnon seen)
    titles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def workers() -> list[psutil.Process]:
        """Ray worker processes started by this driver (tasks and actors)."""
        found = []
        for process in psutil.Process().children(recursive=True):
            title = _title(process)
            agent = "DashboardAgent" in title or "RuntimeEnvAgent" in title
            # A worker names itself ray::IDLE / ray::<task> / ray::<Actor>; before that its
            # command line runs default_worker.py (the raylet's own command line names it too).
            starting = title.split(" ")[1:2] and title.split(" ")[1].endswith("default_worker.py")
            if (title.startswith("ray::") and not agent) or starting:
                found.append(process)
        return found

    def restart_task_workers(self, warm_up: Callable[[], Any]) -> None:
        """Replace the idle task workers with new ones (warmed up by ``warm_up``).

        A worker keeps the memory its allocators retained from earlier jobs; measuring each
        phase on new workers makes its peak its own. Ray starts workers again on demand.
        """
        old = [p for p in self.workers() if "Coordinator" not in _title(p)]
        for process in old:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(old, timeout=10)
        warm_up()

    def start(self) -> None:
        """Reset the kernel's peak counters and start sampling."""
        self.peaks.clear()
        self.anon.clear()
        self.titles.clear()
        for process in self.workers():
            with contextlib.suppress(OSError):
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._record()

    def _record(self) -> None:
        for process in self.workers():
            with contextlib.suppress(psutil.Error, OSError):
                rss = process.memory_info().rss // 1024
                peak = max(rss, _status_kib(process.pid, "VmHWM"))
                self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), peak)
                anon = _status_kib(process.pid, "RssAnon")
                self.anon[process.pid] = max(self.anon.get(process.pid, 0), anon)
                title = _title(process)
                if "Coordinator" in title or process.pid not in self.titles:
                    self.titles[process.pid] = title

    def stop(self) -> None:
        """Stop sampling and take the final peaks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._record()

    def coordinator_kib(self) -> int:
        """Peak RSS of the coordinator actor."""
        return max((k for p, k in self.peaks.items() if "Coordinator" in self.titles[p]), default=0)

    def task_worker_private_kib(self) -> int:
        """Largest private (anonymous) RSS sampled in a task worker (every 200 ms)."""
        return max(
            (k for p, k in self.anon.items() if "Coordinator" not in self.titles[p]), default=0
        )

    def task_worker_kib(self) -> list[int]:
        """Peak RSS of every task worker (largest first)."""
        return sorted(
            (k for p, k in self.peaks.items() if "Coordinator" not in self.titles[p]),
            reverse=True,
        )


# ------------------------------------------------------------------------------ harness


@dataclass
class Timing:
    """Wall times of repeated runs."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """Fastest run."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """Median run."""
        return statistics.median(self.seconds)


def timed(function: Callable[[], Any], repeat: int) -> tuple[Timing, Any]:
    """Run ``function`` ``repeat`` times; the timing and the last result."""
    timing = Timing()
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        timing.seconds.append(time.perf_counter() - started)
    return timing, result


@dataclass
class BatchB:
    """A local Ray with the coordinator, a database and one project per dataset."""

    work: Path
    cpus: int
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    ctx: Any = None
    coordinator: Any = None
    poller: Any = None

    def start(self) -> None:
        """Start Ray, migrate a fresh database and start the coordinator."""
        import ray

        from cur_ray.adapters.crypto import generate_key
        from cur_ray.adapters.db.engine import upgrade_database
        from cur_ray.entrypoints.coordinator import get_coordinator
        from cur_ray.services.context import AppContext
        from cur_ray.settings import Settings

        url = self.database_url or f"sqlite:///{self.work / 'bench.db'}"
        upgrade_database(url)
        key = generate_key()
        settings = Settings(database_url=url, cur_secrets_key=SecretStr(key), log_level="WARNING")
        self.ctx = AppContext.from_settings(settings)
        self.poller = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        self.env = {
            "DATABASE_URL": url,
            "CUR_SECRETS_KEY": key,
            "LOG_LEVEL": "WARNING",
            "RAY_AUTH_MODE": "disabled",
        }
        ray.init(
            address="local",
            num_cpus=self.cpus,
            include_dashboard=False,
            namespace="cur_ray_bench",
            log_to_driver=False,
            object_store_memory=256 * 2**20,
        )
        self.coordinator = get_coordinator(self.env)

    def add_project(self, project_id: str, bucket: Path) -> int:
        """Register a project on a local folder and run Batch A for it (not timed)."""
        from cur_ray.services.cur_fetch import run_cur_fetch_batch
        from cur_ray.services.projects import add_project

        with self.ctx.db.transaction() as session:
            add_project(
                session, self.ctx.settings, project_id=project_id, storage_url=f"file://{bucket}"
            )
        result = run_cur_fetch_batch(project_id, ctx=self.ctx)
        return result.projects[0].registered

    def requeue(self, project_id: str) -> None:
        """Send the project's files back to PENDING for another measured run."""
        from cur_ray.services.backfill import requeue_periods

        with self.ctx.db.transaction() as session:
            requeue_periods(session, project_id)

    def aggregate(self, project_id: str, timeout: float = 1800) -> dict[str, Any]:
        """Enqueue a cur-aggregate job through the coordinator and wait until it is recorded.

        The clock runs from the submission to the moment the database shows the job
        completed; the returned dict is the job's stored result plus ``wall``.
        """
        import ray

        from cur_ray.services import jobs as jobs_service

        started = time.perf_counter()
        view = ray.get(self.coordinator.submit.remote("cur-aggregate", project_id, "cli"))
        job_id = view["jobId"]
        deadline = started + timeout
        # Poll with a plain read (no write lock: the project's SQLite sessions BEGIN
        # IMMEDIATE), every 10 ms: cheap next to the two CPUs the job needs.
        query = text("SELECT status FROM finops_batch_jobs WHERE job_id = :id")
        with self.poller.connect() as connection:
            while True:
                status = connection.execute(query, {"id": job_id}).scalar()
                connection.rollback()
                if status in ("completed", "failed"):
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"job {job_id} still {status}")
                time.sleep(0.01)
        wall = time.perf_counter() - started
        with self.ctx.db.transaction() as session:
            job = jobs_service.get_job(session, job_id)
        if job.status != "completed":
            raise RuntimeError(f"job failed: {job.error}")
        return {**(job.result or {}), "wall": wall}

    def results(self, project_id: str) -> Results:
        """What Batch B wrote: the project's daily and monthly summaries."""
        from cur_ray.services.costs import daily_costs, monthly_costs

        results: Results = {}
        with self.ctx.db.transaction() as session:
            for row in daily_costs(session, project_id):
                results[key_of(row)] = figures_of(row)
            for row in monthly_costs(session, project_id):
                results[key_of({**row, "usage_date": None})] = figures_of(
                    {**row, "usage_date": None}
                )
        return results

    def stop(self) -> None:
        """Stop Ray and close the database."""
        import ray

        if self.ctx is not None:
            self.ctx.close()
        if self.poller is not None:
            self.poller.dispose()
        ray.shutdown()


def warm_workers(cpus: int, paths: Sequence[str], env: dict[str, str]) -> None:
    """Start one task worker per CPU; each imports the task code and reads ``paths`` once.

    Reading a small file of each format runs every code path once (imports, Arrow's readers
    and kernels), so that no measured job pays a worker's first-use costs. The tasks run
    with the coordinator's runtime environment (``env``): Ray reuses a worker only for
    tasks of the same environment, and the coordinator's tasks inherit its own.
    """
    import ray

    @ray.remote
    def warm(files: Sequence[str]) -> int:
        import pyarrow.fs as pafs

        from cur_ray.adapters.readers import aggregate_work_unit, plan_work_units

        fs = pafs.LocalFileSystem()
        for path in files:
            for unit in plan_work_units(fs, path, path):
                aggregate_work_unit(fs, unit)
        time.sleep(0.5)  # keep this worker busy so the next task needs another one
        return os.getpid()

    options = warm.options(runtime_env={"env_vars": env})
    ray.get([options.remote(list(paths)) for _ in range(cpus)])


def in_process(paths: Sequence[str]) -> Results:
    """(d): cur_ray's readers and aggregation in this process, merged per file."""
    import pyarrow.fs as pafs

    from cur_ray.adapters.readers import aggregate_work_unit, plan_work_units
    from cur_ray.domain.aggregation import merge_partials

    fs = pafs.LocalFileSystem()
    parts = []
    for path in paths:
        for unit in plan_work_units(fs, path, path):
            parts.append(aggregate_work_unit(fs, unit).partials)
    merged = merge_partials(parts)
    results: Results = {}
    for row in merged.to_pylist():
        results[key_of(row)] = figures_of(row)
    return results


# ------------------------------------------------------------------------------ report


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds / 1e6:6.2f} M rows/s"


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def machine() -> str:
    """One line describing the machine."""
    memory = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB RAM, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def versions() -> str:
    """Versions of the engines compared."""
    import duckdb
    import pyarrow
    import ray

    return f"ray {ray.__version__}, pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}"


@dataclass
class Report:
    """Lines printed at the end, once every check passed."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str = "") -> None:
        """Append a line."""
        self.lines.append(line)

    def row(self, label: str, timing: Timing, rows: int) -> None:
        """One engine's line."""
        self.add(
            f"  {label:<58} {timing.best:8.2f} s {timing.median:8.2f} s   "
            f"{_rate(rows, timing.best)}"
        )


def check(label: str, reference: Results, other: Results) -> None:
    """Exit with status 1 when ``other`` differs from ``reference``."""
    problems = compare(reference, other)
    if problems:
        print(f"RESULTS DIFFER: {label}", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)


def _dataset(args: argparse.Namespace, root: Path) -> Dataset:
    spec = DatasetSpec(
        rows=args.rows,
        files=args.files,
        csv_rows=args.csv_rows,
        seed=args.seed,
        row_group_mib=args.row_group_mib,
    )
    name = f"cur2-{spec.rows}x{spec.files}-csv{spec.csv_rows}-rg{spec.row_group_mib}-s{spec.seed}"
    return ensure_dataset(root / name, spec, log=lambda m: print(m, flush=True))


def _py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), None
    )


# Categories of a sampled stack: the innermost frame matching one of these names decides.
_CATEGORIES = (
    ("read Parquet/CSV (Arrow decode)", ("iter_batches", "_row_group_batches", "renamed")),
    ("product_name from the map", ("_product_name_codes", "_cur_service_name")),
    ("money to exact integers", ("_amounts", "_ints_from_floats", "_ints_from_decimals")),
    ("amortized / list formulas", ("amortized", "_select", "_add")),
    ("group by packed keys", ("_group", "_measure_sums", "for_sum", "_group_rows")),
    ("merge partials (_regroup)", ("_regroup", "merge_partials")),
    ("DB: file costs insert", ("replace_file_costs",)),
    ("DB: summaries", ("recompute_period_summaries",)),
    ("DB: claim, statuses, jobs", ("claim_files", "mark_done", "still_held", "complete_job")),
    ("Ray: submit/wait/get", ("wait", "get", "remote", "put")),
)


def _category(stack: str) -> str:
    """The category of the innermost frame naming one of :data:`_CATEGORIES`' functions.

    py-spy frames read ``function (path/module.py:line)``; Ray's own frames only count
    under "Ray: …" when they are one of its API calls.
    """
    for frame in reversed(stack.split(";")):
        function, _, where = frame.partition(" (")
        function = function.rsplit(".", 1)[-1]
        for label, names in _CATEGORIES:
            if function in names and (not label.startswith("Ray") or "ray/" in where):
                return label
    return "other (Ray runtime, logging, Python)"


@dataclass
class Profiles:
    """py-spy recordings (``--profile``) of the coordinator and the task workers."""

    out: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, pids: dict[str, int]) -> None:
        """Start one ``py-spy record`` per process (raw collapsed stacks)."""
        binary = _py_spy()
        if binary is None:
            print("py-spy not found: no profile", file=sys.stderr)
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            command = [binary, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
            command += ["--output", str(self.out / f"{name}.txt"), "--nonblocking"]
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.processes.append((name, process))
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> list[str]:
        """Stop recording and summarise where the samples went."""
        for _, process in self.processes:
            process.send_signal(2)
        lines: list[str] = []
        totals: dict[str, dict[str, int]] = {"coordinator": {}, "task workers": {}}
        for name, process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            path = self.out / f"{name}.txt"
            if not path.exists():
                continue
            group = totals["coordinator" if name == "coordinator" else "task workers"]
            for line in path.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if stack and count.isdigit():
                    label = _category(stack)
                    group[label] = group.get(label, 0) + int(count)
        for group_name, counts in totals.items():
            total = sum(counts.values())
            if not total:
                continue
            parts = ", ".join(
                f"{label} {100 * n / total:.0f}%"
                for label, n in sorted(counts.items(), key=lambda kv: -kv[1])
                if n / total >= 0.01
            )
            lines.append(f"  py-spy, {group_name} ({total:,} samples of active threads): {parts}")
        lines.append(f"  (raw stacks in {self.out})")
        return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run every engine, check the results, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--big-file-rows",
        type=int,
        default=0,
        help="also aggregate one Parquet file of this many rows (memory)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of (a), (b) and CSV.gz")
    parser.add_argument("--repeat-other", type=int, default=2, help="runs of (c) and (d)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--row-group-mib", type=int, default=128)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "cur_ray_bench"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: a fresh SQLite file; or postgresql+psycopg://…",
    )
    parser.add_argument("--skip", default="", help="comma list of parts to skip: c, d, csv")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record py-spy profiles of the coordinator and the task workers here "
        "(last run of (a)) and print where the samples went",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write figures as JSON")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    skip = set(filter(None, args.skip.split(",")))

    load_at_start = os.getloadavg()[0]
    dataset = _dataset(args, args.data_dir)
    parquet = [f.path for f in dataset.parquet]
    csv = [] if "csv" in skip else [f.path for f in dataset.csv]
    rows = sum(f.rows for f in dataset.parquet)
    size = sum(f.size_bytes for f in dataset.parquet)
    big = None
    if args.big_file_rows:
        spec = DatasetSpec(
            rows=args.big_file_rows,
            files=1,
            csv_rows=0,
            seed=args.seed + 1,
            row_group_mib=args.row_group_mib,
        )
        big = ensure_dataset(
            args.data_dir / f"big-{args.big_file_rows}", spec, log=lambda m: print(m, flush=True)
        )
    warmup = ensure_dataset(
        args.data_dir / "warmup",
        DatasetSpec(rows=20_000, files=2, csv_rows=2_000, seed=7),
        log=lambda m: print(m, flush=True),
    )

    warm_files = [f.path for f in (*warmup.parquet, *warmup.csv)]

    def rewarm(project: str) -> None:
        """Warm new task workers, then run a small job twice and let the worker pool settle.

        (Ray starts workers on demand and stops idle ones beyond one per CPU after a second:
        a measured job must find exactly the warmed ones.)
        """
        warm_workers(args.cpus, warm_files, batch.env)
        for _ in range(2):
            batch.requeue(project)
            batch.aggregate(project)
        time.sleep(1.5)

    work = Path(tempfile.mkdtemp(prefix="cur_ray_bench_"))
    figures: dict[str, Any] = {"rows": rows, "files": len(parquet), "machine": machine()}
    report = Report()
    memory = RayProcesses()
    batch = BatchB(work, args.cpus, args.database_url)
    try:
        print("starting Ray and the coordinator…", flush=True)
        batch.start()
        batch.add_project("bench-parquet", dataset.parquet_bucket)
        if csv:
            batch.add_project("bench-csv", dataset.csv_bucket)
        if big is not None:
            batch.add_project("bench-big", big.parquet_bucket)
        batch.add_project("warmup", warmup.parquet_bucket)
        batch.add_project("warmup-csv", warmup.csv_bucket)
        batch.aggregate("warmup-csv")  # (every format's code path runs once)
        rewarm("warmup")

        # (a) Batch B through the coordinator and (b) DuckDB, run in turns: on a shared
        # machine both then see the same background load. DuckDB's first (untimed) run
        # gives the results to compare and warms the page cache for everyone.
        print(f"(a) Batch B and (b) DuckDB on {rows:,} rows, {args.repeat} runs each…", flush=True)
        results_b, again = duckdb_aggregate(parquet, threads=args.cpus)
        timing_a, timing_b = Timing(), Timing()
        jobs = []
        for attempt in range(args.repeat):
            if attempt:
                batch.requeue("bench-parquet")
            memory.start()
            job = batch.aggregate("bench-parquet")
            memory.stop()
            if job["done"] != len(parquet) or job["failedCount"] or job["rowsRead"] != rows:
                print(f"Batch B did not process every file: {job}", file=sys.stderr)
                return 1
            timing_a.seconds.append(job["wall"])
            jobs.append(job)
            started = time.perf_counter()
            again()
            timing_b.seconds.append(time.perf_counter() - started)
        results_a = batch.results("bench-parquet")
        check("(a) Batch B vs (b) DuckDB", results_a, results_b)
        worker_kib = memory.task_worker_kib()
        worker_private_kib = memory.task_worker_private_kib()
        coordinator_kib = memory.coordinator_kib()
        profile_lines: list[str] = []
        if args.profile:  # one more run under py-spy, not timed
            batch.requeue("bench-parquet")
            profiles = Profiles(args.profile)
            profiles.start(
                {
                    ("coordinator" if "Coordinator" in _title(p) else f"worker-{p.pid}"): p.pid
                    for p in RayProcesses.workers()
                }
            )
            batch.aggregate("bench-parquet")
            profile_lines = profiles.stop()

        # (c) plain pyarrow, (d) cur_ray in this process.
        timing_c = timing_d = None
        if "c" not in skip:
            print("(c) plain pyarrow…", flush=True)
            timing_c, results_c = timed(lambda: pyarrow_aggregate(parquet), args.repeat_other)
            check("(a) Batch B vs (c) plain pyarrow", results_a, results_c)
        if "d" not in skip:
            print("(d) cur_ray in-process…", flush=True)
            timing_d, results_d = timed(lambda: in_process(parquet), args.repeat_other)
            check("(a) Batch B vs (d) cur_ray in-process", results_a, results_d)

        # CSV.gz: Batch B and DuckDB's read_csv on the same file.
        csv_rows = sum(f.rows for f in dataset.csv)
        timing_csv_a = timing_csv_b = None
        csv_worker_kib = 0
        if csv:
            print(f"CSV.gz: Batch B and DuckDB read_csv on {csv_rows:,} rows…", flush=True)
            memory.restart_task_workers(lambda: rewarm("warmup-csv"))
            timing_csv_a = Timing()
            for attempt in range(args.repeat):
                if attempt:
                    batch.requeue("bench-csv")
                memory.start()
                job = batch.aggregate("bench-csv")
                memory.stop()
                csv_worker_kib = max(csv_worker_kib, max(memory.task_worker_kib(), default=0))
                if job["done"] != len(csv) or job["rowsRead"] != csv_rows:
                    print(f"Batch B did not process the CSV file: {job}", file=sys.stderr)
                    return 1
                timing_csv_a.seconds.append(job["wall"])
            csv_b, again_csv = duckdb_aggregate(csv, csv=True, threads=args.cpus)
            timing_csv_b, _ = timed(again_csv, args.repeat)
            check("CSV.gz: (a) Batch B vs (b) DuckDB read_csv", batch.results("bench-csv"), csv_b)

        big_job = None
        big_worker_kib: list[int] = []
        big_private_kib = 0
        if big is not None:
            print(f"one file of {args.big_file_rows:,} rows (memory)…", flush=True)
            memory.restart_task_workers(lambda: rewarm("warmup"))
            memory.start()
            big_job = batch.aggregate("bench-big")
            memory.stop()
            big_worker_kib = memory.task_worker_kib()
            big_private_kib = memory.task_worker_private_kib()
            if big_job["done"] != 1 or big_job["rowsRead"] != args.big_file_rows:
                print(f"Batch B did not process the big file: {big_job}", file=sys.stderr)
                return 1
    finally:
        batch.stop()
        shutil.rmtree(work, ignore_errors=True)

    compared = "(a) = (b)" + (" = (c)" if timing_c else "") + (" = (d)" if timing_d else "")
    report.add(f"cur_ray benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    report.add(f"machine: {machine()}")
    report.add(
        f"load average (1 min) at start {load_at_start:.1f}, at end {os.getloadavg()[0]:.1f} "
        "(other work on the machine slows every engine; (a) and (b) run in turns)"
    )
    report.add(
        f"engines: {versions()}; Ray with {args.cpus} CPUs; database "
        f"{'SQLite' if not args.database_url else args.database_url.split(':')[0]}"
    )
    report.add(
        f"data: {rows:,} CUR 2.0 rows in {len(parquet)} Parquet files "
        f"({size / 2**20:,.0f} MiB, {sum(f.row_groups for f in dataset.parquet)} row groups, "
        f"{dataset.parquet[0].row_groups} per file)"
    )
    report.add(
        f"results checked equal: {compared} on {len(results_a):,} output rows "
        "(every measure within 1e-8, line items and service names exact)"
    )
    report.add()
    report.add(f"  {'engine':<58} {'best':>10} {'median':>10}   rows/s (best)")
    report.row("(a) Batch B via the coordinator on Ray (end to end)", timing_a, rows)
    report.row("(b) DuckDB, same measures", timing_b, rows)
    if timing_c:
        report.row("(c) plain pyarrow, single process", timing_c, rows)
    if timing_d:
        report.row("(d) cur_ray aggregation in one process (no Ray, no DB)", timing_d, rows)
    ratio = timing_a.best / timing_b.best
    median_ratio = timing_a.median / timing_b.median
    pairs = [a / b for a, b in zip(timing_a.seconds, timing_b.seconds, strict=True)]
    report.add(
        f"  ratio (a)/(b): {ratio:.2f} best/best, {median_ratio:.2f} median/median, "
        f"{statistics.median(pairs):.2f} median of the {len(pairs)} back-to-back pairs "
        "(goal <= 1.0, limit 1.5)"
    )
    inside = [j["durationSeconds"] for j in jobs]
    report.add(
        f"  (a) inside the job (claim to last write): best {min(inside):.2f} s; "
        f"rest is queueing, status writes and polling"
    )
    report.add(
        f"  peak RSS (VmHWM, (a) runs): task workers "
        f"{', '.join(_mib(k) for k in worker_kib[:4])}{' …' if len(worker_kib) > 4 else ''} "
        f"(private memory at most {_mib(worker_private_kib)}); coordinator {_mib(coordinator_kib)}"
    )

    for line in profile_lines:
        report.add(line)
    if timing_csv_a and timing_csv_b:
        report.add()
        report.add(
            f"  CSV.gz, 1 file of {csv_rows:,} rows "
            f"({sum(f.size_bytes for f in dataset.csv) / 2**20:,.0f} MiB):"
        )
        report.row("(a) Batch B via the coordinator", timing_csv_a, csv_rows)
        report.row("(b) DuckDB read_csv, same measures", timing_csv_b, csv_rows)
        report.add(
            f"  ratio (a)/(b) CSV.gz: {timing_csv_a.best / timing_csv_b.best:.2f} best/best, "
            f"{timing_csv_a.median / timing_csv_b.median:.2f} median/median; peak RSS of the "
            f"task worker {_mib(csv_worker_kib)}"
        )
    if big_job is not None and big is not None:
        report.add()
        report.add(
            f"  one file of {args.big_file_rows:,} rows ({big.parquet[0].size_bytes / 2**20:,.0f}"
            f" MiB, {big.parquet[0].row_groups} row groups): Batch B {big_job['wall']:.2f} s "
            f"({_rate(args.big_file_rows, big_job['wall'])}); peak RSS of any task worker "
            f"{_mib(max(big_worker_kib, default=0))} (limit 1024 MiB; private memory at most "
            f"{_mib(big_private_kib)})"
        )

    print()
    print("\n".join(report.lines))
    figures.update(
        a=timing_a.seconds,
        b=timing_b.seconds,
        c=timing_c.seconds if timing_c else None,
        d=timing_d.seconds if timing_d else None,
        ratio=ratio,
        pair_ratios=pairs,
        worker_peak_kib=worker_kib,
        coordinator_peak_kib=coordinator_kib,
        csv_a=timing_csv_a.seconds if timing_csv_a else None,
        csv_b=timing_csv_b.seconds if timing_csv_b else None,
        big_worker_peak_kib=big_worker_kib,
        output_rows=len(results_a),
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Figures", "main"]
