"""Randomised proof checks of the exact integer fast path of the aggregation (SPEC §4).

The aggregation turns doubles and decimal strings into int64 counts of 1e-10 when that is
exact and falls back to decimals per value otherwise. These tests compare it on 100 000
random values per case with Python's :mod:`decimal` applied to the shortest text of each
double (``repr``, the reference meaning of a CUR double) and with the independent oracle of
:mod:`cur_ray.samples.expected`. They are seeded, so a failure reproduces.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cur_ray.domain import aggregation
from cur_ray.domain.aggregation import (
    MEASURES,
    _ints_from_floats,
    aggregate,
    aggregate_batches,
)
from cur_ray.domain.billing import SourceFormat
from cur_ray.samples.expected import expected_daily, expected_monthly
from cur_ray.samples.line_items import LINE_ITEM_TYPES

N = 100_000
TYPES = ("Usage", "Usage", *LINE_ITEM_TYPES)  # Usage three times as likely as the others
COST_COLUMNS = (
    "line_item_unblended_cost",
    "line_item_blended_cost",
    "line_item_net_unblended_cost",
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
)


def random_doubles(rnd: random.Random, count: int) -> Iterator[float]:
    """Doubles of every kind a CUR holds, and the awkward ones around the fast path's limits.

    Every value has at most 18 decimals in its shortest text, so the exact sums equal the
    decimal128(38, 18) results without rounding.
    """
    for _ in range(count):
        kind = rnd.random()
        if kind < 0.55:  # a cost with 0-10 decimals, as AWS writes them
            decimals = rnd.randint(0, 10)
            yield rnd.randint(-(10 ** (decimals + 5)), 10 ** (decimals + 5)) / 10**decimals
        elif kind < 0.65:  # large amounts near and beyond 2**19
            yield rnd.choice([1, -1]) * rnd.randint(2**18, 2**20) + rnd.randint(0, 10**4) / 10**4
        elif kind < 0.75:  # computed values with 15-17 significant digits
            yield rnd.uniform(-1000, 1000)
        elif kind < 0.80:  # tiny amounts of 11-18 decimals
            yield rnd.randint(-(10**6), 10**6) / 10 ** rnd.randint(11, 18)
        elif kind < 0.85:  # exact tenths of a cent scaled up to the int64 limits
            yield float(rnd.randint(-(2**52), 2**52)) / 10**10
        elif kind < 0.90:  # halves and ties of the 11th decimal
            yield (rnd.randint(-(10**9), 10**9) + 0.5) / 10**10
        else:
            yield rnd.choice([0.0, -0.0, 1e-10, -1e-10, 5e-11, 2.0**19, -(2.0**19), 524287.9999])


def shortest_decimal(x: float) -> Decimal:
    """The reference meaning of a double: the decimal of its shortest round-trip text."""
    return Decimal(repr(x))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scaled_integers_of_doubles_are_their_shortest_decimals(seed: int) -> None:
    rnd = random.Random(seed)
    values = list(random_doubles(rnd, N))
    ints, extra_rows, _ = _ints_from_floats(pa.array(values, pa.float64()))
    extra = set(extra_rows.tolist())
    checked = 0
    for i, x in enumerate(values):
        if i in extra:
            assert ints[i] == 0
            continue
        assert Decimal(int(ints[i])).scaleb(-10) == shortest_decimal(x), (i, x, ints[i])
        checked += 1
    assert checked > N // 2  # most values take the integer path
    # Every value the integer path refused really has no exact count of 1e-10 below 2**19.
    for i in extra_rows[:2000]:
        exact = shortest_decimal(values[i])
        assert abs(values[i]) >= 2**19 or exact.scaleb(10) != exact.scaleb(10).to_integral()


def _rows(seed: int, count: int) -> list[dict[str, str]]:
    rnd = random.Random(seed)
    doubles = random_doubles(rnd, count * len(COST_COLUMNS))
    rows = []
    for _ in range(count):
        row = {
            "bill_billing_period_start_date": "2024-05-01T00:00:00Z",
            "line_item_usage_start_date": f"2024-05-{rnd.randint(1, 31):02d}T07:00:00Z",
            "line_item_usage_account_id": rnd.choice(["000000000001", "123456789012", "999"]),
            "line_item_line_item_type": rnd.choice(TYPES),
            "line_item_product_code": rnd.choice(["AmazonEC2", "AmazonS3", "AWSLambda"]),
            "line_item_currency_code": rnd.choice(["USD", "USD", "EUR"]),
            "line_item_operation": rnd.choice(["RunInstances", "RunInstances", "EKSPod-EC2"]),
            "reservation_reservation_a_r_n": rnd.choice(["", "", "arn:aws:ec2:ri/1"]),
        }
        for column in COST_COLUMNS:
            value = next(doubles)
            # Empty values: null in both representations (optional measures stay null).
            row[column] = "" if rnd.random() < 0.15 else repr(value)
        rows.append(row)
    return rows


def _table(rows: list[dict[str, str]], *, doubles: bool) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for name in rows[0]:
        texts = [r[name] or None for r in rows]
        if doubles and name in COST_COLUMNS:
            columns[name] = pa.array([None if t is None else float(t) for t in texts])
        else:
            columns[name] = pa.array(texts, pa.string())
    return pa.table(columns)


def _check(
    partials: pa.Table, rows: list[dict[str, str]], measures: tuple[str, ...] = MEASURES
) -> None:
    """Every measure of every output row equals the oracle's exact decimal sum."""
    daily = {
        (
            r["billing_period"].strftime("%Y-%m"),
            r["usage_date"].isoformat(),
            r["usage_account_id"],
            r["currency"],
        ): r
        for r in partials.filter(pc.equal(partials["grain"], "daily")).to_pylist()
    }
    monthly = {
        (
            r["billing_period"].strftime("%Y-%m"),
            r["usage_account_id"],
            r["service_code"],
            r["charge_category"],
            r["currency"],
        ): r
        for r in partials.filter(pc.equal(partials["grain"], "monthly")).to_pylist()
    }
    for got, want in ((daily, expected_daily(rows)), (monthly, expected_monthly(rows))):
        assert set(got) == set(want)
        for key, figures in want.items():
            for measure in measures:
                assert got[key][measure] == figures[measure], (key, measure)
            assert got[key]["line_items"] == figures["line_items"]


@pytest.mark.parametrize("doubles", [True, False], ids=["double-columns", "string-columns"])
def test_random_line_items_sum_exactly_as_python_decimal(doubles: bool) -> None:
    rows = _rows(seed=11 if doubles else 12, count=N // len(COST_COLUMNS) * 2)
    table = _table(rows, doubles=doubles)
    fmt = SourceFormat.CUR2_PARQUET if doubles else SourceFormat.CUR2_CSV
    _check(aggregate(table, fmt), rows)
    # Batches of odd sizes: every batch takes its own mix of integer and decimal paths.
    _check(aggregate_batches(table.to_batches(max_chunksize=997), fmt), rows)


def test_ten_decimal_strings_take_the_integer_path_and_stay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decimal_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("the decimal path was taken")

    monkeypatch.setattr(aggregation, "_decimal", no_decimal_path)
    rnd = random.Random(5)
    texts = [f"{rnd.randint(-(10**13), 10**13) / 10**10:.10f}" for _ in range(N)]
    rows = [
        {
            "bill_billing_period_start_date": "2024-05-01",
            "line_item_usage_start_date": f"2024-05-{i % 28 + 1:02d}",
            "line_item_usage_account_id": "123456789012",
            "line_item_line_item_type": "Usage",
            "line_item_product_code": "AmazonEC2",
            "line_item_currency_code": "USD",
            "line_item_unblended_cost": text,
        }
        for i, text in enumerate(texts)
    ]
    partials = aggregate(_table(rows, doubles=False), SourceFormat.CUR2_CSV)
    _check(partials, rows, ("unblended_cost", "amortized_cost"))
    total = sum((Decimal(t) for t in texts), Decimal(0))
    daily = partials.filter(pc.equal(partials["grain"], "daily"))
    assert sum(daily["unblended_cost"].to_pylist(), Decimal(0)) == total


def test_sums_beyond_the_int64_range_stay_exact() -> None:
    # 2**19 - 1 dollars is the largest integer-path amount; 40 000 of them overflow int64
    # counts of 1e-10, so the batch must sum them as decimals.
    value = 2.0**19 - 1
    rows = [
        {
            "bill_billing_period_start_date": "2024-05-01",
            "line_item_usage_start_date": "2024-05-02",
            "line_item_usage_account_id": "1",
            "line_item_line_item_type": "Usage",
            "line_item_product_code": "AmazonEC2",
            "line_item_currency_code": "USD",
            "line_item_unblended_cost": repr(value),
        }
    ] * 40_000
    partials = aggregate(_table(rows, doubles=True), SourceFormat.CUR2_PARQUET)
    assert partials["unblended_cost"].to_pylist() == [Decimal(int(value)) * 40_000] * 2
