"""Batch B end to end: real files in every format, exact figures, versions, faults."""

from __future__ import annotations

import datetime as dt
import gzip
import threading
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select, text

from cur_ray.adapters.db.claims import ClaimedFile, claim_files
from cur_ray.adapters.db.models import BillingFile, FileCost
from cur_ray.adapters.storage import FileSystemSpec
from cur_ray.samples.expected import expected_daily, expected_monthly
from cur_ray.samples.line_items import generate_line_items
from cur_ray.samples.writers import (
    upload_tree,
    write_data_export,
    write_legacy_csv_export,
    write_legacy_parquet,
    write_shared_focus_sample,
    write_shared_legacy_sample,
)
from cur_ray.services.context import AppContext
from cur_ray.services.costs import daily_costs, monthly_costs
from cur_ray.services.cur_aggregate import (
    FileOutcome,
    RetryPolicy,
    run_cur_aggregate_batch,
    run_in_process,
)
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.files import list_files, requeue_errors
from cur_ray.services.projects import add_project

MARCH = dt.date(2024, 3, 1)
MEASURES = (
    "unblended_cost",
    "blended_cost",
    "net_unblended_cost",
    "amortized_cost",
    "net_amortized_cost",
    "list_cost",
)
EXACT = Decimal("1e-8")


def add(ctx: AppContext, project_id: str, root: Path) -> None:
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=project_id, storage_url=f"file://{root}")


def fetch_and_aggregate(ctx: AppContext, project_id: str, **kwargs: Any) -> Any:
    fetched = run_cur_fetch_batch(project_id, ctx=ctx).projects[0]
    assert fetched.error is None
    return run_cur_aggregate_batch(project_id, ctx=ctx, **kwargs)


def monthly(ctx: AppContext, project_id: str) -> list[dict[str, Any]]:
    with ctx.db.transaction() as session:
        return monthly_costs(session, project_id)


def daily(ctx: AppContext, project_id: str) -> list[dict[str, Any]]:
    with ctx.db.transaction() as session:
        return daily_costs(session, project_id)


def files(ctx: AppContext, project_id: str) -> dict[str, dict[str, Any]]:
    with ctx.db.transaction() as session:
        return {f["object_key"]: f for f in list_files(session, project_id)}


def total(rows: Iterable[dict[str, Any]], measure: str = "unblended_cost", **where: str) -> Decimal:
    return sum(
        (
            Decimal(r[measure])
            for r in rows
            if r[measure] is not None and all(r[k] == v for k, v in where.items())
        ),
        Decimal(0),
    )


def as_monthly_table(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {
        (
            r["billing_period"],
            r["usage_account_id"],
            r["service_code"],
            r["charge_category"],
            r["currency"],
        ): {m: r[m] for m in (*MEASURES, "line_items")}
        for r in rows
    }


def assert_matches_oracle(
    rows: list[dict[str, Any]], expected: dict[Any, dict[str, Any]], measures: Sequence[str]
) -> None:
    table = as_monthly_table(rows)
    assert set(table) == {tuple(k) for k in expected}
    for key, figures in expected.items():
        got = table[tuple(key)]
        assert got["line_items"] == figures["line_items"], key
        for m in measures:
            want = figures[m]
            if want is None:
                assert got[m] is None, (key, m)
            else:
                assert abs(Decimal(got[m]) - want) < EXACT, (key, m, got[m], want)


# ----------------------------------------------------------------------- real data, exact


def test_real_legacy_cur_exact_figures(ctx: AppContext, tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "bucket"
    write_shared_legacy_sample(root, shared_data / "aws-cur-legacy-sample.csv", prefix="cur")
    add(ctx, "acme", root)

    result = fetch_and_aggregate(ctx, "acme")

    assert (result.done, result.failed, result.rowsRead) == (1, [], 1281)
    rows = monthly(ctx, "acme")
    assert {r["billing_period"] for r in rows} == {"2023-11"}
    assert {r["usage_account_id"] for r in rows} == {"123412340534"}
    expected = {
        "AmazonS3": "1.44056535650",
        "awskms": "0.2405555574",
        "AmazonEFS": "0.0009452835",
        "AWSCloudTrail": "0.000240",
        "AWSIoT": "0.00000250",
    }
    for service, amount in expected.items():
        assert total(rows, service_code=service) == Decimal(amount), service
    services = {r["service_code"] for r in rows}
    assert len(services) == 14
    for other in services - set(expected):
        assert total(rows, service_code=other) == 0
    assert total(rows) == Decimal("1.68230869740")
    assert total(rows, charge_category="Usage") == Decimal("1.60230869740")
    assert total(rows, charge_category="Tax") == Decimal("0.08")
    assert total(rows, "amortized_cost") == Decimal("1.68230869740")
    assert total(rows, "blended_cost") == Decimal("1.68230869740")
    assert {r["net_unblended_cost"] for r in rows} == {None}

    days = daily(ctx, "acme")
    assert len(days) == 14
    by_day = {r["usage_date"]: Decimal(r["unblended_cost"]) for r in days}
    assert by_day["2023-11-01"] == Decimal("0.0830106084")
    assert by_day["2023-11-02"] == Decimal("0.0345302971")
    assert by_day["2023-11-03"] == Decimal("0.0321473750")
    assert sum(by_day.values()) == Decimal("1.68230869740")


FOCUS_SERVICES = {
    "Amazon Elastic Compute Cloud": "16.04169305050",
    "Amazon Relational Database Service": "0.75322708520",
    "Red Hat OpenShift Service on AWS": "0.34200000000",
    "Elastic Load Balancing": "0.31368424450",
    "AmazonCloudWatch": "0.22016958380",
    "Amazon Virtual Private Cloud": "0.16554031430",
}


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_real_focus_export_exact_figures(
    ctx: AppContext, tmp_path: Path, shared_data: Path, file_format: str
) -> None:
    root = tmp_path / "bucket"
    write_shared_focus_sample(
        root, shared_data / "focus-1.0-sample.csv", prefix="exports", file_format=file_format
    )
    add(ctx, "acme", root)

    result = fetch_and_aggregate(ctx, "acme")

    assert (result.done, result.failed, result.rowsRead) == (1, [], 942)
    assert files(ctx, "acme").popitem()[1]["format"] == f"focus-{file_format}"
    rows = monthly(ctx, "acme")
    assert {r["billing_period"] for r in rows} == {"2024-09"}
    assert total(rows) == Decimal("18.00663861840")
    assert total(rows, charge_category="Usage") == Decimal("20.62033861840")
    assert total(rows, charge_category="Credit") == Decimal("-2.61370000000")
    for name, amount in FOCUS_SERVICES.items():
        assert total(rows, service_name=name) == Decimal(amount), name
    assert {r["blended_cost"] for r in rows} == {None}
    assert total(daily(ctx, "acme")) == Decimal("18.00663861840")


def test_real_legacy_cur_read_from_s3(
    database_url: str,
    make_ctx: Callable[..., AppContext],
    s3_endpoint: str,
    tmp_path: Path,
    shared_data: Path,
) -> None:
    root = tmp_path / "bucket"
    write_shared_legacy_sample(root, shared_data / "aws-cur-legacy-sample.csv", prefix="cur")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="tenant")
    upload_tree(root, s3, "tenant")
    ctx = make_ctx(database_url)
    with ctx.db.transaction() as session:
        add_project(
            session,
            ctx.settings,
            project_id="acme",
            storage_url="s3://tenant/cur",
            role_arn="arn:aws:iam::123412340534:role/cur",
            external_id="x-1",
        )

    result = fetch_and_aggregate(ctx, "acme")

    assert (result.done, result.failed) == (1, [])
    assert total(monthly(ctx, "acme")) == Decimal("1.68230869740")


# ----------------------------------------------------------- every format, same line items


def test_every_format_gives_identical_tables(ctx: AppContext, tmp_path: Path) -> None:
    items = generate_line_items(period=MARCH, seed=7, rows=1500, accounts=3)
    writers: dict[str, Callable[[Path], object]] = {
        "legacy-csv-gz": lambda r: write_legacy_csv_export(
            r, prefix="cur", report="rep", period=MARCH, assembly_id="a1", items=items, files=2
        ),
        "legacy-csv": lambda r: write_legacy_csv_export(
            r,
            prefix="cur",
            report="rep",
            period=MARCH,
            assembly_id="a1",
            items=items,
            compression="none",
        ),
        "legacy-zip": lambda r: write_legacy_csv_export(
            r,
            prefix="cur",
            report="rep",
            period=MARCH,
            assembly_id="a1",
            items=items,
            compression="zip",
        ),
        "legacy-parquet": lambda r: write_legacy_parquet(
            r, prefix="cur", report="rep", period=MARCH, items=items, files=2
        ),
        "cur2-parquet": lambda r: write_data_export(
            r,
            prefix="cur",
            export="cur2",
            period=MARCH,
            execution_id="e1",
            items=items,
            file_format="parquet",
            files=3,
        ),
        "cur2-csv": lambda r: write_data_export(
            r,
            prefix="cur",
            export="cur2",
            period=MARCH,
            execution_id="e1",
            items=items,
            file_format="csv",
        ),
    }
    expected = expected_monthly(items)
    tables = {}
    for name, writer in writers.items():
        root = tmp_path / name
        writer(root)
        add(ctx, name, root)
        result = fetch_and_aggregate(ctx, name)
        assert result.failed == [], name
        rows = monthly(ctx, name)
        assert_matches_oracle(rows, expected, MEASURES)
        tables[name] = (
            as_monthly_table(rows),
            {(d["usage_date"], d["usage_account_id"], d["currency"]): d for d in daily(ctx, name)},
        )
    first = next(iter(tables.values()))
    for name, table in tables.items():
        assert table == first, name
    expected_days = expected_daily(items)
    for name in writers:
        got_days = {
            (d["billing_period"], d["usage_date"], d["usage_account_id"], d["currency"]): d
            for d in daily(ctx, name)
        }
        assert set(got_days) == {tuple(k) for k in expected_days}, name
        for key, figures in expected_days.items():
            row = got_days[tuple(key)]
            assert row["line_items"] == figures["line_items"], (name, key)
            for m in MEASURES:
                want = figures[m]
                assert (row[m] is None) == (want is None), (name, key, m)
                if want is not None:
                    assert abs(Decimal(row[m]) - want) < EXACT, (name, key, m)


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_focus_export_matches_oracle(ctx: AppContext, tmp_path: Path, file_format: str) -> None:
    items = generate_line_items(period=MARCH, seed=11, rows=800, accounts=2)
    root = tmp_path / "focus"
    write_data_export(
        root,
        prefix="",
        export="focus",
        period=MARCH,
        execution_id="f1",
        items=items,
        file_format=file_format,
        focus=True,
    )
    add(ctx, "acme", root)
    assert fetch_and_aggregate(ctx, "acme").failed == []
    assert_matches_oracle(
        monthly(ctx, "acme"),
        expected_monthly(items, focus=True),
        ("unblended_cost", "amortized_cost", "list_cost", "blended_cost"),
    )


# ----------------------------------------------------------------------------- versions


def test_redelivered_month_switches_atomically(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    v1 = generate_line_items(period=MARCH, seed=1, rows=400)
    v2 = generate_line_items(period=MARCH, seed=2, rows=600)
    write_legacy_csv_export(
        root, prefix="", report="rep", period=MARCH, assembly_id="a1", items=v1, files=2
    )
    add(ctx, "acme", root)
    fetch_and_aggregate(ctx, "acme")
    v1_total = total(monthly(ctx, "acme"))
    assert abs(v1_total - sum(f["unblended_cost"] for f in expected_monthly(v1).values())) < EXACT

    write_legacy_csv_export(
        root, prefix="", report="rep", period=MARCH, assembly_id="a2", items=v2, files=3
    )
    # Half of the new version processed: the dashboard still shows the old one.
    half = fetch_and_aggregate(ctx, "acme", limit=2)
    assert half.done == 2
    assert total(monthly(ctx, "acme")) == v1_total
    assert total(daily(ctx, "acme")) == v1_total

    rest = run_cur_aggregate_batch("acme", ctx=ctx)
    assert rest.done == 1
    v2_total = sum(f["unblended_cost"] for f in expected_monthly(v2).values())
    assert abs(total(monthly(ctx, "acme")) - v2_total) < EXACT
    assert abs(total(daily(ctx, "acme")) - v2_total) < EXACT
    statuses = [f["status"] for f in files(ctx, "acme").values()]
    assert sorted(statuses) == ["DONE"] * 3 + ["SUPERSEDED"] * 2


def test_overwritten_object_replaces_its_costs(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    first = generate_line_items(period=MARCH, seed=3, rows=300)
    second = generate_line_items(period=MARCH, seed=4, rows=350)
    common = {
        "prefix": "",
        "export": "x",
        "period": MARCH,
        "file_format": "parquet",
        "write_manifest": False,
    }
    write_data_export(root, execution_id="e1", items=first, **common)  # type: ignore[arg-type]
    add(ctx, "acme", root)
    fetch_and_aggregate(ctx, "acme")
    write_data_export(root, execution_id="e2", items=second, **common)  # type: ignore[arg-type]

    result = fetch_and_aggregate(ctx, "acme")

    assert result.done == 1
    want = sum(f["unblended_cost"] for f in expected_monthly(second).values())
    assert abs(total(monthly(ctx, "acme")) - want) < EXACT


def test_reprocessing_a_done_file_changes_nothing(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=5, rows=300)
    write_legacy_csv_export(root, prefix="", report="r", period=MARCH, assembly_id="a", items=items)
    add(ctx, "acme", root)
    fetch_and_aggregate(ctx, "acme")
    before = (monthly(ctx, "acme"), daily(ctx, "acme"))
    with ctx.db.transaction() as session:
        session.execute(text("UPDATE finops_billing_files SET status = 'PENDING'"))

    again = run_cur_aggregate_batch("acme", ctx=ctx)

    assert again.done == 1
    assert (monthly(ctx, "acme"), daily(ctx, "acme")) == before
    with ctx.db.transaction() as session:
        file_id = session.scalar(select(BillingFile.id))
        rows = session.scalars(select(FileCost).where(FileCost.file_id == file_id)).all()
    assert len(rows) == len(before[0]) + len(before[1])  # replaced, not appended


def test_crash_before_commit_counts_nothing_and_files_are_handed_back(
    ctx: AppContext, tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=6, rows=300)
    write_legacy_csv_export(root, prefix="", report="r", period=MARCH, assembly_id="a", items=items)
    add(ctx, "acme", root)
    run_cur_fetch_batch("acme", ctx=ctx)

    def crashing_runner(
        spec: FileSystemSpec,
        batch: Sequence[ClaimedFile],
        policy: RetryPolicy,
        on_progress: Callable[[], None],
    ) -> Iterable[FileOutcome]:
        list(run_in_process(spec, batch, policy, on_progress))  # read everything…
        raise RuntimeError("worker died before the write")  # …then die

    with pytest.raises(RuntimeError):
        run_cur_aggregate_batch("acme", ctx=ctx, runner=crashing_runner)

    assert monthly(ctx, "acme") == []
    (row,) = files(ctx, "acme").values()
    assert (row["status"], row["attempts"]) == ("PENDING", 1)
    result = run_cur_aggregate_batch("acme", ctx=ctx)
    assert result.done == 1
    (row,) = files(ctx, "acme").values()
    assert (row["status"], row["attempts"]) == ("DONE", 2)
    want = sum(f["unblended_cost"] for f in expected_monthly(items).values())
    assert abs(total(monthly(ctx, "acme")) - want) < EXACT


def test_claims_of_a_dead_worker_are_taken_again_after_their_lease(
    ctx: AppContext, tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=6, rows=300)
    write_legacy_csv_export(root, prefix="", report="r", period=MARCH, assembly_id="a", items=items)
    add(ctx, "acme", root)
    run_cur_fetch_batch("acme", ctx=ctx)
    with ctx.db.transaction() as session:  # a worker claims, then its process dies
        held, _ = claim_files(session, "acme", 10, "dead-worker", dt.timedelta(minutes=15))
    assert len(held) == 1

    assert run_cur_aggregate_batch("acme", ctx=ctx).claimed == 0  # its lease still runs
    with ctx.db.transaction() as session:
        session.execute(
            text("UPDATE finops_billing_files SET lease_expires_at = :past"),
            {"past": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)},
        )
    result = run_cur_aggregate_batch("acme", ctx=ctx)

    assert (result.claimed, result.done) == (1, 1)
    (row,) = files(ctx, "acme").values()
    assert (row["status"], row["attempts"]) == ("DONE", 2)
    want = sum(f["unblended_cost"] for f in expected_monthly(items).values())
    assert abs(total(monthly(ctx, "acme")) - want) < EXACT


# ------------------------------------------------------------------------------- faults


def test_bad_files_error_alone_and_can_be_requeued(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=8, rows=200)
    good = write_data_export(
        root,
        prefix="",
        export="x",
        period=MARCH,
        execution_id="e",
        items=items,
        file_format="parquet",
        write_manifest=False,
    )
    folder = root / "x" / "data" / "BILLING_PERIOD=2024-03"
    (folder / "corrupt.snappy.parquet").write_bytes(b"PAR1 this is not parquet at all")
    raw = gzip.compress(b"line_item_unblended_cost,line_item_usage_account_id\n" + b"1,2\n" * 5000)
    (folder / "truncated.csv.gz").write_bytes(raw[: len(raw) // 2])
    (folder / "wrong-header.csv.gz").write_bytes(gzip.compress(b"name,colour\nbob,blue\n"))
    add(ctx, "acme", root)

    result = fetch_and_aggregate(ctx, "acme")

    assert result.done == len(good)
    errors = {Path(f.objectKey).name: f.error for f in result.failed}
    assert set(errors) == {"corrupt.snappy.parquet", "truncated.csv.gz", "wrong-header.csv.gz"}
    for name, message in errors.items():
        assert name in message
    by_name = {Path(k).name: f for k, f in files(ctx, "acme").items()}
    assert by_name["corrupt.snappy.parquet"]["status"] == "ERROR"
    assert by_name["corrupt.snappy.parquet"]["error_message"]
    want = sum(f["unblended_cost"] for f in expected_monthly(items).values())
    assert abs(total(monthly(ctx, "acme")) - want) < EXACT

    with ctx.db.transaction() as session:
        assert requeue_errors(session, "acme") == 3
    statuses = {Path(k).name: f["status"] for k, f in files(ctx, "acme").items()}
    assert statuses["truncated.csv.gz"] == "PENDING"
    assert (
        files(ctx, "acme")[next(k for k in files(ctx, "acme") if "truncated" in k)]["attempts"] == 1
    )


@pytest.mark.postgres
def test_concurrent_aggregate_runs_process_each_file_once(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    all_items = []
    for month in (1, 2, 3):
        period = dt.date(2024, month, 1)
        items = generate_line_items(period=period, seed=month, rows=400)
        all_items.extend(items)
        write_data_export(
            root,
            prefix="",
            export="x",
            period=period,
            execution_id=f"e{month}",
            items=items,
            file_format="parquet",
            files=8,
        )
    setup = make_ctx(postgres_url)
    add(setup, "acme", root)
    run_cur_fetch_batch("acme", ctx=setup)
    contexts = [make_ctx(postgres_url) for _ in range(3)]
    barrier = threading.Barrier(len(contexts))
    results: list[Any] = []

    def work(ctx: AppContext) -> None:
        barrier.wait()
        results.append(run_cur_aggregate_batch("acme", ctx=ctx))

    threads = [threading.Thread(target=work, args=(c,)) for c in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 3
    assert sum(r.done for r in results) == 24
    assert sum(r.claimed for r in results) == 24
    assert {f["attempts"] for f in files(setup, "acme").values()} == {1}
    want = sum(f["unblended_cost"] for f in expected_monthly(all_items).values())
    assert abs(total(monthly(setup, "acme")) - want) < EXACT


@pytest.mark.postgres
def test_rows_locked_by_another_worker_are_skipped_and_reported(
    postgres_url: str, make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    root = tmp_path / "bucket"
    items = generate_line_items(period=MARCH, seed=9, rows=200)
    write_data_export(
        root,
        prefix="",
        export="x",
        period=MARCH,
        execution_id="e",
        items=items,
        file_format="parquet",
        files=4,
        write_manifest=False,
    )
    ctx = make_ctx(postgres_url)
    add(ctx, "acme", root)
    run_cur_fetch_batch("acme", ctx=ctx)
    other = make_ctx(postgres_url)
    with other.db.engine.connect() as conn, conn.begin():
        # Another worker is in the middle of claiming two rows.
        conn.execute(
            text("SELECT id FROM finops_billing_files ORDER BY id LIMIT 2 FOR UPDATE")
        ).all()
        result = run_cur_aggregate_batch("acme", ctx=ctx)
    assert (result.claimed, result.skipped, result.done) == (2, 2, 2)
