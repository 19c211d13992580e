"""Ray clusters of their own for the fault tests (helper of ``test_faults.py``).

Run in a process of its own (one process can join only one Ray cluster)::

    python tests/integration/fault_cluster.py coordinator '{...}'
    python tests/integration/fault_cluster.py remove-node '{...}'

``coordinator``: starts a local one-CPU Ray (``ray.init(address="local", num_cpus=1)``),
creates this cluster's coordinator with :func:`get_coordinator` (config ``coordinatorEnv``:
its environment, with the shared ``DATABASE_URL``), prints
``{"event": "ready", "workerId": ...}`` and lets it work on the shared queue until the file
``stopFile`` appears (or ``timeoutSeconds`` pass: it stops by itself). It then checks the
coordinator runs nothing, kills it, shuts Ray down and prints
``{"event": "stopped", "running": {...}, "timedOut": bool}``.

``remove-node``: a head node without CPUs and two one-CPU worker nodes
(``ray.cluster_utils.Cluster``), the coordinator, a cur-fetch job of ``projectId``, then a
cur-aggregate job; while the aggregate job's row-group tasks run, the worker node that does
not host the coordinator is removed (``allow_graceful=False``) at a moment when one of its
worker processes is executing a task. Prints one JSON summary: the jobs, the removed node,
the tasks it was running, the nodes tasks ran on, timings.

Output is JSON lines on stdout. Environment (set by the test before Ray is imported):
``RAY_TMPDIR`` a short private folder, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so that Ray
resolves "this node" to 127.0.0.1 and every server listens on the loopback interface only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import psutil
import ray  # imported after the environment above is set
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cur_ray.entrypoints.coordinator import get_coordinator
from cur_ray.entrypoints.singletons import NAMESPACE
from cur_ray.services import jobs as jobs_service
from cur_ray.services.context import AppContext
from cur_ray.settings import Settings

LOOPBACK = "127.0.0.1"
FINISHED = ("completed", "failed")
TASK_TITLES = ("ray::aggregate_units_task", "ray::plan_units_task")
# Detect a dead node in about a second instead of the default ~15 s of missed health checks.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}


def emit(**fields: Any) -> None:
    """One JSON line on stdout, flushed at once (the test polls the file)."""
    print(json.dumps(fields, default=str), flush=True)


# ------------------------------------------------------------------------------ coordinator
def run_coordinator(config: dict[str, Any]) -> int:
    """One local Ray cluster with its coordinator, working until told to stop."""
    started = time.monotonic()
    stop_file = Path(config["stopFile"])
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        namespace=NAMESPACE,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        _node_ip_address=LOOPBACK,
    )
    timed_out = False
    running: dict[str, Any] = {}
    try:
        coordinator = get_coordinator(config["coordinatorEnv"])
        status = ray.get(coordinator.status.remote())
        emit(
            event="ready",
            workerId=status["workerId"],
            nodeId=ray.get_runtime_context().get_node_id(),
            seconds=round(time.monotonic() - started, 2),
        )
        deadline = time.monotonic() + float(config["timeoutSeconds"])
        while not stop_file.exists():
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
        running = ray.get(coordinator.status.remote(), timeout=30)["running"]
        ray.kill(coordinator, no_restart=True)
    finally:
        ray.shutdown()
    emit(event="stopped", running=running, timedOut=timed_out)
    return 0 if not timed_out else 3


# ------------------------------------------------------------------------------ remove-node
@ray.remote(num_cpus=1)
def _warm_up() -> str:
    """Import the task code in a worker of this node (with the coordinator's runtime env)."""
    import cur_ray.entrypoints.tasks  # noqa: F401

    return str(ray.get_runtime_context().get_node_id())


def _enqueue(ctx: AppContext, name: str, project_id: str) -> str:
    with ctx.db.transaction() as session:
        view, _ = jobs_service.enqueue_job(session, name=name, project_id=project_id, trigger="cli")
    return view.job_id


def _wait(coordinator: Any, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = ray.get(coordinator.job.remote(job_id))
        if job["status"] in FINISHED:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s: {job}")


def _running_tasks(raylet_pid: int) -> list[str]:
    """The titles of the task-executing workers under one raylet."""
    titles = []
    try:
        children = psutil.Process(raylet_pid).children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        titles.extend(t for t in TASK_TITLES if title.startswith(t))
    return titles


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def _logged_task_nodes(logs_dir: Path, job_id: str) -> list[str]:
    """Nodes the job's runner logged ("row-group tasks finished") in the worker logs."""
    nodes: set[str] = set()
    for path in sorted(logs_dir.glob("worker-*")):
        for line in path.read_text(errors="replace").splitlines():
            if "row-group tasks finished" not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("jobId") == job_id:
                nodes.update(record.get("nodes") or [])
    return sorted(nodes)


def run_remove_node(config: dict[str, Any]) -> int:
    """Remove a worker node while the aggregate job's tasks run on it; report what happened."""
    started = time.monotonic()
    env = config["coordinatorEnv"]
    ctx = AppContext.from_settings(
        Settings(database_url=env["DATABASE_URL"], cur_secrets_key=env["CUR_SECRETS_KEY"])  # type: ignore[arg-type]
    )
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "node_ip_address": LOOPBACK,
            "include_dashboard": False,
            "dashboard_agent_listen_port": None,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        coordinator = get_coordinator(env)
        actor_id = ray.get(coordinator.status.remote())["workerId"].split(":", 1)[1]
        coordinator_node = ray._private.state.actors(actor_id)["Address"]["NodeID"]
        ray.get(
            [
                _warm_up.options(
                    runtime_env={"env_vars": env},
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                ).remote()
                for node in cluster.worker_nodes
            ]
        )
        victim = next(n for n in cluster.worker_nodes if n.node_id != coordinator_node)
        survivor = next(n for n in cluster.worker_nodes if n is not victim)
        victim_id, victim_raylet = victim.node_id, _raylet_pid(victim)
        up = time.monotonic() - started

        fetch = _wait(coordinator, _enqueue(ctx, "cur-fetch", config["projectId"]), 60)
        if fetch["status"] != "completed":
            emit(event="failed", fetch=fetch)
            return 1
        aggregate_id = _enqueue(ctx, "cur-aggregate", config["projectId"])
        ray.get(coordinator.notify.remote())
        # Wait until a file is merged (the job is well under way) and a task is executing on
        # the victim right now.
        deadline = time.monotonic() + 60
        running_at_removal: list[str] = []
        job: dict[str, Any] = {}
        progress: dict[str, Any] | None = None
        seen_on_victim = 0
        while time.monotonic() < deadline:
            job = ray.get(coordinator.job.remote(aggregate_id))
            progress = job.get("progress")
            if job["status"] in FINISHED:
                break
            running_at_removal = _running_tasks(victim_raylet)
            seen_on_victim += bool(running_at_removal)
            if progress and progress["done"] >= 1 and running_at_removal:
                break
            time.sleep(0.002)
        if not running_at_removal or job["status"] in FINISHED:
            emit(
                event="failed",
                reason="no task seen running on the victim node while the job ran",
                job=job,
                polls_with_a_victim_task=seen_on_victim,
            )
            return 1
        removed_at = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        removal_seconds = time.monotonic() - removed_at
        aggregate = _wait(coordinator, aggregate_id, config["timeoutSeconds"])
        finished = time.monotonic() - removed_at
        emit(
            event="summary",
            headNode=cluster.head_node.node_id,
            coordinatorNode=coordinator_node,
            removedNode=victim_id,
            survivorNode=survivor.node_id,
            runningOnRemovedNode=running_at_removal,
            progressAtRemoval=progress,
            jobs={"fetch": fetch, "aggregate": aggregate},
            taskNodes=_logged_task_nodes(Path(cluster.head_node.get_logs_dir_path()), aggregate_id),
            seconds={
                "clusterUp": round(up, 2),
                "removeNode": round(removal_seconds, 2),
                "removalToCompletion": round(finished, 2),
            },
        )
        ray.kill(coordinator, no_restart=True)
        return 0
    finally:
        ctx.close()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    command, raw = sys.argv[1], sys.argv[2]
    runners = {"coordinator": run_coordinator, "remove-node": run_remove_node}
    sys.exit(runners[command](json.loads(raw)))
