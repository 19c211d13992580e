"""The two reference engines of the benchmark and the comparison of results.

* :func:`duckdb_aggregate`: DuckDB computing SPEC §4 in SQL over the same Parquet or CSV.gz
  files (CIDs amortized formula, charge category mapping, split-cost exclusion, UTC dates,
  service name = the largest real product name else the code).
* :func:`pyarrow_aggregate`: a plain single-process pyarrow implementation, written the
  obvious way (row group by row group, ``decimal128`` casts, ``map_lookup``, ``group_by``),
  independent of ``cur_ray.domain.aggregation``.

Both return :data:`Results`: one entry per output row of either grain, so they can be
compared with what Batch B wrote to the database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MONEY = (
    "unblended_cost",
    "blended_cost",
    "net_unblended_cost",
    "amortized_cost",
    "net_amortized_cost",
    "list_cost",
)
EXCLUDED = ("EKSPod-EC2", "ECSTask-EC2")
PURCHASE = ("Fee", "RIFee", "SavingsPlanUpfrontFee", "SavingsPlanRecurringFee")

# ("daily", period, usage_date, account, currency) or
# ("monthly", period, account, service_code, charge_category, currency)
Key = tuple[Any, ...]


@dataclass(frozen=True)
class Figures:
    """One output row: measures (``None`` = null), row count and service name (monthly)."""

    money: tuple[Decimal | None, ...]
    line_items: int
    service_name: str = ""


Results = dict[Key, Figures]


def key_of(row: Mapping[str, Any]) -> Key:
    """The comparison key of an output row given as a mapping of column -> value."""
    period = row["billing_period"]
    if isinstance(period, str):
        period = dt.date.fromisoformat(period + "-01" if len(period) == 7 else period)
    if row.get("usage_date") not in (None, ""):
        usage = row["usage_date"]
        if isinstance(usage, str):
            usage = dt.date.fromisoformat(usage)
        return ("daily", period, usage, row["usage_account_id"], row["currency"])
    return (
        "monthly",
        period,
        row["usage_account_id"],
        row["service_code"],
        row["charge_category"],
        row["currency"],
    )


def figures_of(row: Mapping[str, Any]) -> Figures:
    """The measures of an output row (decimal strings, Decimals or None)."""
    money = tuple(None if row[m] is None else Decimal(str(row[m])) for m in MONEY)
    name = row.get("service_name") or "" if row.get("usage_date") in (None, "") else ""
    return Figures(money, int(row["line_items"]), name)


def compare(reference: Results, other: Results, tolerance: Decimal = Decimal("1e-8")) -> list[str]:
    """Differences between two result sets (empty when equal within ``tolerance``)."""
    problems: list[str] = []
    for key in sorted(set(reference) ^ set(other), key=str)[:10]:
        side = "only in the reference" if key in reference else "only in the other"
        problems.append(f"{key}: {side}")
    for key in sorted(set(reference) & set(other), key=str):
        want, got = reference[key], other[key]
        if want.line_items != got.line_items:
            problems.append(f"{key}: line_items {want.line_items} != {got.line_items}")
        if want.service_name != got.service_name:
            problems.append(f"{key}: service_name {want.service_name!r} != {got.service_name!r}")
        for name, a, b in zip(MONEY, want.money, got.money, strict=True):
            if (a is None) != (b is None) or (
                a is not None and b is not None and abs(a - b) > tolerance
            ):
                problems.append(f"{key}: {name} {a} != {b}")
        if len(problems) >= 20:
            break
    return problems


# ------------------------------------------------------------------------------ DuckDB


def _amortized_sql(m: Callable[[str], str], *, net: bool) -> str:
    p = "net_" if net else ""
    base = "n" if net else "u"
    return f"""CASE t
        WHEN 'SavingsPlanCoveredUsage' THEN {m(f"savings_plan_{p}savings_plan_effective_cost")}
        WHEN 'SavingsPlanRecurringFee' THEN {m("savings_plan_total_commitment_to_date")}
                                            - {m("savings_plan_used_commitment")}
        WHEN 'SavingsPlanNegation' THEN 0
        WHEN 'SavingsPlanUpfrontFee' THEN 0
        WHEN 'DiscountedUsage' THEN {m(f"reservation_{p}effective_cost")}
        WHEN 'RIFee' THEN {m(f"reservation_{p}unused_amortized_upfront_fee_for_billing_period")}
                          + {m(f"reservation_{p}unused_recurring_fee")}
        ELSE CASE WHEN t = 'Fee' AND trim(coalesce(reservation_reservation_a_r_n, ''))
                       NOT IN ('', 'NULL', 'null') THEN 0 ELSE {base} END
      END"""


def duckdb_sql(source: str, *, csv: bool) -> str:
    """SPEC §4 as one DuckDB query over ``source`` (a ``read_parquet``/``read_csv`` call).

    Money: ``DECIMAL(38, 10)`` sums (exact for AWS's at most 10 decimals; values with more
    are rounded to 1e-10, far inside the 1e-8 comparison tolerance). Both grains come from
    one scan with ``GROUPING SETS``; the product name is a grouping key of the monthly set
    (names depend on the service, so this adds no groups) and the outer query applies the
    service-name rule: the largest name that is neither empty nor the code, else the code.
    """
    if csv:

        def raw(c: str) -> str:
            return f"CAST({c} AS DECIMAL(38, 10))"

        day = "CAST(CAST({c} AS TIMESTAMPTZ) AS DATE)"
        name = "json_extract_string(product, '$.product_name')"
    else:

        def raw(c: str) -> str:
            return f"CAST({c} AS DECIMAL(38, 10))"

        day = "CAST({c} AS DATE)"
        name = "product['product_name']"

    def m(c: str) -> str:
        return f"coalesce({raw(c)}, 0)"

    category = (
        "CASE t WHEN 'Tax' THEN 'Tax' WHEN 'Credit' THEN 'Credit' WHEN 'Refund' THEN "
        "'Adjustment' WHEN 'Fee' THEN 'Purchase' WHEN 'RIFee' THEN 'Purchase' "
        "WHEN 'SavingsPlanUpfrontFee' THEN 'Purchase' WHEN 'SavingsPlanRecurringFee' "
        "THEN 'Purchase' ELSE 'Usage' END"
    )
    return f"""
WITH src AS (
  SELECT
    CAST(date_trunc('month', {day.format(c="bill_billing_period_start_date")}) AS DATE)
        AS billing_period,
    {day.format(c="line_item_usage_start_date")} AS usage_date,
    coalesce(line_item_usage_account_id, '') AS account,
    coalesce(line_item_product_code, '') AS code,
    {name} AS name,
    line_item_line_item_type AS t,
    coalesce(line_item_currency_code, '') AS currency,
    {m("line_item_unblended_cost")} AS u,
    {raw("line_item_blended_cost")} AS b,
    {raw("line_item_net_unblended_cost")} AS n,
    {_amortized_sql(m, net=False)} AS a,
    CASE WHEN n IS NULL THEN NULL ELSE {_amortized_sql(m, net=True)} END AS na,
    CASE WHEN t = 'SavingsPlanNegation' THEN 0
         ELSE {m("pricing_public_on_demand_cost")} END AS l
  FROM {source}
  WHERE coalesce(line_item_operation, '') NOT IN ('EKSPod-EC2', 'ECSTask-EC2')
), grouped AS (
  SELECT GROUPING(usage_date) AS monthly, billing_period, usage_date, account, code,
         {category} AS category, currency, name,
         sum(u) AS u, sum(b) AS b, sum(n) AS n, sum(a) AS a, sum(na) AS na, sum(l) AS l,
         count(*) AS line_items
  FROM src
  GROUP BY GROUPING SETS ((billing_period, usage_date, account, currency),
                          (billing_period, account, code, category, currency, name))
)
SELECT CASE WHEN monthly = 1 THEN 'monthly' ELSE 'daily' END AS grain,
       billing_period, usage_date, account, code, category, currency,
       coalesce(max(CASE WHEN name <> '' AND name <> code THEN name END), code) AS name,
       sum(u), sum(b), sum(n), sum(a), sum(na), sum(l), sum(line_items)
FROM grouped
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""


def duckdb_aggregate(
    paths: Sequence[str], *, csv: bool = False, threads: int = 2
) -> tuple[Results, Callable[[], Results]]:
    """A DuckDB connection's query over ``paths``: returns (results, run-again function)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET TimeZone = 'UTC'")
    files = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"
    if csv:
        source = f"read_csv({files}, header = true, all_varchar = true, compression = 'gzip')"
    else:
        source = f"read_parquet({files})"
    sql = duckdb_sql(source, csv=csv)

    def run() -> Results:
        rows = con.sql(sql).fetchall()
        results: Results = {}
        for grain, period, usage, account, code, category, currency, name, *rest in rows:
            money = tuple(None if v is None else Decimal(v) for v in rest[:6])
            count = int(rest[6])
            if grain == "daily":
                results[("daily", period, usage, account, currency)] = Figures(money, count)
            else:
                key = ("monthly", period, account, code, category, currency)
                results[key] = Figures(money, count, name or "")
        return results

    return run(), run


# ------------------------------------------------------------------------------ pyarrow

_PYARROW_COLUMNS = (
    "bill_billing_period_start_date",
    "line_item_usage_start_date",
    "line_item_usage_account_id",
    "line_item_line_item_type",
    "line_item_product_code",
    "line_item_currency_code",
    "line_item_operation",
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
    "reservation_reservation_a_r_n",
    "product",
)
_DEC = pa.decimal128(38, 10)
_WIDE = pa.decimal128(37, 10)


def _row_measures(t: Any) -> dict[str, Any]:
    typ = t["line_item_line_item_type"]

    def raw(c: str) -> Any:
        return t[c].cast(_DEC)

    def m(c: str) -> Any:
        return pc.fill_null(raw(c), pa.scalar(0, _DEC))

    def is_(*names: str) -> Any:
        return pc.fill_null(pc.is_in(typ, pa.array(names)), False)

    arn = pc.utf8_trim_whitespace(pc.fill_null(t["reservation_reservation_a_r_n"], ""))
    ri_fee = pc.and_(is_("Fee"), pc.invert(pc.is_in(arn, pa.array(["", "NULL", "null"]))))
    zero = pa.scalar(0, _DEC)

    def add(a: Any, b: Any, sub: bool = False) -> Any:
        f = pc.subtract if sub else pc.add
        return f(a.cast(_WIDE), b.cast(_WIDE)).cast(_DEC)

    def amortized(base: Any, p: str) -> Any:
        conditions = pc.make_struct(
            is_("SavingsPlanCoveredUsage"),
            is_("SavingsPlanRecurringFee"),
            is_("SavingsPlanNegation", "SavingsPlanUpfrontFee"),
            is_("DiscountedUsage"),
            is_("RIFee"),
            ri_fee,
            field_names=["a", "b", "c", "d", "e", "f"],
        )
        return pc.case_when(
            conditions,
            m(f"savings_plan_{p}savings_plan_effective_cost"),
            add(
                m("savings_plan_total_commitment_to_date"),
                m("savings_plan_used_commitment"),
                sub=True,
            ),
            zero,
            m(f"reservation_{p}effective_cost"),
            add(
                m(f"reservation_{p}unused_amortized_upfront_fee_for_billing_period"),
                m(f"reservation_{p}unused_recurring_fee"),
            ),
            zero,
            base,
        )

    net = raw("line_item_net_unblended_cost")
    net_amortized = pc.if_else(
        pc.is_valid(net), amortized(pc.fill_null(net, zero), "net_"), pa.scalar(None, _DEC)
    )
    return {
        "unblended_cost": m("line_item_unblended_cost"),
        "blended_cost": raw("line_item_blended_cost"),
        "net_unblended_cost": net,
        "amortized_cost": amortized(m("line_item_unblended_cost"), ""),
        "net_amortized_cost": net_amortized,
        "list_cost": pc.if_else(
            is_("SavingsPlanNegation"), zero, m("pricing_public_on_demand_cost")
        ),
    }


def pyarrow_aggregate(paths: Sequence[str]) -> Results:
    """Plain pyarrow, one process: read each row group's columns, compute, group, merge."""
    sums: list[Any] = [(m, "sum", pc.ScalarAggregateOptions(min_count=1)) for m in MONEY]
    daily_parts: list[pa.Table] = []
    monthly_parts: list[pa.Table] = []
    for path in paths:
        parquet = pq.ParquetFile(path)
        for index in range(parquet.num_row_groups):
            t: Any = parquet.read_row_group(index, columns=list(_PYARROW_COLUMNS))
            excluded = pc.fill_null(pc.is_in(t["line_item_operation"], pa.array(EXCLUDED)), False)
            t = t.filter(pc.invert(excluded))
            typ = t["line_item_line_item_type"]
            category = pc.if_else(
                pc.fill_null(pc.is_in(typ, pa.array(PURCHASE)), False),
                "Purchase",
                pc.fill_null(
                    pc.if_else(
                        pc.is_in(typ, pa.array(["Tax", "Credit"])),
                        typ,
                        pc.if_else(pc.equal(typ, pa.scalar("Refund")), "Adjustment", "Usage"),
                    ),
                    "Usage",
                ),
            )
            keys: dict[str, Any] = {
                "billing_period": pc.floor_temporal(
                    t["bill_billing_period_start_date"], unit="month"
                ).cast(pa.date32()),
                "usage_date": t["line_item_usage_start_date"].cast(pa.date32()),
                "account": t["line_item_usage_account_id"],
                "code": t["line_item_product_code"],
                "category": category,
                "currency": t["line_item_currency_code"],
                "name": pc.map_lookup(t["product"], pa.scalar("product_name"), "first"),
            }
            # Empty names and names equal to the code never win (the service-name rule).
            fallback = pc.fill_null(
                pc.or_(pc.equal(keys["name"], pa.scalar("")), pc.equal(keys["name"], keys["code"])),
                True,
            )
            keys["name"] = pc.if_else(fallback, pa.scalar(None, pa.string()), keys["name"])
            table = pa.table({**keys, **_row_measures(t), "one": pa.repeat(1, t.num_rows)})
            daily_parts.append(
                table.group_by(["billing_period", "usage_date", "account", "currency"]).aggregate(
                    [*sums, ("one", "sum")]
                )
            )
            monthly_parts.append(
                table.group_by(
                    ["billing_period", "account", "code", "category", "currency"]
                ).aggregate([*sums, ("one", "sum"), ("name", "max")])
            )
    results: Results = {}
    merge: list[Any] = [(f"{m}_sum", "sum", pc.ScalarAggregateOptions(min_count=1)) for m in MONEY]
    daily = (
        pa.concat_tables(daily_parts)
        .group_by(["billing_period", "usage_date", "account", "currency"])
        .aggregate([*merge, ("one_sum", "sum")])
    )
    for row in daily.to_pylist():
        key: Key = (
            "daily",
            row["billing_period"],
            row["usage_date"],
            row["account"],
            row["currency"],
        )
        money = tuple(row[f"{m}_sum_sum"] for m in MONEY)
        results[key] = Figures(money, row["one_sum_sum"])
    monthly = (
        pa.concat_tables(monthly_parts)
        .group_by(["billing_period", "account", "code", "category", "currency"])
        .aggregate([*merge, ("one_sum", "sum"), ("name_max", "max")])
    )
    for row in monthly.to_pylist():
        key = (
            "monthly",
            row["billing_period"],
            row["account"],
            row["code"],
            row["category"],
            row["currency"],
        )
        money = tuple(row[f"{m}_sum_sum"] for m in MONEY)
        results[key] = Figures(money, row["one_sum_sum"], row["name_max_max"] or row["code"])
    return results
