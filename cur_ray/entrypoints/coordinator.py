"""The coordinator: one named, detached, restartable actor per Ray cluster.

It takes jobs from ``finops_batch_jobs`` (the durable queue), runs several at once (at most
one per project), spreads their work over Ray tasks and records outcomes. It keeps no state
that the database does not also have: after a restart it re-queues the jobs and releases the
file claims its previous incarnation held, and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from cur_ray.adapters.db import claims
from cur_ray.adapters.db import jobs as job_store
from cur_ray.entrypoints.metrics import metrics
from cur_ray.entrypoints.singletons import code_version, get_singleton
from cur_ray.entrypoints.tasks import RayFileRunner, plan_with_ray
from cur_ray.logs import configure_logging, log_context
from cur_ray.services import files as files_service
from cur_ray.services import jobs as jobs_service
from cur_ray.services.context import AppContext
from cur_ray.settings import load_settings

log = logging.getLogger(__name__)

COORDINATOR_NAME = "cur_ray_coordinator"
GLOBAL_KEY = "*"


@dataclass
class JobProgress:
    """Files done of files claimed, for progress bars."""

    total: int | None = None
    done: int = 0
    project_key: str = GLOBAL_KEY
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"total": self.total, "done": self.done}


class Coordinator:
    """Runs queued jobs on the cluster. Get it with :func:`get_coordinator`."""

    def __init__(self, max_concurrent_jobs: int = 4, poll_seconds: float = 2.0) -> None:
        settings = load_settings()
        configure_logging(settings.log_level)
        self._ctx = AppContext.from_settings(settings)
        # The actor id survives restarts, so a restarted coordinator recognises its claims.
        self._worker_id = f"coordinator:{ray.get_runtime_context().get_actor_id()}"
        self._lease = dt.timedelta(seconds=settings.cur_lease_seconds)
        self._max_jobs = max_concurrent_jobs
        self._poll_seconds = poll_seconds
        self._running: dict[str, JobProgress] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._recover()
        self._loop = asyncio.get_running_loop().create_task(self._run_forever())

    # ----------------------------------------------------------------- public methods
    async def version(self) -> str:
        """The code version this instance runs."""
        return code_version()

    async def submit(
        self,
        name: str,
        project_id: str | None,
        trigger: str,
        data: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """Enqueue a job (idempotent for a given ``job_id``) and wake the loop."""

        def enqueue() -> jobs_service.JobView:
            with self._ctx.db.transaction() as session:
                view, _created = jobs_service.enqueue_job(
                    session,
                    name=name,
                    project_id=project_id,
                    trigger=trigger,
                    data=data,
                    job_id=job_id,
                )
                return view

        view = await asyncio.to_thread(enqueue)
        self._wake.set()
        return view.as_dict()

    async def notify(self) -> None:
        """Something was enqueued elsewhere (HTTP API, scheduler): look at the queue now."""
        self._wake.set()

    async def job(self, job_id: str) -> dict[str, Any]:
        """The stored job with live progress while it runs."""

        def read() -> jobs_service.JobView:
            with self._ctx.db.transaction() as session:
                return jobs_service.get_job(session, job_id)

        view = (await asyncio.to_thread(read)).as_dict()
        progress = self._running.get(job_id)
        view["progress"] = progress.as_dict() if progress else None
        return view

    async def status(self) -> dict[str, Any]:
        """What this coordinator is doing (for health checks and tests)."""
        return {
            "workerId": self._worker_id,
            # The Ray worker process of this incarnation: the WorkerId tag of its metrics.
            "rayWorkerId": ray.get_runtime_context().get_worker_id(),
            "version": code_version(),
            "running": {job_id: p.as_dict() for job_id, p in self._running.items()},
        }

    # ------------------------------------------------------------------------ the loop
    def _recover(self) -> None:
        """Hand back what a previous incarnation of this actor held when it died."""
        with self._ctx.db.transaction() as session:
            jobs = job_store.requeue_jobs_held_by(session, self._worker_id)
            files = claims.release_claims_by_prefix(session, f"{self._worker_id}/")
        if jobs or files:
            log.warning("recovered after a restart", extra={"jobs": jobs, "files": files})

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._start_jobs()
                await asyncio.to_thread(self._publish_queue_state)
            except Exception:  # the loop must survive a database outage
                log.exception("coordinator loop error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_seconds)
            self._wake.clear()

    def _publish_queue_state(self) -> None:
        with self._ctx.db.transaction() as session:
            waiting = jobs_service.queue_stats(session).get("waiting", 0)
            files = files_service.count_by_status(session)
        metrics().queue_state(waiting, files)

    async def _start_jobs(self) -> None:
        while len(self._running) < self._max_jobs:
            busy = {p.project_key for p in self._running.values()}
            job = await asyncio.to_thread(
                jobs_service.claim_job,
                self._ctx,
                self._worker_id,
                self._lease,
                busy_projects=busy,
            )
            if job is None:
                return
            progress = JobProgress(project_key=job.project_id or GLOBAL_KEY)
            self._running[job.job_id] = progress
            task = asyncio.get_running_loop().create_task(self._execute(job, progress))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, job: jobs_service.JobView, progress: JobProgress) -> None:
        def claimed(count: int) -> None:
            progress.total = count

        def advanced() -> None:
            progress.done += 1

        started = time.monotonic()
        try:
            with log_context(jobId=job.job_id, projectId=job.project_id):
                final = await asyncio.to_thread(
                    jobs_service.run_claimed_job,
                    self._ctx,
                    job,
                    self._worker_id,
                    self._lease,
                    runner=RayFileRunner(),
                    planner=plan_with_ray,
                    worker_id=f"{self._worker_id}/{job.job_id}",
                    on_claimed=claimed,
                    on_progress=advanced,
                )
            outcome = "retried" if final.status == jobs_service.WAITING else final.status
            metrics().job_finished(
                job.name, outcome, time.monotonic() - started, final.result or {}
            )
        except Exception:
            log.exception("job could not be recorded", extra={"jobId": job.job_id})
        finally:
            self._running.pop(job.job_id, None)
            self._wake.set()


CoordinatorActor: Any = ray.remote(Coordinator)


def get_coordinator(env: Mapping[str, str] | None = None) -> Any:
    """The cluster's coordinator, created if absent and replaced if it runs other code."""
    return get_singleton(CoordinatorActor, COORDINATOR_NAME, env)


class CoordinatorNotifier:
    """Wakes the cluster's coordinator after a job is enqueued (HTTP API, scheduler).

    The handle is resolved lazily and once more after the actor died (RAY-NOTES); ``notify``
    awaits the call instead of blocking the caller's event loop.
    """

    def __init__(self) -> None:
        self._handle: Any = None

    async def notify(self) -> None:
        """Tell the coordinator to look at the queue now."""
        for attempt in (1, 2):
            try:
                if self._handle is None:
                    self._handle = await asyncio.to_thread(get_coordinator)
                await self._handle.notify.remote()
                return
            except RayActorError:
                self._handle = None
                if attempt == 2:
                    raise
