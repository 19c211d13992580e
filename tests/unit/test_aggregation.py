"""Aggregation rules of SPEC §4 on small hand-built tables (no I/O)."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Mapping, Sequence
from decimal import Decimal, localcontext
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cur_ray.domain.aggregation import (
    DECIMAL_TYPE,
    PARTIAL_SCHEMA,
    aggregate,
    aggregate_batches,
    merge_partials,
)
from cur_ray.domain.billing import SourceFormat
from cur_ray.errors import AmountOutOfRangeError, FileFormatError

CUR = SourceFormat.CUR2_PARQUET
ACCOUNT = "123456789012"
BASE: dict[str, str | None] = {
    "bill_billing_period_start_date": "2024-03-01T00:00:00.000Z",
    "line_item_usage_start_date": "2024-03-05T10:00:00.000Z",
    "line_item_usage_account_id": ACCOUNT,
    "line_item_line_item_type": "Usage",
    "line_item_product_code": "AmazonEC2",
    "line_item_currency_code": "USD",
    "line_item_unblended_cost": "0",
}


def cur_table(rows: Sequence[Mapping[str, str | None]], *columns: str) -> pa.Table:
    """A CUR batch of string columns: BASE values, overridden per row; extra ``columns``."""
    names = list(BASE)
    for row in rows:
        names += [c for c in row if c not in names]
    names += [c for c in columns if c not in names]
    return pa.table(
        {n: pa.array([row.get(n, BASE.get(n)) for row in rows], pa.string()) for n in names}
    )


def monthly(partials: pa.Table) -> dict[tuple[str, str], dict[str, Any]]:
    rows = partials.filter(pc.equal(partials["grain"], pa.scalar("monthly"))).to_pylist()
    return {(r["service_code"], r["charge_category"]): r for r in rows}


def daily(partials: pa.Table) -> dict[dt.date, dict[str, Any]]:
    rows = partials.filter(pc.equal(partials["grain"], pa.scalar("daily"))).to_pylist()
    return {r["usage_date"]: r for r in rows}


def total(partials: pa.Table, measure: str, grain: str = "monthly") -> Decimal | None:
    values = partials.filter(pc.equal(partials["grain"], pa.scalar(grain)))[measure].to_pylist()
    if all(v is None for v in values):
        return None
    return sum((v for v in values if v is not None), Decimal(0))


# --------------------------------------------------------------------------------- formulas

SP_RI_COLUMNS = (
    "line_item_net_unblended_cost",
    "line_item_blended_cost",
    "pricing_public_on_demand_cost",
    "savings_plan_savings_plan_effective_cost",
    "savings_plan_net_savings_plan_effective_cost",
    "savings_plan_total_commitment_to_date",
    "savings_plan_used_commitment",
    "reservation_effective_cost",
    "reservation_net_effective_cost",
    "reservation_unused_amortized_upfront_fee_for_billing_period",
    "reservation_net_unused_amortized_upfront_fee_for_billing_period",
    "reservation_unused_recurring_fee",
    "reservation_net_unused_recurring_fee",
    "reservation_reservation_a_r_n",
    "line_item_operation",
)

# One row per case; product codes name the case so every case gets its own monthly row.
# (code, line item type, columns, expected amortized, net amortized, list, category)
CASES: list[tuple[str, str, dict[str, str], str, str, str, str]] = [
    (
        "sp-covered",
        "SavingsPlanCoveredUsage",
        {
            "line_item_unblended_cost": "10",
            "line_item_net_unblended_cost": "9",
            "pricing_public_on_demand_cost": "10",
            "savings_plan_savings_plan_effective_cost": "7.25",
            "savings_plan_net_savings_plan_effective_cost": "6.5",
        },
        "7.25",
        "6.5",
        "10",
        "Usage",
    ),
    (
        "sp-negation",
        "SavingsPlanNegation",
        {
            "line_item_unblended_cost": "-10",
            "line_item_net_unblended_cost": "-9",
            "pricing_public_on_demand_cost": "10",
        },
        "0",
        "0",
        "0",
        "Usage",
    ),
    (
        "sp-recurring",
        "SavingsPlanRecurringFee",
        {
            "line_item_unblended_cost": "5",
            "line_item_net_unblended_cost": "4.5",
            "savings_plan_total_commitment_to_date": "5",
            "savings_plan_used_commitment": "3.75",
        },
        "1.25",
        "1.25",  # no net commitment columns exist: same formula
        "0",
        "Purchase",
    ),
    (
        "sp-upfront",
        "SavingsPlanUpfrontFee",
        {"line_item_unblended_cost": "100", "line_item_net_unblended_cost": "95"},
        "0",
        "0",
        "0",
        "Purchase",
    ),
    (
        "ri-usage",
        "DiscountedUsage",
        {
            "line_item_unblended_cost": "0",
            "line_item_net_unblended_cost": "0",
            "pricing_public_on_demand_cost": "4",
            "reservation_effective_cost": "3.25",
            "reservation_net_effective_cost": "3.0",
        },
        "3.25",
        "3.0",
        "4",
        "Usage",
    ),
    (
        "ri-fee",
        "RIFee",
        {
            "line_item_unblended_cost": "50",
            "line_item_net_unblended_cost": "48",
            "reservation_unused_amortized_upfront_fee_for_billing_period": "2.5",
            "reservation_unused_recurring_fee": "1.25",
            "reservation_net_unused_amortized_upfront_fee_for_billing_period": "2",
            "reservation_net_unused_recurring_fee": "1",
        },
        "3.75",
        "3",
        "0",
        "Purchase",
    ),
    (
        "ri-upfront",
        "Fee",
        {
            "line_item_unblended_cost": "1000",
            "line_item_net_unblended_cost": "950",
            "reservation_reservation_a_r_n": "arn:aws:ec2:us-east-1:123456789012:ri/r",
        },
        "0",
        "0",
        "0",
        "Purchase",
    ),
    (
        "support-fee",
        "Fee",
        {
            "line_item_unblended_cost": "29",
            "line_item_net_unblended_cost": "27.55",
            "reservation_reservation_a_r_n": "",
        },
        "29",
        "27.55",
        "0",
        "Purchase",
    ),
    (
        "tax",
        "Tax",
        {"line_item_unblended_cost": "0.08", "line_item_net_unblended_cost": "0.08"},
        "0.08",
        "0.08",
        "0",
        "Tax",
    ),
    (
        "credit",
        "Credit",
        {"line_item_unblended_cost": "-2.6137", "line_item_net_unblended_cost": "-2.6137"},
        "-2.6137",
        "-2.6137",
        "0",
        "Credit",
    ),
    (
        "refund",
        "Refund",
        {"line_item_unblended_cost": "-1", "line_item_net_unblended_cost": "-1"},
        "-1",
        "-1",
        "0",
        "Adjustment",
    ),
    (
        "usage",
        "Usage",
        {
            "line_item_unblended_cost": "1.0E-5",
            "line_item_net_unblended_cost": "0.000009",
            "line_item_blended_cost": "0.00002",
            "pricing_public_on_demand_cost": "1.5e-5",
        },
        "0.00001",
        "0.000009",
        "0.000015",
        "Usage",
    ),
]


def _case_rows() -> list[dict[str, str | None]]:
    rows: list[dict[str, str | None]] = []
    for code, line_item_type, columns, *_ in CASES:
        rows.append(
            {"line_item_product_code": code, "line_item_line_item_type": line_item_type, **columns}
        )
    return rows


def test_amortized_net_amortized_list_cost_and_categories_per_line_item_type() -> None:
    partials = aggregate(cur_table(_case_rows(), *SP_RI_COLUMNS), CUR)
    assert partials.schema == PARTIAL_SCHEMA
    by_key = monthly(partials)
    assert len(by_key) == len(CASES)
    for code, _, columns, amortized, net_amortized, listed, category in CASES:
        row = by_key[(code, category)]
        assert row["unblended_cost"] == Decimal(columns["line_item_unblended_cost"]), code
        assert row["net_unblended_cost"] == Decimal(columns["line_item_net_unblended_cost"]), code
        assert row["amortized_cost"] == Decimal(amortized), code
        assert row["net_amortized_cost"] == Decimal(net_amortized), code
        assert row["list_cost"] == Decimal(listed), code
        assert row["line_items"] == 1
        assert row["usage_date"] is None
        assert row["service_name"] == code  # no product name column: falls back to the code


def test_split_cost_allocation_rows_are_excluded_entirely() -> None:
    rows: list[dict[str, str | None]] = [
        {"line_item_unblended_cost": "1.5", "line_item_operation": "RunInstances"},
        {"line_item_unblended_cost": "7", "line_item_operation": "EKSPod-EC2"},
        {"line_item_unblended_cost": "9", "line_item_operation": "ECSTask-EC2"},
        {"line_item_unblended_cost": "2", "line_item_operation": None},
    ]
    partials = aggregate(cur_table(rows), CUR)
    assert total(partials, "unblended_cost") == Decimal("3.5")
    assert total(partials, "line_items") == 2
    assert total(partials, "unblended_cost", "daily") == Decimal("3.5")

    only_excluded = aggregate(cur_table(rows[1:3]), CUR)
    assert only_excluded.num_rows == 0
    assert only_excluded.schema == PARTIAL_SCHEMA


def test_absent_columns_give_null_measures_and_count_as_zero_in_formulas() -> None:
    rows: list[dict[str, str | None]] = [
        {"line_item_line_item_type": "SavingsPlanCoveredUsage", "line_item_unblended_cost": "4"},
        {"line_item_line_item_type": "RIFee", "line_item_unblended_cost": "6"},
        {"line_item_line_item_type": "Usage", "line_item_unblended_cost": "1"},
    ]
    partials = aggregate(cur_table(rows), CUR)
    assert total(partials, "unblended_cost") == Decimal(11)
    # No SP/RI columns: their formula terms are 0.
    assert total(partials, "amortized_cost") == Decimal(1)
    for measure in ("blended_cost", "net_unblended_cost", "net_amortized_cost", "list_cost"):
        assert total(partials, measure) is None, measure
        assert total(partials, measure, "daily") is None, measure


def test_empty_blended_and_net_values_are_null_per_row() -> None:
    # CUR 2.0 always has the net columns; without private pricing they are empty.
    rows: list[dict[str, str | None]] = [
        {"line_item_unblended_cost": "5", "line_item_line_item_type": "Usage"},
        {"line_item_unblended_cost": "0.08", "line_item_line_item_type": "Tax"},
    ]
    empty = aggregate(
        cur_table(rows, "line_item_net_unblended_cost", "line_item_blended_cost"), CUR
    )
    for measure in ("blended_cost", "net_unblended_cost", "net_amortized_cost"):
        assert total(empty, measure) is None, measure
        assert total(empty, measure, "daily") is None, measure
    assert total(empty, "amortized_cost") == Decimal("5.08")

    mixed_rows: list[dict[str, str | None]] = [
        {
            "line_item_line_item_type": "SavingsPlanCoveredUsage",
            "line_item_unblended_cost": "10",
            "line_item_net_unblended_cost": "9",
            "savings_plan_net_savings_plan_effective_cost": "6",
        },
        {
            # No net value on this row: its net amortized cost is null too, although the
            # formula would find a net effective cost.
            "line_item_line_item_type": "SavingsPlanCoveredUsage",
            "line_item_unblended_cost": "10",
            "line_item_net_unblended_cost": "",
            "savings_plan_net_savings_plan_effective_cost": "6",
        },
    ]
    mixed = monthly(aggregate(cur_table(mixed_rows), CUR))[("AmazonEC2", "Usage")]
    assert mixed["net_unblended_cost"] == Decimal(9)
    assert mixed["net_amortized_cost"] == Decimal(6)
    assert mixed["unblended_cost"] == Decimal(20)


def test_blank_null_and_exponent_strings() -> None:
    rows: list[dict[str, str | None]] = [
        {"line_item_unblended_cost": "1.0E-5", "line_item_blended_cost": ""},
        {"line_item_unblended_cost": "-2.6137", "line_item_blended_cost": "NULL"},
        {"line_item_unblended_cost": None, "line_item_blended_cost": " 3 "},
        {"line_item_unblended_cost": "", "line_item_blended_cost": "1e2"},
        {"line_item_unblended_cost": "0.123456789012345678", "line_item_blended_cost": "+1"},
    ]
    partials = aggregate(cur_table(rows), CUR)
    assert total(partials, "unblended_cost") == Decimal("1.0E-5") + Decimal("-2.6137") + Decimal(
        "0.123456789012345678"
    )
    assert total(partials, "blended_cost") == Decimal(104)
    assert total(partials, "line_items") == 5


def test_more_than_18_decimals_round_and_garbage_fails() -> None:
    rows: list[dict[str, str | None]] = [{"line_item_unblended_cost": "0.0000000000000000015"}]
    assert total(aggregate(cur_table(rows), CUR), "unblended_cost") == Decimal("2E-18")
    with pytest.raises(FileFormatError, match="line_item_unblended_cost"):
        aggregate(cur_table([{"line_item_unblended_cost": "12,5"}]), CUR)
    with pytest.raises(FileFormatError, match="line_item_usage_start_date"):
        aggregate(cur_table([{"line_item_usage_start_date": "yesterday"}]), CUR)


def test_exact_sum_of_many_small_values() -> None:
    values = [f"{random.Random(i).randint(-(10**9), 10**9) / 10**10:.10f}" for i in range(5000)]
    table = cur_table([{"line_item_unblended_cost": v} for v in values])
    expected = sum((Decimal(v) for v in values), Decimal(0))
    assert total(aggregate(table, CUR), "unblended_cost") == expected


def test_double_columns_are_converted_through_their_shortest_text() -> None:
    table = cur_table([{}, {}])
    table = table.set_column(
        table.schema.get_field_index("line_item_unblended_cost"),
        "line_item_unblended_cost",
        pa.array([0.1, 0.2], pa.float64()),
    )
    table = table.append_column("line_item_blended_cost", pa.array([1e-5, 1.2345e-17]))
    partials = aggregate(table, CUR)
    assert total(partials, "unblended_cost") == Decimal("0.3")
    assert total(partials, "blended_cost") == Decimal("0.00001") + Decimal("1.2E-17")


def test_decimal_and_integer_typed_columns() -> None:
    table = cur_table([{}, {}])
    table = table.set_column(
        table.schema.get_field_index("line_item_unblended_cost"),
        "line_item_unblended_cost",
        pa.array([Decimal("1.25"), Decimal("2.5")], pa.decimal128(20, 10)),
    )
    table = table.append_column("line_item_blended_cost", pa.array([3, 4], pa.int64()))
    partials = aggregate(table, CUR)
    assert total(partials, "unblended_cost") == Decimal("3.75")
    assert total(partials, "blended_cost") == Decimal(7)
    assert partials.schema.field("unblended_cost").type == DECIMAL_TYPE


@pytest.mark.parametrize(
    "stamp",
    [
        "2023-11-01T23:00:00.000Z",
        "2023-11-01T23:00:00Z",
        "2023-11-01 23:00:00",
        "2023-11-01T23:00:00",
        "2023-11-02T08:00:00+09:00",
        "2023-11-01T18:00:00-0500",
        "2023-11-01",
    ],
)
def test_usage_date_is_the_utc_date_of_string_timestamps(stamp: str) -> None:
    table = cur_table(
        [
            {
                "line_item_usage_start_date": stamp,
                "bill_billing_period_start_date": "2023-11-01T00:00:00Z",
                "line_item_unblended_cost": "1",
            }
        ]
    )
    days = daily(aggregate(table, CUR))
    assert list(days) == [dt.date(2023, 11, 1)]
    assert days[dt.date(2023, 11, 1)]["billing_period"] == dt.date(2023, 11, 1)


def test_arrow_timestamps_naive_and_zoned() -> None:
    # 2023-11-30 20:00 in Los Angeles is 2023-12-01 04:00 UTC.
    instant = dt.datetime(2023, 12, 1, 4, 0, tzinfo=dt.UTC)
    table = cur_table([{}, {}, {}])
    usage = pa.array([instant, instant, instant], pa.timestamp("us", "UTC")).cast(
        pa.timestamp("us", "America/Los_Angeles")
    )
    table = table.set_column(1, "line_item_usage_start_date", usage)
    billing = pa.array([dt.datetime(2023, 12, 1)] * 3, pa.timestamp("ms"))
    table = table.set_column(0, "bill_billing_period_start_date", billing)
    days = daily(aggregate(table, CUR))
    assert list(days) == [dt.date(2023, 12, 1)]
    assert days[dt.date(2023, 12, 1)]["billing_period"] == dt.date(2023, 12, 1)
    assert days[dt.date(2023, 12, 1)]["line_items"] == 3


def test_billing_period_is_the_first_day_of_the_month() -> None:
    table = cur_table([{"bill_billing_period_start_date": "2024-02-15T00:00:00Z"}])
    partials = aggregate(table, CUR)
    assert set(partials["billing_period"].to_pylist()) == {dt.date(2024, 2, 1)}


def test_grains_and_row_shape() -> None:
    rows: list[dict[str, str | None]] = [
        {"line_item_usage_start_date": "2024-03-05T10:00:00Z", "line_item_unblended_cost": "1"},
        {"line_item_usage_start_date": "2024-03-05T11:00:00Z", "line_item_unblended_cost": "2"},
        {
            "line_item_usage_start_date": "2024-03-06T00:00:00Z",
            "line_item_unblended_cost": "4",
            "line_item_product_code": "awskms",
            "product_product_name": "AWS Key Management Service",
        },
        {
            "line_item_usage_start_date": "2024-03-06T00:00:00Z",
            "line_item_unblended_cost": "8",
            "line_item_line_item_type": "Tax",
            "line_item_usage_account_id": "000011112222",
        },
    ]
    partials = aggregate(cur_table(rows), CUR)
    assert partials.schema == PARTIAL_SCHEMA
    days = partials.filter(pc.equal(partials["grain"], pa.scalar("daily"))).to_pylist()
    assert [(d["usage_date"], d["usage_account_id"], d["unblended_cost"]) for d in days] == [
        (dt.date(2024, 3, 5), ACCOUNT, Decimal(3)),
        (dt.date(2024, 3, 6), "000011112222", Decimal(8)),
        (dt.date(2024, 3, 6), ACCOUNT, Decimal(4)),
    ]
    for d in days:
        assert (d["service_code"], d["service_name"], d["charge_category"]) == ("", "", "")
        assert d["currency"] == "USD"
    months = monthly(partials)
    assert set(months) == {("AmazonEC2", "Usage"), ("AmazonEC2", "Tax"), ("awskms", "Usage")}
    assert months[("awskms", "Usage")]["service_name"] == "AWS Key Management Service"
    assert months[("AmazonEC2", "Usage")]["line_items"] == 2
    assert months[("AmazonEC2", "Tax")]["usage_account_id"] == "000011112222"
    # Sorted by the keys: daily rows first, then monthly.
    assert partials["grain"].to_pylist() == ["daily"] * 3 + ["monthly"] * 3


def test_service_name_is_the_largest_non_empty_name() -> None:
    rows: list[dict[str, str | None]] = [
        {"product_product_name": ""},
        {"product_product_name": "Amazon Elastic Compute Cloud"},
        {"product_product_name": None},
        {"line_item_product_code": "AWSSupport", "product_product_name": ""},
    ]
    months = monthly(aggregate(cur_table(rows), CUR))
    assert months[("AmazonEC2", "Usage")]["service_name"] == "Amazon Elastic Compute Cloud"
    assert months[("AWSSupport", "Usage")]["service_name"] == "AWSSupport"


def test_cur2_product_map_and_json_product_column() -> None:
    table = cur_table([{}, {"line_item_product_code": "AmazonS3"}])
    product = pa.array(
        [
            [("product_name", "Amazon Elastic Compute Cloud"), ("region", "us-east-1")],
            [("region", "us-east-1"), ("product_name", "Amazon Simple Storage Service")],
        ],
        pa.map_(pa.string(), pa.string()),
    )
    months = monthly(aggregate(table.append_column("product", product), CUR))
    assert months[("AmazonEC2", "Usage")]["service_name"] == "Amazon Elastic Compute Cloud"
    assert months[("AmazonS3", "Usage")]["service_name"] == "Amazon Simple Storage Service"

    as_json = pa.array(
        [
            '{"product_name":"Amazon Elastic Compute Cloud","region":"us-east-1"}',
            '{"region": "us-east-1", "product_name": "Amazon Simple Storage Service"}',
        ]
    )
    months = monthly(aggregate(table.append_column("product", as_json), SourceFormat.CUR2_CSV))
    assert months[("AmazonS3", "Usage")]["service_name"] == "Amazon Simple Storage Service"


def test_dictionary_encoded_columns_give_the_same_result() -> None:
    rows = _case_rows()
    plain = cur_table(rows, *SP_RI_COLUMNS)
    encoded = pa.table(
        {
            name: pc.dictionary_encode(column) if name != "line_item_unblended_cost" else column
            for name, column in zip(plain.column_names, plain.columns, strict=True)
        }
    )
    assert aggregate(encoded, CUR).equals(aggregate(plain, CUR))


def test_integer_account_ids_keep_their_leading_zeros() -> None:
    table = cur_table([{}])
    table = table.set_column(2, "line_item_usage_account_id", pa.array([11112222], pa.int64()))
    assert set(aggregate(table, CUR)["usage_account_id"].to_pylist()) == {"000011112222"}


def test_missing_dates_fail() -> None:
    with pytest.raises(FileFormatError, match="1 line items have no"):
        aggregate(cur_table([{}, {"bill_billing_period_start_date": ""}]), CUR)


# ------------------------------------------------------------------------------------ FOCUS


def focus_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    base = {
        "BilledCost": "0",
        "EffectiveCost": "0",
        "ListCost": "0",
        "BillingPeriodStart": "2024-09-01 00:00:00",
        "ChargePeriodStart": "2024-09-18 22:00:00",
        "BillingCurrency": "USD",
        "ChargeCategory": "Usage",
        "ServiceName": "Amazon Elastic Compute Cloud",
        "SubAccountId": "111122223333",
    }
    names = list(base) + [c for row in rows for c in row if c not in base]
    return pa.table(
        {n: pa.array([row.get(n, base.get(n)) for row in rows], pa.string()) for n in names}
    )


def test_focus_split_cost_rows_are_excluded() -> None:
    rows: list[dict[str, str | None]] = [
        {"BilledCost": "1", "x_Operation": "RunInstances"},
        {"BilledCost": "2", "x_Operation": "EKSPod-EC2"},
        {"BilledCost": "4", "x_Operation": None},
    ]
    partials = aggregate(focus_table(rows), SourceFormat.FOCUS_PARQUET)
    assert total(partials, "unblended_cost") == Decimal(5)
    assert total(partials, "line_items") == 2


def test_focus_measures_and_dimensions() -> None:
    rows: list[dict[str, str | None]] = [
        {
            "BilledCost": "1.5",
            "EffectiveCost": "1.25",
            "ListCost": "2",
            "x_ServiceCode": "AmazonEC2",
        },
        {"BilledCost": "0.5", "EffectiveCost": "0.5", "ListCost": "0.5", "x_ServiceCode": None},
        {
            "BilledCost": "-2.6137",
            "EffectiveCost": "-2.6137",
            "ListCost": "0",
            "ChargeCategory": "Credit",
            "SubAccountId": None,
            "ChargePeriodStart": "2024-09-30T23:00:00Z",
        },
    ]
    partials = aggregate(focus_table(rows), SourceFormat.FOCUS_CSV)
    months = monthly(partials)
    assert set(months) == {
        ("AmazonEC2", "Usage"),
        ("Amazon Elastic Compute Cloud", "Usage"),
        ("Amazon Elastic Compute Cloud", "Credit"),
    }
    ec2 = months[("AmazonEC2", "Usage")]
    assert (ec2["unblended_cost"], ec2["amortized_cost"], ec2["list_cost"]) == (
        Decimal("1.5"),
        Decimal("1.25"),
        Decimal(2),
    )
    assert ec2["service_name"] == "Amazon Elastic Compute Cloud"
    assert ec2["blended_cost"] is None
    assert ec2["net_unblended_cost"] is None
    assert ec2["net_amortized_cost"] is None
    credit = months[("Amazon Elastic Compute Cloud", "Credit")]
    assert credit["usage_account_id"] == ""  # SubAccountId is the account, even when null
    assert credit["billing_period"] == dt.date(2024, 9, 1)
    assert sorted(daily(partials)) == [dt.date(2024, 9, 18), dt.date(2024, 9, 30)]
    assert total(partials, "unblended_cost", "daily") == Decimal("-0.6137")


# ------------------------------------------------------------------------------------ merge


def _random_rows(count: int, seed: int) -> list[dict[str, str | None]]:
    rnd = random.Random(seed)
    types = ["Usage", "Usage", "Tax", "Credit", "SavingsPlanCoveredUsage", "RIFee", "Fee"]
    rows: list[dict[str, str | None]] = []
    for _ in range(count):
        day = rnd.randint(1, 28)
        rows.append(
            {
                "line_item_usage_start_date": f"2024-02-{day:02d}T{rnd.randint(0, 23):02d}:00:00Z",
                "bill_billing_period_start_date": "2024-02-01T00:00:00Z",
                "line_item_usage_account_id": rnd.choice(["111111111111", "222222222222"]),
                "line_item_product_code": rnd.choice(["AmazonEC2", "AmazonS3", "awskms"]),
                "product_product_name": rnd.choice(["", "Some Name", "Other Name"]),
                "line_item_line_item_type": rnd.choice(types),
                "line_item_currency_code": rnd.choice(["USD", "USD", "EUR"]),
                "line_item_unblended_cost": f"{rnd.uniform(-5, 50):.10f}",
                "line_item_net_unblended_cost": f"{rnd.uniform(-5, 50):.10f}",
                "pricing_public_on_demand_cost": rnd.choice(["", f"{rnd.uniform(0, 9):.8f}"]),
                "savings_plan_savings_plan_effective_cost": f"{rnd.uniform(0, 3):.6f}",
                "reservation_unused_recurring_fee": f"{rnd.uniform(0, 3):.6f}",
                "reservation_reservation_a_r_n": rnd.choice(["", "arn:aws:ec2:ri/1"]),
            }
        )
    return rows


def test_merging_partials_of_split_batches_equals_aggregating_the_whole() -> None:
    table = cur_table(_random_rows(3000, seed=7))
    whole = aggregate(table, CUR)
    cuts = sorted(random.Random(3).sample(range(1, table.num_rows), 5))
    bounds = [0, *cuts, table.num_rows]
    parts = [aggregate(table.slice(a, b - a), CUR) for a, b in itertools.pairwise(bounds)]

    assert merge_partials(parts).equals(whole)
    assert merge_partials(parts[::-1]).equals(whole)  # commutative
    left = merge_partials([merge_partials(parts[:2]), merge_partials(parts[2:])])
    right = merge_partials([parts[0], merge_partials([parts[1], merge_partials(parts[2:])])])
    assert left.equals(whole)  # associative
    assert right.equals(whole)
    assert merge_partials([whole, PARTIAL_SCHEMA.empty_table()]).equals(whole)
    assert merge_partials([whole]).equals(whole)
    # The merge is bounded by the number of keys, not by the rows merged.
    assert merge_partials([whole, whole]).num_rows == whole.num_rows
    assert total(merge_partials([whole, whole]), "line_items") == 2 * table.num_rows


def test_streamed_batches_equal_one_table() -> None:
    table = cur_table(_random_rows(2000, seed=11))
    batches = table.to_batches(max_chunksize=97)
    assert aggregate_batches(batches, CUR).equals(aggregate(table, CUR))
    assert aggregate_batches([], CUR).equals(PARTIAL_SCHEMA.empty_table())


def test_merge_keeps_real_service_names_over_fallbacks() -> None:
    named = aggregate(cur_table([{"product_product_name": "Amazon Elastic Compute Cloud"}]), CUR)
    unnamed = aggregate(cur_table([{"product_product_name": ""}]), CUR)
    assert monthly(unnamed)[("AmazonEC2", "Usage")]["service_name"] == "AmazonEC2"
    for parts in ([named, unnamed], [unnamed, named]):
        merged = monthly(merge_partials(parts))
        assert merged[("AmazonEC2", "Usage")]["service_name"] == "Amazon Elastic Compute Cloud"


def test_merge_of_nothing_is_empty() -> None:
    empty = merge_partials([])
    assert empty.num_rows == 0
    assert empty.schema == PARTIAL_SCHEMA


# ------------------------------------------------------------------- amounts near 1e20

NEAR_LIMIT = "90000000000000000000"  # 9e19: fits decimal(38, 18); four of them do not
LARGEST = Decimal("99999999999999999999.999999999999999999")  # decimal(38, 18)'s largest


def _usage(cost: str, day: int = 5) -> dict[str, str | None]:
    return {"line_item_unblended_cost": cost, "line_item_usage_start_date": f"2024-03-0{day}"}


@pytest.mark.parametrize(
    ("label", "rows"),
    [
        # Decimal path: values too large for the scaled-integer fast path.
        ("decimals", [_usage(NEAR_LIMIT, day) for day in (5, 6, 7, 8)]),
        ("negative decimals", [_usage(f"-{NEAR_LIMIT}", day) for day in (5, 6, 7, 8)]),
        # Extra rows (more than 10 decimals) among fast-path integers.
        (
            "extra rows",
            [_usage("0.1")] * 12 + [_usage(f"{NEAR_LIMIT}.00000000000000001", 6)] * 2,
        ),
    ],
)
def test_sums_of_1e20_or_more_are_refused_never_wrapped(
    label: str, rows: list[dict[str, str | None]]
) -> None:
    # Arrow's decimal128 sums wrap around past 2**127: four 9e19 sum to about 1.97e19.
    with pytest.raises(AmountOutOfRangeError, match="unblended_cost sums to 1e20 or more"):
        aggregate(cur_table(rows), CUR)


def test_a_formula_reaching_1e20_is_refused() -> None:
    fee = {
        "line_item_line_item_type": "SavingsPlanRecurringFee",
        "savings_plan_total_commitment_to_date": NEAR_LIMIT,
        "savings_plan_used_commitment": f"-{NEAR_LIMIT}",
    }
    with pytest.raises(AmountOutOfRangeError, match="amortized_cost"):
        aggregate(cur_table([fee], *SP_RI_COLUMNS), CUR)


def test_merging_partials_that_reach_1e20_is_refused() -> None:
    half = aggregate(cur_table([_usage("60000000000000000000")]), CUR)
    with pytest.raises(AmountOutOfRangeError, match="1e20"):
        merge_partials([half, half])
    # Streamed batches of one file are merged the same way.
    table = cur_table([_usage("60000000000000000000")] * 2)
    with pytest.raises(AmountOutOfRangeError, match="1e20"):
        aggregate_batches(table.to_batches(max_chunksize=1), CUR)


def test_sums_up_to_the_largest_decimal_38_18_are_exact() -> None:
    parts = ["50000000000000000000", "49999999999999999999.999999999999999999"]
    partials = aggregate(cur_table([_usage(p) for p in parts]), CUR)
    merged = merge_partials([partials, aggregate(cur_table([_usage("-1")]), CUR)])
    with localcontext(prec=60):  # Python's default 28 digits would round these
        assert total(partials, "unblended_cost") == LARGEST
        assert total(partials, "unblended_cost", "daily") == LARGEST
        assert total(merged, "unblended_cost") == LARGEST - 1
