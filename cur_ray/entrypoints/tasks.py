"""Ray remote tasks and the runners that spread the batches' work over a cluster.

Tasks are module-level ``@ray.remote`` functions doing pure storage I/O and Arrow compute:
they never touch the database. The coordinator owns state; it submits tasks with a bounded
number in flight and merges their small results in completion order (``ray.wait``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import RayError

from cur_ray.adapters.db.claims import ClaimedFile
from cur_ray.adapters.readers import WorkUnit, plan_work_units
from cur_ray.adapters.storage import FileSystemSpec, object_store_from_spec, open_filesystem
from cur_ray.domain.aggregation import merge_partials
from cur_ray.domain.projects import StorageLocation
from cur_ray.entrypoints.metrics import metrics
from cur_ray.errors import CurRayError
from cur_ray.logs import configure_logging, log_context
from cur_ray.services.cur_aggregate import FileOutcome, RetryPolicy, UnitsRead, read_units
from cur_ray.services.cur_fetch import PlanRequest, ProjectListing, list_and_plan

log = logging.getLogger(__name__)

# A task should do real work (~100 ms or more): row groups are grouped up to this many rows.
TARGET_ROWS_PER_TASK = 1_000_000
# Worker or node death: Ray re-runs the task this many times. Transient storage errors are
# retried inside the task with backoff (RetryPolicy), so Ray does not retry exceptions.
TASK_MAX_RETRIES = 3


@dataclass
class UnitsResult(UnitsRead):
    """What one aggregation task returns: small partial aggregates, never raw rows."""

    key: str = ""
    node_id: str | None = None  # the Ray node the task ran on (hex), for placement checks


def _task_logging(fields: dict[str, Any]) -> Any:
    configure_logging()
    return log_context(**fields)


@ray.remote(max_retries=TASK_MAX_RETRIES)
def plan_units_task(
    spec: FileSystemSpec, key: str, target_rows: int, policy: RetryPolicy
) -> list[WorkUnit] | CurRayError:
    """Read a Parquet footer and group its row groups into work units."""
    with _task_logging({"objectKey": key}):
        try:
            fs = open_filesystem(spec)
            return policy.retrying()(
                plan_work_units, fs, spec.path_for(key), key, target_rows=target_rows
            )
        except CurRayError as exc:
            return exc


@ray.remote(max_retries=TASK_MAX_RETRIES)
def aggregate_units_task(
    spec: FileSystemSpec, units: Sequence[WorkUnit], policy: RetryPolicy, context: dict[str, Any]
) -> UnitsResult:
    """Read and aggregate some work units of one file; errors come back as values."""
    key = units[0].key
    with _task_logging({**context, "objectKey": key}):
        read = read_units(spec, units, policy)
    return UnitsResult(**vars(read), key=key, node_id=ray.get_runtime_context().get_node_id())


@ray.remote(max_retries=TASK_MAX_RETRIES)
def list_project_task(
    location: StorageLocation, spec: FileSystemSpec, context: dict[str, Any]
) -> ProjectListing | CurRayError:
    """Batch A's listing and planning of one project, next to the data."""
    with _task_logging(context):
        try:
            return list_and_plan(object_store_from_spec(location, spec))
        except CurRayError as exc:
            return exc


def default_in_flight() -> int:
    """Twice the cluster's CPUs, within [2, 64] (RAY-NOTES: bound what is in flight)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2, min(64, 2 * cpus))


def _failure(exc: BaseException) -> str:
    if isinstance(exc, CurRayError):
        return exc.message
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CurRayError):
        return cause.message
    return f"task failed: {type(exc).__name__}"


def plan_with_ray(
    requests: Sequence[PlanRequest],
) -> Iterator[tuple[str, ProjectListing | BaseException]]:
    """Batch A planner: one listing task per project, collected as they finish."""
    refs = {
        list_project_task.remote(c.location, spec, {"projectId": c.project_id}): c.project_id
        for c, spec in requests
    }
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        project_id = refs.pop(ready[0])
        try:
            yield project_id, ray.get(ready[0])
        except RayError as exc:
            yield project_id, CurRayError(_failure(exc))


@dataclass
class _FileState:
    """The coordinator-side progress of one file."""

    file: ClaimedFile
    planned: bool = False
    pending_tasks: int = 0
    partials: list[pa.Table] = field(default_factory=list)
    rows_read: int = 0
    bytes_read: int = 0
    source_format: str | None = None
    outcome: FileOutcome | None = None
    first_submitted: float | None = None  # monotonic time of its first task

    def fail(self, message: str) -> None:
        self.outcome = FileOutcome(file=self.file, error=message)

    def add(self, result: UnitsResult) -> None:
        self.pending_tasks -= 1
        if result.error is not None or result.partials is None:
            self.fail(result.error or "no result")
            return
        self.partials.append(result.partials)
        self.rows_read += result.rows_read
        self.bytes_read += result.bytes_read
        self.source_format = result.source_format
        try:
            if len(self.partials) >= 8:  # keep the merge state small, whatever the file size
                self.partials = [merge_partials(self.partials)]
            if self.pending_tasks == 0:
                self.outcome = FileOutcome(
                    file=self.file,
                    partials=merge_partials(self.partials),
                    rows_read=self.rows_read,
                    bytes_read=self.bytes_read,
                    source_format=self.source_format,
                )
        except CurRayError as exc:  # e.g. units whose sums together reach 1e20
            self.fail(exc.message)


Submit = Callable[[], Any]


class RayFileRunner:
    """Batch B runner: files → row-group units → Ray tasks, merged in completion order.

    ``nodes_seen`` collects the ids of the Ray nodes its aggregation tasks ran on, over all
    of its calls; each call logs them once it is done ("row-group tasks finished").
    """

    def __init__(
        self, *, max_in_flight: int | None = None, target_rows: int = TARGET_ROWS_PER_TASK
    ) -> None:
        self.max_in_flight = max_in_flight
        self.target_rows = target_rows
        self.nodes_seen: set[str] = set()

    def __call__(
        self,
        spec: FileSystemSpec,
        files: Sequence[ClaimedFile],
        policy: RetryPolicy,
        on_progress: Callable[[], None],
    ) -> Iterator[FileOutcome]:
        """Yield one outcome per file as soon as all of its units are merged."""
        limit = self.max_in_flight or default_in_flight()
        spec_ref = ray.put(spec)
        states = {f.id: _FileState(f) for f in files}
        # Work not yet submitted: (file id, kind, submitter); plans first, then units.
        queue: list[tuple[int, str, Submit]] = [
            (state.file.id, "plan", self._plan_submitter(spec, spec_ref, state, policy))
            for state in states.values()
        ]
        in_flight: dict[Any, tuple[int, str]] = {}
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                file_id, kind, submit = queue.pop(0)
                in_flight[submit()] = (file_id, kind)
                if states[file_id].first_submitted is None:
                    states[file_id].first_submitted = time.monotonic()
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            file_id, kind = in_flight.pop(ready[0])
            state = states[file_id]
            try:
                value = ray.get(ready[0])
            except RayError as exc:
                value = CurRayError(_failure(exc))
            if isinstance(value, UnitsResult) and value.node_id is not None:
                self.nodes_seen.add(value.node_id)
            if state.outcome is not None:
                continue  # the file already failed: ignore the rest of its results
            if isinstance(value, CurRayError):
                state.fail(value.message)
            elif kind == "plan":
                state.planned = True
                context = {"projectId": state.file.project_id, "fileId": state.file.id}
                for unit in value:
                    state.pending_tasks += 1
                    queue.append(
                        (file_id, "units", self._units_submitter(spec_ref, unit, policy, context))
                    )
            else:
                state.add(value)
            if state.outcome is not None:
                queue = [item for item in queue if item[0] != file_id]
                state.partials = []
                if state.outcome.error is None and state.first_submitted is not None:
                    metrics().file_processed(time.monotonic() - state.first_submitted)
                on_progress()
                yield state.outcome
        log.info(
            "row-group tasks finished",
            extra={"files": len(files), "nodes": sorted(self.nodes_seen)},
        )

    def _plan_submitter(
        self, spec: FileSystemSpec, spec_ref: Any, state: _FileState, policy: RetryPolicy
    ) -> Submit:
        key = state.file.object_key
        if key.endswith(".parquet"):
            return lambda: plan_units_task.remote(spec_ref, key, self.target_rows, policy)
        # A CSV file is one streamed unit: nothing to read to plan it.
        units = [WorkUnit(path=spec.path_for(key), key=key)]
        return lambda: ray.put(units)

    @staticmethod
    def _units_submitter(
        spec_ref: Any, unit: WorkUnit, policy: RetryPolicy, context: dict[str, Any]
    ) -> Submit:
        return lambda: aggregate_units_task.remote(spec_ref, [unit], policy, context)
