"""Client side of the Ray runtime: connect to the cluster and run jobs on its coordinator.

Used by the CLI, notebooks and ``ray job submit`` entrypoints alike.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from cur_ray.entrypoints.coordinator import get_coordinator
from cur_ray.entrypoints.singletons import NAMESPACE
from cur_ray.settings import Settings

FINISHED = ("completed", "failed")
# Settings a local Ray's processes must see exactly as this process does.
_FORWARDED_PREFIXES = ("CUR_", "AWS_", "DATABASE_URL", "LOG_LEVEL")


def _absolute_sqlite(url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + os.path.abspath(url[len(prefix) :])
    return url


def connect(settings: Settings) -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a local Ray when it is unset."""
    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, log_to_driver=False)
        return
    # A local Ray's workers inherit this environment: make the database path absolute and
    # pass the settings read from .env along, so the coordinator sees the same database.
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}
    env["DATABASE_URL"] = _absolute_sqlite(settings.database_url)
    os.environ["DATABASE_URL"] = env["DATABASE_URL"]
    if settings.cur_secrets_key is not None:
        env["CUR_SECRETS_KEY"] = settings.cur_secrets_key.get_secret_value()
    ray.init(
        address="local",
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )


def submit_job(
    name: str,
    project_id: str | None,
    *,
    trigger: str = "cli",
    data: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Enqueue a job on the coordinator (idempotent: the job id is chosen here)."""
    coordinator = get_coordinator()
    job_id = job_id or str(uuid.uuid4())
    return dict(
        ray.get(coordinator.submit.remote(name, project_id, trigger, data=data, job_id=job_id))
    )


def wait_for_job(
    job_id: str,
    *,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll the coordinator until the job is completed or failed; return the final record."""
    coordinator = get_coordinator()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = dict(ray.get(coordinator.job.remote(job_id)))
        if on_update:
            on_update(job)
        if job["status"] in FINISHED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(poll_seconds)


def notify_coordinator() -> None:
    """Make sure the coordinator runs and looks at the queue now."""
    ray.get(get_coordinator().notify.remote())
