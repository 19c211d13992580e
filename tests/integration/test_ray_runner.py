"""Batch B and Batch A with their work spread over real Ray tasks."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cur_ray.entrypoints.tasks import RayFileRunner, plan_with_ray
from cur_ray.samples.expected import expected_monthly
from cur_ray.samples.line_items import LineItem, generate_line_items
from cur_ray.samples.writers import write_data_export, write_legacy_csv_export
from cur_ray.services.context import AppContext
from cur_ray.services.costs import monthly_costs
from cur_ray.services.cur_aggregate import run_cur_aggregate_batch
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.files import list_files
from cur_ray.services.projects import add_project

pytestmark = pytest.mark.usefixtures("ray_session")
MARCH = dt.date(2024, 3, 1)
DATA_FOLDER = Path("x") / "data" / "BILLING_PERIOD=2024-03"


def parquet_export(
    root: Path, *, seed: int, rows: int, files: int, row_group_size: int
) -> list[LineItem]:
    """A data-export folder of March in Parquet (no manifest); returns its line items."""
    items = generate_line_items(period=MARCH, seed=seed, rows=rows, accounts=3)
    write_data_export(
        root,
        prefix="",
        export="x",
        period=MARCH,
        execution_id="e",
        items=items,
        file_format="parquet",
        files=files,
        row_group_size=row_group_size,
        write_manifest=False,
    )
    return items


def add_acme(ctx: AppContext, root: Path) -> None:
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id="acme", storage_url=f"file://{root}")


def test_ray_runner_aggregates_row_groups_exactly(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    items = parquet_export(root, seed=21, rows=3000, files=2, row_group_size=200)
    (root / DATA_FOLDER / "broken.snappy.parquet").write_bytes(b"PAR1 nope")
    csv_items = generate_line_items(period=MARCH, seed=22, rows=500)
    write_legacy_csv_export(
        root, prefix="", report="r", period=MARCH, assembly_id="a", items=csv_items
    )
    add_acme(ctx, root)

    fetched = run_cur_fetch_batch("acme", ctx=ctx, planner=plan_with_ray)
    assert fetched.projects[0].registered == 4
    progress: list[int] = []
    result = run_cur_aggregate_batch(
        "acme",
        ctx=ctx,
        runner=RayFileRunner(max_in_flight=3, target_rows=500),
        on_progress=lambda: progress.append(1),
    )

    assert (result.done, len(result.failed), len(progress)) == (3, 1, 4)
    assert "broken.snappy.parquet" in result.failed[0].error
    assert result.rowsRead == 3500
    with ctx.db.transaction() as session:
        rows = monthly_costs(session, "acme")
        statuses = {f["object_key"].rsplit("/", 1)[-1]: f["status"] for f in list_files(session)}
    want = sum(
        f["unblended_cost"]
        for f in (*expected_monthly(items).values(), *expected_monthly(csv_items).values())
    )
    got = sum(Decimal(r["unblended_cost"]) for r in rows)
    assert got == want
    assert statuses["broken.snappy.parquet"] == "ERROR"


def test_row_groups_that_together_reach_1e20_error_their_file_only(
    ctx: AppContext, tmp_path: Path
) -> None:
    """Each row group fits decimal(38, 18); their merge in the coordinator would not."""
    root = tmp_path / "bucket"
    items = parquet_export(root, seed=23, rows=400, files=1, row_group_size=100)
    huge = pa.table(
        {
            "bill_billing_period_start_date": ["2024-03-01T00:00:00Z"] * 3,
            "line_item_usage_account_id": ["999999999999"] * 3,
            "line_item_line_item_type": ["Usage"] * 3,
            "line_item_usage_start_date": ["2024-03-05T00:00:00Z"] * 3,
            "line_item_product_code": ["AmazonEC2"] * 3,
            "line_item_currency_code": ["USD"] * 3,
            "line_item_unblended_cost": ["60000000000000000000"] * 3,
        }
    )
    pq.write_table(huge, root / DATA_FOLDER / "huge.snappy.parquet", row_group_size=1)
    add_acme(ctx, root)

    run_cur_fetch_batch("acme", ctx=ctx, planner=plan_with_ray)
    result = run_cur_aggregate_batch(
        "acme", ctx=ctx, runner=RayFileRunner(max_in_flight=3, target_rows=1)
    )

    assert (result.done, [f.objectKey.rsplit("/", 1)[-1] for f in result.failed]) == (
        1,
        ["huge.snappy.parquet"],
    )
    error = result.failed[0].error
    assert "huge.snappy.parquet" in error
    assert "1e20" in error
    with ctx.db.transaction() as session:
        rows = monthly_costs(session, "acme")
    want = sum(f["unblended_cost"] for f in expected_monthly(items).values())
    assert sum(Decimal(r["unblended_cost"]) for r in rows) == want
