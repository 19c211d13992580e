"""Column normalisation, format detection and the canonical column mapping."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cur_ray.domain.billing import SourceFormat
from cur_ray.domain.columns import (
    CUR_COLUMNS,
    REQUIRED_COLUMNS,
    SOURCE_COLUMNS,
    columns_to_read,
    detect_format,
    missing_required_columns,
    normalise_column_name,
)
from cur_ray.errors import FileFormatError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LEGACY_SAMPLE = DATA / "aws-cur-legacy-sample.csv"
FOCUS_SAMPLE = DATA / "focus-1.0-sample.csv"

CUR2_PARQUET_COLUMNS = [
    "bill_bill_type",
    "bill_billing_period_start_date",
    "bill_payer_account_id",
    "bill_payer_account_name",
    "line_item_line_item_type",
    "line_item_usage_start_date",
    "line_item_usage_account_id",
    "line_item_usage_account_name",
    "line_item_product_code",
    "line_item_currency_code",
    "line_item_unblended_cost",
    "line_item_net_unblended_cost",
    "product",
    "resource_tags",
]
LEGACY_PARQUET_COLUMNS = [
    "identity_line_item_id",
    "bill_billing_period_start_date",
    "line_item_line_item_type",
    "line_item_usage_start_date",
    "line_item_usage_account_id",
    "line_item_product_code",
    "line_item_currency_code",
    "line_item_unblended_cost",
    "product_product_name",
    "reservation_reservation_a_r_n",
]
FOCUS_COLUMNS_MIN = [
    "BilledCost",
    "EffectiveCost",
    "BillingPeriodStart",
    "ChargePeriodStart",
    "BillingCurrency",
    "ChargeCategory",
    "ServiceName",
    "SubAccountId",
]


def _header(path: Path) -> list[str]:
    if not path.exists():
        pytest.skip(f"reference data {path} is missing (see shared/data/README.md)")
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("lineItem/UnblendedCost", "line_item_unblended_cost"),
        ("reservation/ReservationARN", "reservation_reservation_a_r_n"),
        ("pricing/publicOnDemandCost", "pricing_public_on_demand_cost"),
        ("product/ProductName", "product_product_name"),
        ("savingsPlan/SavingsPlanEffectiveCost", "savings_plan_savings_plan_effective_cost"),
        ("bill/BillingPeriodStartDate", "bill_billing_period_start_date"),
        ("identity/LineItemId", "identity_line_item_id"),
        ("product/servicecode", "product_servicecode"),
        ("resourceTags/user:Team", "resource_tags_user_team"),
        ("\ufefflineItem/UsageAccountId", "line_item_usage_account_id"),
        ("line_item_unblended_cost", "line_item_unblended_cost"),
        ("product", "product"),
        ("BilledCost", "BilledCost"),
        ("x_ServiceCode", "x_ServiceCode"),
        (" ChargePeriodStart ", "ChargePeriodStart"),
    ],
)
def test_normalise_column_name(source: str, expected: str) -> None:
    assert normalise_column_name(source) == expected


def test_every_legacy_csv_name_normalises_to_its_canonical_name() -> None:
    for spec in CUR_COLUMNS:
        if spec.legacy_csv is not None:
            assert normalise_column_name(spec.legacy_csv) == spec.canonical


def test_source_mapping_per_format() -> None:
    legacy = SOURCE_COLUMNS[SourceFormat.LEGACY_CSV]
    assert legacy["line_item_unblended_cost"] == "lineItem/UnblendedCost"
    assert legacy["reservation_reservation_a_r_n"] == "reservation/ReservationARN"
    assert "product" not in legacy
    cur2 = SOURCE_COLUMNS[SourceFormat.CUR2_PARQUET]
    assert cur2["line_item_unblended_cost"] == "line_item_unblended_cost"
    assert cur2["product"] == "product"
    assert SOURCE_COLUMNS[SourceFormat.FOCUS_CSV]["BilledCost"] == "BilledCost"
    assert "line_item_net_unblended_cost" not in REQUIRED_COLUMNS[SourceFormat.CUR2_CSV]
    assert "line_item_unblended_cost" in REQUIRED_COLUMNS[SourceFormat.LEGACY_PARQUET]
    assert "BilledCost" in REQUIRED_COLUMNS[SourceFormat.FOCUS_PARQUET]


def test_detects_the_real_legacy_csv_header() -> None:
    header = _header(LEGACY_SAMPLE)
    assert detect_format(header, parquet=False) is SourceFormat.LEGACY_CSV
    mapping = columns_to_read(header, SourceFormat.LEGACY_CSV)
    assert mapping["line_item_unblended_cost"] == "lineItem/UnblendedCost"
    assert mapping["product_product_name"] == "product/ProductName"
    # Optional columns this file lacks are absent, not an error.
    assert "line_item_net_unblended_cost" not in mapping
    assert "reservation_reservation_a_r_n" not in mapping
    # Only the needed columns out of 94.
    assert len(mapping) < 25


def test_detects_the_real_focus_header() -> None:
    header = _header(FOCUS_SAMPLE)
    assert detect_format(header, parquet=False) is SourceFormat.FOCUS_CSV
    assert detect_format(header, parquet=True) is SourceFormat.FOCUS_PARQUET
    mapping = columns_to_read(header, SourceFormat.FOCUS_CSV)
    assert set(FOCUS_COLUMNS_MIN) <= set(mapping)
    assert "x_ServiceCode" not in mapping


def test_cur2_parquet_is_told_from_legacy_athena_parquet() -> None:
    assert detect_format(CUR2_PARQUET_COLUMNS, parquet=True) is SourceFormat.CUR2_PARQUET
    assert detect_format(LEGACY_PARQUET_COLUMNS, parquet=True) is SourceFormat.LEGACY_PARQUET
    assert detect_format(CUR2_PARQUET_COLUMNS, parquet=False) is SourceFormat.CUR2_CSV
    assert detect_format(LEGACY_PARQUET_COLUMNS, parquet=False) is SourceFormat.CUR2_CSV


def test_cur2_reads_the_product_map_only_without_a_product_name_column() -> None:
    cur2 = columns_to_read(CUR2_PARQUET_COLUMNS, SourceFormat.CUR2_PARQUET)
    assert cur2["product"] == "product"
    assert "resource_tags" not in cur2
    legacy = columns_to_read(LEGACY_PARQUET_COLUMNS, SourceFormat.LEGACY_PARQUET)
    assert "product" not in legacy
    assert legacy["reservation_reservation_a_r_n"] == "reservation_reservation_a_r_n"
    both = columns_to_read(
        [*CUR2_PARQUET_COLUMNS, "product_product_name"], SourceFormat.CUR2_PARQUET
    )
    assert "product" not in both


def test_matching_tolerates_case_drift() -> None:
    header = [*_header(LEGACY_SAMPLE), "reservation/ReservationArn", "lineItem/NetUnblendedCost"]
    mapping = columns_to_read(header, SourceFormat.LEGACY_CSV)
    assert mapping["reservation_reservation_a_r_n"] == "reservation/ReservationArn"
    assert mapping["line_item_net_unblended_cost"] == "lineItem/NetUnblendedCost"


def test_unrelated_header_fails_clearly() -> None:
    with pytest.raises(FileFormatError) as caught:
        detect_format(["name", "email", "amount"], parquet=False)
    message = str(caught.value)
    assert "unrecognised CUR CSV header" in message
    assert "lineItem/UnblendedCost" in message
    assert "BilledCost" in message
    assert "name, email, amount" in message


def test_missing_required_columns_are_named() -> None:
    header = [h for h in _header(LEGACY_SAMPLE) if h not in {"lineItem/UsageStartDate"}]
    header.remove("lineItem/CurrencyCode")
    assert missing_required_columns(header, SourceFormat.LEGACY_CSV) == [
        "lineItem/UsageStartDate",
        "lineItem/CurrencyCode",
    ]
    with pytest.raises(FileFormatError, match=r"lineItem/UsageStartDate, lineItem/CurrencyCode"):
        detect_format(header, parquet=False)
    with pytest.raises(FileFormatError, match="FOCUS CSV header is missing required columns"):
        detect_format(["BilledCost", "ServiceName"], parquet=False)
    with pytest.raises(FileFormatError, match="missing required columns"):
        columns_to_read(["line_item_unblended_cost"], SourceFormat.CUR2_PARQUET)


def test_parquet_with_csv_style_names_is_refused() -> None:
    with pytest.raises(FileFormatError, match="legacy CSV column names"):
        detect_format(_header(LEGACY_SAMPLE), parquet=True)
