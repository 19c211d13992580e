"""Both batches on a three-node Ray cluster on this machine (helper of test_ray_cluster.py).

Run in a process of its own (one process can join only one Ray cluster)::

    python tests/integration/multinode_job.py '{"databaseUrl": ..., "projectId": ...,
        "coordinatorEnv": {...}, "timeoutSeconds": 120}'

The database must be migrated and hold the project already. The script starts a head node
holding no CPU (``ray.cluster_utils.Cluster``), creates the coordinator there with
:func:`get_coordinator`, adds two worker nodes of one CPU each and starts a worker process
on each, enqueues a cur-fetch and a cur-aggregate job, wakes the coordinator, waits for both
jobs and prints one JSON object on stdout:
``{"headNode", "workerNodes", "jobs": {"fetch", "aggregate"}, "taskNodes", "seconds"}``.

``taskNodes`` are the nodes the aggregate job's row-group tasks ran on, as its
``RayFileRunner`` logged them ("row-group tasks finished", with the job id) in the
coordinator's log file. The state API (``ray.util.state.list_tasks``) would need the
dashboard, which this cluster does not start.

Environment (set before Ray is imported): ``RAY_TMPDIR`` should name a short, private
folder, so that this cluster's sockets and ``ray_current_cluster`` file stay out of
``/tmp/ray``; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray resolve "this node" to
127.0.0.1, so every server listens on the loopback interface only.
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
NODES_MESSAGE = "row-group tasks finished"


def start_head() -> Cluster:
    """A head node without CPUs: no task can run there."""
    return Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "node_ip_address": LOOPBACK,
            "include_dashboard": False,
            # Any free port: the default 52365 clashes with other clusters on this machine.
            "dashboard_agent_listen_port": None,
            # Cluster-wide: a submitter returns a worker's lease after every task instead of
            # reusing it for up to 500 ms, so each task is placed by the scheduler (as Ray's
            # own load-balancing tests do). Otherwise one leased worker may run all of this
            # small export's tasks back to back before a second node is leased.
            "_system_config": {"worker_lease_timeout_milliseconds": 0},
        },
    )


def add_workers(cluster: Cluster, count: int = 2) -> None:
    """Worker nodes of one CPU each, so that two tasks at once need two nodes."""
    for _ in range(count):
        cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()


@ray.remote(num_cpus=1)
def _warm_up() -> str:
    """Import the task code in a worker process of this node; return the node's id."""
    import cur_ray.entrypoints.tasks  # noqa: F401

    return str(ray.get_runtime_context().get_node_id())


def warm_up(cluster: Cluster, env: dict[str, str]) -> list[str]:
    """Start a worker with the coordinator's runtime env on every worker node.

    The coordinator's tasks inherit its runtime env, so they reuse these idle workers.
    Without them, the node that ran the fetch job's task has a warm worker and runs the few
    short row-group tasks while the other node is still starting one.
    """
    refs = [
        _warm_up.options(
            runtime_env={"env_vars": env},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        ).remote()
        for node in cluster.worker_nodes
    ]
    return sorted(ray.get(refs))


def enqueue(ctx: AppContext, name: str, project_id: str) -> str:
    """Write a job into the durable queue (as the HTTP API or the scheduler would)."""
    with ctx.db.transaction() as session:
        view, _ = jobs_service.enqueue_job(session, name=name, project_id=project_id, trigger="cli")
    return view.job_id


def wait_for(coordinator: Any, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll the coordinator until every job is completed or failed."""
    deadline = time.monotonic() + timeout
    jobs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        jobs = {job_id: ray.get(coordinator.job.remote(job_id)) for job_id in job_ids}
        if all(job["status"] in FINISHED for job in jobs.values()):
            return jobs
        time.sleep(0.25)
    raise TimeoutError(f"jobs not finished after {timeout} s: {jobs}")


def logged_task_nodes(logs_dir: Path, job_id: str) -> list[str]:
    """The node ids the runner of ``job_id`` logged, read from the cluster's worker logs."""
    nodes: set[str] = set()
    for path in sorted(logs_dir.glob("worker-*")):
        for line in path.read_text(errors="replace").splitlines():
            if NODES_MESSAGE not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == NODES_MESSAGE and record.get("jobId") == job_id:
                nodes.update(record.get("nodes") or [])
    return sorted(nodes)


def main(config: dict[str, Any]) -> dict[str, Any]:
    """Run both jobs on a fresh three-node cluster and describe what happened."""
    started = time.monotonic()
    ctx = AppContext.from_settings(
        Settings(
            database_url=config["databaseUrl"],
            cur_secrets_key=config["coordinatorEnv"].get("CUR_SECRETS_KEY") or None,
        )
    )
    cluster = start_head()
    try:
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        # The coordinator is created while the head is the only node, so it lives there, as
        # on a real cluster whose head holds the actors and no CPU. On a worker node it would
        # lease its own node first, and the short tasks of this small export could all run
        # there before the other node is leased.
        coordinator = get_coordinator(config["coordinatorEnv"])
        add_workers(cluster)
        warm_up(cluster, config["coordinatorEnv"])
        up = time.monotonic() - started
        fetch_id = enqueue(ctx, "cur-fetch", config["projectId"])
        aggregate_id = enqueue(ctx, "cur-aggregate", config["projectId"])
        ray.get(coordinator.notify.remote())
        jobs = wait_for(coordinator, [fetch_id, aggregate_id], config["timeoutSeconds"])
        ran = time.monotonic() - started - up
        head = cluster.head_node
        assert head is not None
        return {
            "headNode": head.node_id,
            "workerNodes": sorted(node.node_id for node in cluster.worker_nodes),
            "jobs": {"fetch": jobs[fetch_id], "aggregate": jobs[aggregate_id]},
            "taskNodes": logged_task_nodes(Path(head.get_logs_dir_path()), aggregate_id),
            "seconds": {"clusterUp": round(up, 2), "jobs": round(ran, 2)},
        }
    finally:
        ctx.close()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    summary = main(json.loads(sys.argv[1]))
    print(json.dumps(summary, default=str))
