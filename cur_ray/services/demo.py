"""The embedded default end to end: sample CUR exports in a folder, SQLite, both batches."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.errors import ConflictError, InvalidInputError
from cur_ray.samples.demo_tree import DemoTree, build_demo_tree
from cur_ray.services.context import AppContext
from cur_ray.services.costs import daily_costs, monthly_costs
from cur_ray.services.jobs import run_batch
from cur_ray.services.projects import add_project
from cur_ray.settings import Settings

DEMO_PROJECT = "demo"
_MARKER = ".cur-ray-demo"


JobExecutor = Callable[[AppContext, str, str], dict[str, Any]]


def run_in_process(ctx: AppContext, name: str, project_id: str) -> dict[str, Any]:
    """Run a batch job in this process and return its job-shaped record."""
    result = run_batch(ctx, name, project_id)
    return {"name": name, "projectId": project_id, "status": "completed", "result": result}


@dataclass
class DemoReport:
    """What the demo did and the cost tables it produced."""

    directory: Path
    database_url: str
    tree: DemoTree
    fetch: dict[str, Any]
    aggregate: dict[str, Any]
    monthly: list[dict[str, Any]]
    daily: list[dict[str, Any]]


def prepare_demo_directory(directory: Path) -> None:
    """Create ``directory`` for the demo, replacing a previous demo's folder but nothing else."""
    if directory.exists():
        if not (directory / _MARKER).exists():
            if any(directory.iterdir()):
                raise InvalidInputError(
                    f"{directory} exists and was not made by `cur-ray demo`; choose another --dir"
                )
        else:
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _MARKER).write_text("made by cur-ray demo; safe to delete\n")


def run_demo(
    directory: Path,
    settings: Settings,
    *,
    database_url: str | None = None,
    executor: JobExecutor = run_in_process,
) -> DemoReport:
    """Write sample exports under ``directory``, register them in SQLite, run both batches.

    ``executor`` runs each batch job: in this process by default; the CLI passes one that
    runs them on the Ray coordinator.
    """
    directory = directory.resolve()
    prepare_demo_directory(directory)
    tree = build_demo_tree(directory / "bucket")
    url = database_url or f"sqlite:///{directory / 'cur_ray_demo.db'}"
    upgrade_database(url)
    ctx = AppContext.from_settings(settings.model_copy(update={"database_url": url}))
    try:
        # A reused database may already have the demo project: keep it.
        with contextlib.suppress(ConflictError), ctx.db.transaction() as session:
            add_project(
                session, ctx.settings, project_id=DEMO_PROJECT, storage_url=f"file://{tree.root}"
            )
        fetched = executor(ctx, "cur-fetch", DEMO_PROJECT)
        aggregated = executor(ctx, "cur-aggregate", DEMO_PROJECT)
        with ctx.db.transaction() as session:
            monthly = monthly_costs(session, DEMO_PROJECT)
            daily = daily_costs(session, DEMO_PROJECT)
    finally:
        ctx.close()
    return DemoReport(directory, url, tree, fetched, aggregated, monthly, daily)
