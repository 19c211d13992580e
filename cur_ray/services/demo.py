"""The embedded default end to end: sample CUR exports in a folder, SQLite, both batches."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.errors import ConflictError, InvalidInputError
from cur_ray.samples.demo_tree import DemoTree, build_demo_tree
from cur_ray.services.context import AppContext
from cur_ray.services.costs import daily_costs, monthly_costs
from cur_ray.services.cur_aggregate import AggregateResult, run_cur_aggregate_batch
from cur_ray.services.cur_fetch import FetchResult, run_cur_fetch_batch
from cur_ray.services.projects import add_project
from cur_ray.settings import Settings

DEMO_PROJECT = "demo"
_MARKER = ".cur-ray-demo"


@dataclass
class DemoReport:
    """What the demo did and the cost tables it produced."""

    directory: Path
    database_url: str
    tree: DemoTree
    fetch: FetchResult
    aggregate: AggregateResult
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


def run_demo(directory: Path, settings: Settings, *, database_url: str | None = None) -> DemoReport:
    """Write sample exports under ``directory``, register them in SQLite, run both batches."""
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
        fetched = run_cur_fetch_batch(DEMO_PROJECT, ctx=ctx)
        aggregated = run_cur_aggregate_batch(DEMO_PROJECT, ctx=ctx)
        with ctx.db.transaction() as session:
            monthly = monthly_costs(session, DEMO_PROJECT)
            daily = daily_costs(session, DEMO_PROJECT)
    finally:
        ctx.close()
    return DemoReport(directory, url, tree, fetched, aggregated, monthly, daily)
