"""Tests of cur_ray.samples: generator, oracle, writers and the demo tree (no DB, no network)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
import zipfile
from collections import Counter, defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cur_ray.domain.billing import SourceFormat
from cur_ray.samples.demo_tree import DEMO_LEGACY_REPORT, build_demo_tree
from cur_ray.samples.expected import (
    MEASURES,
    charge_category,
    expected_daily,
    expected_focus_monthly,
    expected_focus_rows_daily,
    expected_focus_rows_monthly,
    expected_monthly,
    read_focus_csv_rows,
    read_legacy_csv_rows,
    total,
)
from cur_ray.samples.line_items import (
    FIELDS,
    LEGACY_HEADERS,
    LINE_ITEM_TYPES,
    LineItem,
    generate_line_items,
    legacy_header_to_snake,
)
from cur_ray.samples.writers import (
    FOCUS_COLUMNS,
    legacy_manifest_key,
    upload_tree,
    write_data_export,
    write_legacy_csv_export,
    write_legacy_parquet,
    write_shared_focus_sample,
    write_shared_legacy_sample,
)

MARCH = date(2024, 3, 1)
SHARED = Path("/work/shared/data")
LEGACY_SAMPLE = SHARED / "aws-cur-legacy-sample.csv"
FOCUS_SAMPLE = SHARED / "focus-1.0-sample.csv"
needs_shared = pytest.mark.skipif(
    not (LEGACY_SAMPLE.exists() and FOCUS_SAMPLE.exists()), reason="no /work/shared/data"
)
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
SPLIT_OPERATIONS = ("EKSPod-EC2", "ECSTask-EC2")
COST_RE = re.compile(r"^-?\d+(\.\d{1,10})?$")


@pytest.fixture(scope="module")
def items() -> list[LineItem]:
    return generate_line_items(period=MARCH, seed=7, rows=600)


def _gz_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _dsum(values: list[Any]) -> Decimal:
    """Exact sum of a column read back as Python values (Decimal or float)."""
    return sum(
        (Decimal(repr(v)) if isinstance(v, float) else Decimal(v) for v in values), Decimal(0)
    )


def _close(a: Decimal | None, b: Decimal, tolerance: str = "1e-8") -> bool:
    assert a is not None
    return abs(a - b) <= Decimal(tolerance)


# --------------------------------------------------------------------------------------
# Generator


def test_generation_is_deterministic_and_exact_in_size() -> None:
    first = generate_line_items(period=MARCH, seed=1, rows=300)
    again = generate_line_items(period=MARCH, seed=1, rows=300)
    other = generate_line_items(period=MARCH, seed=2, rows=300)
    assert first == again
    assert first != other
    assert len(first) == 300
    for rows, accounts in ((200, 1), (1000, 5), (3333, 3)):
        assert len(generate_line_items(period=MARCH, seed=3, rows=rows, accounts=accounts)) == rows
    with pytest.raises(ValueError, match="rows must be at least"):
        generate_line_items(period=MARCH, seed=1, rows=20)


def test_months_of_one_organisation_share_accounts() -> None:
    march = generate_line_items(period=MARCH, seed=1, rows=300)
    april = generate_line_items(period=date(2024, 4, 1), seed=2, rows=300)
    assert {i.line_item_usage_account_id for i in march} == {
        i.line_item_usage_account_id for i in april
    }
    assert {i.bill_billing_period_start_date for i in april} == {"2024-04-01T00:00:00Z"}


def test_realistic_mix(items: list[LineItem]) -> None:
    types = Counter(i.line_item_line_item_type for i in items)
    assert set(LINE_ITEM_TYPES) <= set(types)
    assert types["SavingsPlanCoveredUsage"] == types["SavingsPlanNegation"] >= 1
    operations = Counter(i.line_item_operation for i in items)
    assert operations["EKSPod-EC2"] >= 1
    assert operations["ECSTask-EC2"] >= 1
    services = {i.line_item_product_code for i in items}
    assert {"AmazonEC2", "AmazonS3", "AmazonRDS", "AWSLambda", "AmazonCloudWatch", "awskms"} <= (
        services
    )
    assert len({i.line_item_usage_account_id for i in items}) == 3
    assert len({i.line_item_usage_start_date[:10] for i in items}) >= 25
    fees = [i for i in items if i.line_item_line_item_type == "Fee"]
    assert fees
    assert all(i.reservation_reservation_a_r_n for i in fees)
    taxes = [i for i in items if i.line_item_line_item_type == "Tax"]
    assert all(
        i.line_item_usage_start_date == "2024-03-01T00:00:00Z"
        and i.line_item_usage_end_date == "2024-04-01T00:00:00Z"
        for i in taxes
    )
    assert any(i.resource_tags for i in items)


def test_numbers_and_timestamps_are_well_formed(items: list[LineItem]) -> None:
    numeric = [f.name for f in FIELDS if f.kind in ("number", "rate")]
    timestamps = [f.name for f in FIELDS if f.kind == "timestamp"]
    for item in items:
        for name in numeric:
            value = item.get(name)
            assert not value or COST_RE.match(value), (name, value)
        for name in timestamps:
            assert TS_RE.match(item.get(name)), (name, item.get(name))
    assert len({(i.identity_line_item_id, i.identity_time_interval) for i in items}) == len(items)


def test_commitment_lines_are_consistent(items: list[LineItem]) -> None:
    covered: dict[tuple[str, str, str, str], list[LineItem]] = defaultdict(list)
    negations: dict[tuple[str, str, str, str], list[LineItem]] = defaultdict(list)
    effective_by_hour: dict[str, Decimal] = defaultdict(Decimal)
    for item in items:
        key = (
            item.line_item_usage_account_id,
            item.line_item_usage_start_date,
            item.line_item_usage_type,
            item.line_item_resource_id,
        )
        if item.line_item_line_item_type == "SavingsPlanCoveredUsage":
            covered[key].append(item)
            effective_by_hour[item.line_item_usage_start_date] += Decimal(
                item.savings_plan_savings_plan_effective_cost
            )
        elif item.line_item_line_item_type == "SavingsPlanNegation":
            negations[key].append(item)
    assert covered.keys() == negations.keys()
    for key, lines in covered.items():
        assert sorted(Decimal(i.line_item_unblended_cost) for i in lines) == sorted(
            -Decimal(n.line_item_unblended_cost) for n in negations[key]
        )
    for fee in (i for i in items if i.line_item_line_item_type == "SavingsPlanRecurringFee"):
        used = Decimal(fee.savings_plan_used_commitment)
        assert used == effective_by_hour.get(fee.line_item_usage_start_date, Decimal(0))
        assert used <= Decimal(fee.savings_plan_total_commitment_to_date)
    for ri_fee in (i for i in items if i.line_item_line_item_type == "RIFee"):
        arn = ri_fee.reservation_reservation_a_r_n
        used_hours = sum(
            1
            for i in items
            if i.line_item_line_item_type == "DiscountedUsage"
            and i.reservation_reservation_a_r_n == arn
        )
        assert Decimal(ri_fee.reservation_unused_quantity) == 31 * 24 - used_hours
        assert Decimal(ri_fee.line_item_usage_amount) == 31 * 24


# --------------------------------------------------------------------------------------
# Column names


def _local_snake(header: str) -> str:
    """Athena's rule, written independently: '/' and ':' -> '_', '_' before capitals."""
    out: list[str] = []
    for char in header:
        if char in "/:-":
            out.append("_")
        elif char.isupper():
            if out and out[-1] != "_":
                out.append("_")
            out.append(char.lower())
        else:
            out.append(char)
    return "".join(out)


def test_legacy_headers_round_trip() -> None:
    irregular = {
        "reservation/ReservationARN": "reservation_reservation_a_r_n",
        "savingsPlan/SavingsPlanARN": "savings_plan_savings_plan_a_r_n",
        "pricing/publicOnDemandCost": "pricing_public_on_demand_cost",
        "lineItem/UnblendedCost": "line_item_unblended_cost",
        "identity/LineItemId": "identity_line_item_id",
        "product/ProductName": "product_product_name",
        "resourceTags/user:team": "resource_tags_user_team",
    }
    for header, snake in irregular.items():
        assert _local_snake(header) == snake
        assert legacy_header_to_snake(header) == snake
    assert LEGACY_HEADERS["reservation_reservation_a_r_n"] == "reservation/ReservationARN"
    for name, header in LEGACY_HEADERS.items():
        assert _local_snake(header) == name, header
        assert legacy_header_to_snake(header) == name, header
    assert [f.name for f in FIELDS] == [
        n for n in LineItem.__dataclass_fields__ if n != "resource_tags"
    ]
    real_header = (
        LEGACY_SAMPLE.read_text().splitlines()[0].split(",") if LEGACY_SAMPLE.exists() else []
    )
    for header in real_header:
        assert legacy_header_to_snake(header) == _local_snake(header)


# --------------------------------------------------------------------------------------
# Oracle


def _hand_items() -> list[LineItem]:
    base: dict[str, Any] = {
        "bill_billing_period_start_date": "2024-03-01T00:00:00Z",
        "line_item_usage_account_id": "111111111111",
        "line_item_currency_code": "USD",
        "line_item_usage_start_date": "2024-03-05T13:00:00Z",
        "line_item_product_code": "AmazonEC2",
    }
    sp_arn = "arn:aws:savingsplans::111111111111:savingsplan/x"
    ri_arn = "arn:aws:ec2:us-east-1:111111111111:reserved-instances/y"

    def line(line_type: str, unblended: str, net: str, **extra: str) -> LineItem:
        fields = dict(base)
        fields.update(
            line_item_line_item_type=line_type,
            line_item_unblended_cost=unblended,
            line_item_blended_cost=unblended,
            line_item_net_unblended_cost=net,
        )
        fields.update(extra)
        return LineItem(**fields)

    return [
        line(
            "SavingsPlanCoveredUsage", "0.0416", "0.040352",
            savings_plan_savings_plan_a_r_n=sp_arn,
            savings_plan_savings_plan_effective_cost="0.0291",
            savings_plan_net_savings_plan_effective_cost="0.028227",
            pricing_public_on_demand_cost="0.0416",
        ),
        line(
            "SavingsPlanNegation", "-0.0416", "-0.040352",
            savings_plan_savings_plan_a_r_n=sp_arn, pricing_public_on_demand_cost="0.0416",
        ),
        line(
            "SavingsPlanRecurringFee", "0.05", "0.0485",
            line_item_product_code="ComputeSavingsPlans",
            savings_plan_total_commitment_to_date="0.1",
            savings_plan_used_commitment="0.0291",
        ),
        line(
            "SavingsPlanUpfrontFee", "438", "424.86",
            line_item_product_code="ComputeSavingsPlans",
            line_item_usage_start_date="2024-03-01T00:00:00Z",
        ),
        line(
            "DiscountedUsage", "0", "0",
            line_item_usage_start_date="2024-03-06T02:00:00Z",
            reservation_reservation_a_r_n=ri_arn,
            reservation_effective_cost="0.078",
            reservation_net_effective_cost="0.07566",
            pricing_public_on_demand_cost="0.096",
        ),
        line(
            "RIFee", "20.832", "20.20704",
            line_item_usage_start_date="2024-03-01T00:00:00Z",
            reservation_reservation_a_r_n=ri_arn,
            reservation_unused_amortized_upfront_fee_for_billing_period="35.0",
            reservation_unused_recurring_fee="19.6",
            reservation_net_unused_amortized_upfront_fee_for_billing_period="33.95",
            reservation_net_unused_recurring_fee="19.012",
        ),
        line(
            "Fee", "438", "424.86",
            line_item_usage_start_date="2024-03-01T00:00:00Z",
            reservation_reservation_a_r_n=ri_arn,
        ),
        line(
            "Fee", "100", "97",
            line_item_product_code="AWSSupportBusiness",
            line_item_usage_start_date="2024-03-01T00:00:00Z",
        ),
        line("Tax", "1.5", "1.5", line_item_usage_start_date="2024-03-01T00:00:00Z"),
        line("Credit", "-5", "-5", line_item_usage_start_date="2024-03-01T00:00:00Z"),
        line(
            "Refund", "-2", "-2",
            line_item_product_code="AmazonRDS",
            line_item_usage_start_date="2024-03-01T00:00:00Z",
        ),
        line("Usage", "0.5", "0.485", line_item_operation="EKSPod-EC2",
             pricing_public_on_demand_cost="0.5"),
        line("Usage", "0.25", "0.2425", line_item_operation="ECSTask-EC2"),
        line(
            "Usage", "0.096", "0.09312",
            line_item_operation="RunInstances", pricing_public_on_demand_cost="0.096",
        ),
    ]  # fmt: skip


def test_charge_category_mapping() -> None:
    assert charge_category("Tax") == "Tax"
    assert charge_category("Credit") == "Credit"
    assert charge_category("Refund") == "Adjustment"
    for purchase in ("Fee", "RIFee", "SavingsPlanUpfrontFee", "SavingsPlanRecurringFee"):
        assert charge_category(purchase) == "Purchase"
    for usage in ("Usage", "DiscountedUsage", "SavingsPlanCoveredUsage", "SavingsPlanNegation"):
        assert charge_category(usage) == "Usage"


def test_oracle_on_hand_computed_items() -> None:
    monthly = expected_monthly(_hand_items())
    acct, d = "111111111111", Decimal

    def key(service: str, category: str) -> tuple[str, str, str, str, str]:
        return ("2024-03", acct, service, category, "USD")

    usage = monthly[key("AmazonEC2", "Usage")]
    assert usage["line_items"] == 4  # EKSPod-EC2 / ECSTask-EC2 excluded
    assert usage["unblended_cost"] == d("0.096")
    assert usage["blended_cost"] == d("0.096")
    assert usage["net_unblended_cost"] == d("0.09312")
    assert usage["amortized_cost"] == d("0.2031")  # 0.0291 + 0 + 0.078 + 0.096
    assert usage["net_amortized_cost"] == d("0.197007")  # 0.028227 + 0 + 0.07566 + 0.09312
    assert usage["list_cost"] == d("0.2336")  # negation's public cost ignored
    ec2_purchase = monthly[key("AmazonEC2", "Purchase")]
    assert ec2_purchase["unblended_cost"] == d("458.832")
    assert ec2_purchase["amortized_cost"] == d("54.6")  # RIFee unused; RI upfront Fee -> 0
    assert ec2_purchase["net_amortized_cost"] == d("52.962")
    sp = monthly[key("ComputeSavingsPlans", "Purchase")]
    assert sp["unblended_cost"] == d("438.05")
    assert sp["amortized_cost"] == d("0.0709")  # 0.1 - 0.0291; upfront -> 0
    assert sp["net_amortized_cost"] == d("0.0709")  # no net variant for the recurring fee
    support = monthly[key("AWSSupportBusiness", "Purchase")]
    assert (support["amortized_cost"], support["net_amortized_cost"]) == (d(100), d(97))
    assert monthly[key("AmazonEC2", "Tax")]["amortized_cost"] == d("1.5")
    assert monthly[key("AmazonEC2", "Credit")]["unblended_cost"] == d(-5)
    assert monthly[key("AmazonRDS", "Adjustment")]["amortized_cost"] == d(-2)
    assert len(monthly) == 7
    grand = total(monthly)
    assert grand["amortized_cost"] == d("149.374")
    assert grand["line_items"] == 12

    daily = expected_daily(_hand_items())
    assert daily[("2024-03", "2024-03-05", acct, "USD")]["amortized_cost"] == d("0.196")
    assert daily[("2024-03", "2024-03-06", acct, "USD")]["amortized_cost"] == d("0.078")
    assert total(daily) == grand

    focus = expected_focus_monthly(_hand_items())
    assert focus.keys() == monthly.keys()
    for figures in focus.values():
        assert figures["blended_cost"] is None
        assert figures["net_unblended_cost"] is None
        assert figures["net_amortized_cost"] is None
    assert total(focus)["amortized_cost"] == d("149.374")


def test_oracle_without_net_columns_gives_none() -> None:
    items = [i.replace(line_item_net_unblended_cost="") for i in _hand_items()]
    grand = total(expected_monthly(items))
    assert grand["net_unblended_cost"] is None
    assert grand["net_amortized_cost"] is None
    assert grand["unblended_cost"] == Decimal("991.478")


# --------------------------------------------------------------------------------------
# Legacy CSV


def test_legacy_csv_layout_manifest_and_round_trip(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_legacy_csv_export(
        tmp_path,
        prefix="cur",
        report="acme",
        period=MARCH,
        assembly_id="asm-1",
        items=items,
        files=2,
    )
    assert keys == [
        "cur/acme/20240301-20240401/asm-1/acme-1.csv.gz",
        "cur/acme/20240301-20240401/asm-1/acme-2.csv.gz",
    ]
    manifest_key = legacy_manifest_key("cur", "acme", MARCH)
    assert manifest_key == "cur/acme/20240301-20240401/acme-Manifest.json"
    manifest = json.loads((tmp_path / manifest_key).read_text())
    assert manifest["assemblyId"] == "asm-1"
    assert manifest["reportName"] == "acme"
    assert manifest["reportKeys"] == keys
    assert manifest["billingPeriod"] == {
        "start": "20240301T000000.000Z",
        "end": "20240401T000000.000Z",
    }
    assert manifest["compression"] == "GZIP"
    assert manifest["contentType"] == "text/csv"
    assert {"category": "lineItem", "name": "UnblendedCost", "type": "OptionalBigDecimal"} in (
        manifest["columns"]
    )
    copy = tmp_path / "cur/acme/20240301-20240401/asm-1/acme-Manifest.json"
    assert json.loads(copy.read_text()) == manifest

    rows = _gz_csv(tmp_path / keys[0]) + _gz_csv(tmp_path / keys[1])
    header = list(rows[0])
    assert "lineItem/UnblendedCost" in header
    assert "reservation/ReservationARN" in header
    assert "resourceTags/user:team" in header
    assert rows[0]["bill/BillingPeriodStartDate"] == "2024-03-01T00:00:00.000Z"
    assert len(rows) == len(items)
    read_back = read_legacy_csv_rows(tmp_path / keys[0]) + read_legacy_csv_rows(tmp_path / keys[1])
    assert expected_monthly(read_back) == expected_monthly(items)
    assert expected_daily(read_back) == expected_daily(items)


def test_legacy_csv_variants(tmp_path: Path, items: list[LineItem]) -> None:
    plain = write_legacy_csv_export(
        tmp_path,
        prefix="",
        report="r",
        period=MARCH,
        assembly_id="a",
        items=items,
        compression="none",
        write_manifest=False,
    )
    assert plain == ["r/20240301-20240401/a/r-1.csv"]
    assert not list(tmp_path.rglob("*Manifest.json"))
    zipped = write_legacy_csv_export(
        tmp_path,
        prefix="p/q",
        report="z",
        period=MARCH,
        assembly_id="a",
        items=items,
        compression="zip",
    )
    assert zipped == ["p/q/z/20240301-20240401/a/z-1.csv.zip"]
    with zipfile.ZipFile(tmp_path / zipped[0]) as archive:
        assert archive.namelist() == ["z-1.csv"]
        assert archive.read("z-1.csv") == (tmp_path / plain[0]).read_bytes()
    overwrite = write_legacy_csv_export(
        tmp_path,
        prefix="",
        report="o",
        period=MARCH,
        assembly_id="a",
        items=items,
        overwrite=True,
    )
    assert overwrite == ["o/20240301-20240401/o-1.csv.gz"]
    no_net = [i.replace(line_item_net_unblended_cost="") for i in items[:10]]
    no_net = [i.replace(**{f.name: "" for f in FIELDS if f.net}) for i in no_net]
    key = write_legacy_csv_export(
        tmp_path, prefix="", report="n", period=MARCH, assembly_id="a", items=no_net
    )[0]
    assert not any("Net" in h for h in _gz_csv(tmp_path / key)[0])


def test_written_files_are_deterministic(tmp_path: Path, items: list[LineItem]) -> None:
    contents = []
    for name in ("one", "two"):
        root = tmp_path / name
        write_legacy_csv_export(
            root, prefix="", report="r", period=MARCH, assembly_id="a", items=items
        )
        write_data_export(
            root,
            prefix="",
            export="e",
            period=MARCH,
            execution_id="x",
            items=items,
            uri_base="s3://bucket/",
        )
        contents.append({p.relative_to(root): p.read_bytes() for p in root.rglob("*.*")})
    assert contents[0] == contents[1]


# --------------------------------------------------------------------------------------
# Legacy Parquet


def test_legacy_parquet_layout_and_types(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_legacy_parquet(
        tmp_path,
        prefix="cur",
        report="athena",
        period=MARCH,
        items=items,
        files=2,
        row_group_size=100,
    )
    assert keys == [
        "cur/athena/athena/year=2024/month=3/athena-00001.snappy.parquet",
        "cur/athena/athena/year=2024/month=3/athena-00002.snappy.parquet",
    ]
    first = pq.ParquetFile(tmp_path / keys[0])
    assert first.metadata.num_row_groups == 3
    schema = first.schema_arrow
    assert schema.field("line_item_unblended_rate").type == pa.string()
    assert schema.field("pricing_public_on_demand_rate").type == pa.string()
    assert schema.field("line_item_unblended_cost").type == pa.float64()
    assert pa.types.is_timestamp(schema.field("line_item_usage_start_date").type)
    assert schema.field("resource_tags_user_team").type == pa.string()
    assert "bill_payer_account_name" not in schema.names
    table = pa.concat_tables(pq.read_table(tmp_path / k) for k in keys)
    assert table.num_rows == len(items)
    operations = table.column("line_item_operation").to_pylist()
    costs = table.column("line_item_unblended_cost").to_pylist()
    kept = [c for c, op in zip(costs, operations, strict=True) if op not in SPLIT_OPERATIONS]
    assert len(kept) < len(costs)
    assert _close(total(expected_monthly(items))["unblended_cost"], _dsum(kept))

    strings = write_legacy_parquet(
        tmp_path,
        prefix="",
        report="s",
        period=MARCH,
        items=items,
        string_columns={"line_item_unblended_cost"},
    )
    assert pq.read_schema(tmp_path / strings[0]).field("line_item_unblended_cost").type == (
        pa.string()
    )


# --------------------------------------------------------------------------------------
# CUR 2.0


def test_cur2_parquet_layout_manifest_and_types(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_data_export(
        tmp_path,
        prefix="cur",
        export="cur2",
        period=MARCH,
        execution_id="exec-1",
        items=items,
        files=2,
    )
    assert keys == [
        "cur/cur2/data/BILLING_PERIOD=2024-03/cur2-00001.snappy.parquet",
        "cur/cur2/data/BILLING_PERIOD=2024-03/cur2-00002.snappy.parquet",
    ]
    manifest_path = tmp_path / "cur/cur2/metadata/BILLING_PERIOD=2024-03/cur2-Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["exportName"] == "cur2"
    assert manifest["executionId"] == "exec-1"
    assert manifest["billingPeriod"] == {
        "start": "2024-03-01T00:00:00.000Z",
        "end": "2024-04-01T00:00:00.000Z",
    }
    assert manifest["dataFiles"] == [f"{tmp_path.resolve().as_uri()}/{k}" for k in keys]
    assert {"name": "line_item_unblended_cost", "type": "double"} in manifest["columns"]
    assert {"name": "product", "type": "map<string,string>"} in manifest["columns"]
    schema = pq.read_schema(tmp_path / keys[0])
    assert pa.types.is_map(schema.field("product").type)
    assert pa.types.is_map(schema.field("resource_tags").type)
    assert schema.field("line_item_unblended_cost").type == pa.float64()
    assert "bill_payer_account_name" in schema.names
    assert "line_item_usage_account_name" in schema.names
    assert "product_product_name" not in schema.names
    table = pa.concat_tables(pq.read_table(tmp_path / k) for k in keys)
    product = dict(table.column("product")[0].as_py())
    assert product["product_name"] == items[0].product_product_name
    raw = sum((Decimal(i.line_item_unblended_cost) for i in items), Decimal(0))
    assert _close(raw, _dsum(table.column("line_item_unblended_cost").to_pylist()))

    s3_keys = write_data_export(
        tmp_path,
        prefix="",
        export="s3",
        period=MARCH,
        execution_id="e",
        items=items,
        uri_base="s3://my-bucket",
    )
    s3_manifest = json.loads(
        (tmp_path / "s3/metadata/BILLING_PERIOD=2024-03/s3-Manifest.json").read_text()
    )
    assert s3_manifest["dataFiles"] == [f"s3://my-bucket/{s3_keys[0]}"]


def test_cur2_csv_versioned_round_trip(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_data_export(
        tmp_path,
        prefix="",
        export="c",
        period=MARCH,
        execution_id="abc",
        items=items,
        file_format="csv",
        versioned=True,
    )
    assert keys == ["c/data/BILLING_PERIOD=2024-03/20240305T010203Z-abc/c-00001.csv.gz"]
    rows = _gz_csv(tmp_path / keys[0])
    assert json.loads(rows[0]["product"])["product_name"]
    tagged = [r for r in rows if r["resource_tags"] != "{}"]
    assert tagged
    assert "user_team" in json.loads(tagged[0]["resource_tags"])
    assert expected_monthly(rows) == expected_monthly(items)
    assert expected_daily(rows) == expected_daily(items)


# --------------------------------------------------------------------------------------
# FOCUS


def test_focus_csv_conversion_matches_oracle(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_data_export(
        tmp_path,
        prefix="",
        export="f",
        period=MARCH,
        execution_id="x",
        items=items,
        file_format="csv",
        focus=True,
    )
    rows = _gz_csv(tmp_path / keys[0])
    assert list(rows[0]) == [name for name, _ in FOCUS_COLUMNS]
    split = sum(1 for i in items if i.line_item_operation in SPLIT_OPERATIONS)
    assert len(rows) == len(items) - split
    assert {r["ProviderName"] for r in rows} == {"AWS"}
    assert any(r["CommitmentDiscountId"] == "NULL" for r in rows)
    assert {r["ChargeCategory"] for r in rows} == {
        "Usage",
        "Purchase",
        "Tax",
        "Credit",
        "Adjustment",
    }
    assert expected_focus_rows_monthly(rows) == expected_focus_monthly(items)
    assert total(expected_focus_rows_daily(rows)) == total(expected_focus_monthly(items))
    manifest = json.loads(
        (tmp_path / "f/metadata/BILLING_PERIOD=2024-03/f-Manifest.json").read_text()
    )
    assert {"name": "BilledCost", "type": "decimal(38,10)"} in manifest["columns"]


def test_focus_parquet_types(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_data_export(
        tmp_path,
        prefix="",
        export="f",
        period=MARCH,
        execution_id="x",
        items=items,
        focus=True,
    )
    table = pq.read_table(tmp_path / keys[0])
    assert pa.types.is_decimal(table.schema.field("BilledCost").type)
    assert pa.types.is_decimal(table.schema.field("EffectiveCost").type)
    assert table.schema.field("ChargePeriodStart").type == pa.timestamp("ms", tz="UTC")
    billed = _dsum(table.column("BilledCost").to_pylist())
    effective = _dsum(table.column("EffectiveCost").to_pylist())
    grand = total(expected_focus_monthly(items))
    assert (billed, effective) == (grand["unblended_cost"], grand["amortized_cost"])


# --------------------------------------------------------------------------------------
# Real shared samples


@needs_shared
def test_shared_legacy_sample(tmp_path: Path) -> None:
    keys = write_shared_legacy_sample(tmp_path, LEGACY_SAMPLE, prefix="cur", assembly_id="a1")
    assert keys == ["cur/legacy/20231101-20231201/a1/legacy-1.csv.gz"]
    assert gzip.decompress((tmp_path / keys[0]).read_bytes()) == LEGACY_SAMPLE.read_bytes()
    manifest = json.loads(
        (tmp_path / "cur/legacy/20231101-20231201/legacy-Manifest.json").read_text()
    )
    assert manifest["assemblyId"] == "a1"
    assert manifest["reportKeys"] == keys
    assert manifest["billingPeriod"]["start"] == "20231101T000000.000Z"
    grand = total(expected_monthly(read_legacy_csv_rows(tmp_path / keys[0])))
    assert grand["unblended_cost"] == Decimal("1.68230869740")
    assert grand["line_items"] == 1281
    assert grand["net_unblended_cost"] is None
    daily = expected_daily(read_legacy_csv_rows(LEGACY_SAMPLE))
    assert len(daily) == 14
    assert daily[("2023-11", "2023-11-01", "123412340534", "USD")]["unblended_cost"] == Decimal(
        "0.0830106084"
    )


@needs_shared
def test_shared_focus_sample(tmp_path: Path) -> None:
    parquet_keys = write_shared_focus_sample(tmp_path, FOCUS_SAMPLE, prefix="", execution_id="e")
    assert parquet_keys == ["focus/data/BILLING_PERIOD=2024-09/focus-00001.snappy.parquet"]
    table = pq.read_table(tmp_path / parquet_keys[0])
    assert table.num_rows == 942
    assert set(table.column("ProviderName").to_pylist()) == {"AWS"}
    assert pa.types.is_decimal(table.schema.field("BilledCost").type)
    assert pa.types.is_timestamp(table.schema.field("ChargePeriodStart").type)
    assert _dsum(table.column("BilledCost").to_pylist()) == Decimal("18.00663861840")

    csv_keys = write_shared_focus_sample(
        tmp_path, FOCUS_SAMPLE, prefix="x", export="fc", file_format="csv"
    )
    assert csv_keys == ["x/fc/data/BILLING_PERIOD=2024-09/fc-00001.csv.gz"]
    rows = read_focus_csv_rows(tmp_path / csv_keys[0])
    assert len(rows) == 942
    assert {r["ProviderName"] for r in rows} == {"AWS"}
    assert any(r["ChargeClass"] == "NULL" for r in rows)
    grand = total(expected_focus_rows_monthly(rows))
    assert grand["unblended_cost"] == Decimal("18.00663861840")
    manifest = json.loads(
        (tmp_path / "x/fc/metadata/BILLING_PERIOD=2024-09/fc-Manifest.json").read_text()
    )
    assert manifest["billingPeriod"]["start"] == "2024-09-01T00:00:00.000Z"
    assert manifest["dataFiles"] == [f"{tmp_path.resolve().as_uri()}/{csv_keys[0]}"]


# --------------------------------------------------------------------------------------
# Demo tree and upload


def test_demo_tree(tmp_path: Path) -> None:
    started = time.perf_counter()
    tree = build_demo_tree(tmp_path / "demo", prefix="cur")
    assert time.perf_counter() - started < 2.0
    assert 2000 <= tree.row_count() <= 5000
    formats = {d.source_format for d in tree.datasets}
    assert formats == {SourceFormat.LEGACY_CSV, SourceFormat.CUR2_PARQUET, SourceFormat.FOCUS_CSV}
    for key in tree.current_keys() + tree.superseded_keys():
        assert (tree.root / key).is_file()
    february = [d for d in tree.datasets if d.period == date(2024, 2, 1)]
    assert [d.current for d in february] == [False, True]
    manifest = json.loads(
        (tree.root / legacy_manifest_key("cur", DEMO_LEGACY_REPORT, date(2024, 2, 1))).read_text()
    )
    current_february = february[1]
    assert manifest["assemblyId"] == current_february.version_id
    assert manifest["reportKeys"] == list(current_february.keys)
    assert set(tree.superseded_keys()).isdisjoint(manifest["reportKeys"])
    assert len(tree.current) == len(tree.periods) == 4
    monthly, daily = tree.expected_monthly(), tree.expected_daily()
    assert total(monthly) == total(daily)
    assert {k[0] for k in monthly} == {"2024-01", "2024-02", "2024-03", "2024-04"}
    april = [f for k, f in monthly.items() if k[0] == "2024-04"]
    assert all(f["blended_cost"] is None for f in april)
    for measure in MEASURES:
        assert total(monthly)[measure] is not None


def test_demo_tree_is_deterministic(tmp_path: Path) -> None:
    one = build_demo_tree(tmp_path / "one", uri_base="s3://b/")
    two = build_demo_tree(tmp_path / "two", uri_base="s3://b/")
    files_one = {p.relative_to(one.root): p.read_bytes() for p in one.root.rglob("*.*")}
    files_two = {p.relative_to(two.root): p.read_bytes() for p in two.root.rglob("*.*")}
    assert files_one == files_two
    assert one.expected_monthly() == two.expected_monthly()


class _RecordingS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def upload_file(self, Filename: str, Bucket: str, Key: str) -> None:
        self.objects[(Bucket, Key)] = Path(Filename).read_bytes()


def test_upload_tree_uses_relative_keys(tmp_path: Path, items: list[LineItem]) -> None:
    keys = write_legacy_csv_export(
        tmp_path, prefix="cur", report="r", period=MARCH, assembly_id="a", items=items
    )
    client = _RecordingS3()
    count = upload_tree(tmp_path, client, "bucket")
    assert count == 3  # data file + period manifest + assembly copy
    assert ("bucket", keys[0]) in client.objects
    assert ("bucket", "cur/r/20240301-20240401/r-Manifest.json") in client.objects
    body = client.objects[("bucket", keys[0])]
    assert next(csv.reader(io.StringIO(gzip.decompress(body).decode())))[0] == (
        "identity/LineItemId"
    )
