"""An independent oracle: the figures SPEC §4 expects, computed with plain :mod:`decimal`.

Nothing here uses pyarrow or the project's aggregation code: it re-implements SPEC §4 from
scratch over the *strings* of the source lines, so tests can compare the project's output
against exact sums.

Inputs are :class:`~cur_ray.samples.line_items.LineItem` objects or mappings of CUR 2.0
snake_case column -> string (e.g. a real legacy CSV read with :func:`read_legacy_csv_rows`).
Empty strings are absent values.

Null semantics, per row: ``blended_cost`` is ``None`` where ``line_item_blended_cost`` is
empty; ``net_unblended_cost`` and ``net_amortized_cost`` are ``None`` where
``line_item_net_unblended_cost`` is empty (a file without net columns). A group's measure is
the sum of its non-``None`` row values, or ``None`` when every row is ``None``. Empty cost
columns inside a formula count as 0. ``line_items`` is a Decimal row count.

FOCUS-converted data (``focus=True``): unblended = BilledCost (the unblended cost),
amortized = EffectiveCost (the amortized formula), list = ListCost (the list formula),
``blended_cost``/``net_*`` are ``None``; split-cost-allocation rows are not part of a FOCUS
export, so they are excluded here too. For rows read from a real FOCUS file use
:func:`expected_focus_rows_monthly` / :func:`expected_focus_rows_daily`.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO, TypeVar

from cur_ray.samples.line_items import LineItem, legacy_header_to_snake

__all__ = [
    "MEASURES",
    "DailyKey",
    "Figures",
    "MonthlyKey",
    "charge_category",
    "expected_daily",
    "expected_focus_daily",
    "expected_focus_monthly",
    "expected_focus_rows_daily",
    "expected_focus_rows_monthly",
    "expected_monthly",
    "merge_figures",
    "read_focus_csv_rows",
    "read_legacy_csv_rows",
    "row_figures",
    "total",
]

MEASURES: tuple[str, ...] = (
    "unblended_cost",
    "blended_cost",
    "net_unblended_cost",
    "amortized_cost",
    "net_amortized_cost",
    "list_cost",
    "line_items",
)

#: (billing_period "YYYY-MM", usage_account_id, service_code, charge_category, currency)
MonthlyKey = tuple[str, str, str, str, str]
#: (billing_period "YYYY-MM", usage_date "YYYY-MM-DD", usage_account_id, currency)
DailyKey = tuple[str, str, str, str]
Figures = dict[str, Decimal | None]
Row = LineItem | Mapping[str, str]
K = TypeVar("K")

_SPLIT_COST_OPERATIONS = frozenset({"EKSPod-EC2", "ECSTask-EC2"})
_PURCHASE_TYPES = frozenset({"Fee", "RIFee", "SavingsPlanUpfrontFee", "SavingsPlanRecurringFee"})
_ZERO = Decimal(0)
_FOCUS_NULLS = frozenset({"", "NULL"})


def charge_category(line_item_type: str) -> str:
    """FOCUS charge category of a CUR line item type (SPEC §4)."""
    if line_item_type == "Tax":
        return "Tax"
    if line_item_type == "Credit":
        return "Credit"
    if line_item_type == "Refund":
        return "Adjustment"
    if line_item_type in _PURCHASE_TYPES:
        return "Purchase"
    return "Usage"


def _getter(row: Row) -> Callable[[str], str]:
    if isinstance(row, LineItem):
        return row.get
    return lambda name: row.get(name) or ""


def _dec(text: str) -> Decimal:
    text = text.strip()
    return Decimal(text) if text else _ZERO


def _opt(text: str) -> Decimal | None:
    text = text.strip()
    return Decimal(text) if text else None


def row_figures(row: Row, *, focus: bool = False) -> Figures | None:
    """The measures of one CUR line, or ``None`` for an excluded split-cost row."""
    get = _getter(row)
    if get("line_item_operation") in _SPLIT_COST_OPERATIONS:
        return None
    line_type = get("line_item_line_item_type")
    unblended = _dec(get("line_item_unblended_cost"))
    has_reservation = bool(get("reservation_reservation_a_r_n").strip())
    commitment_gap = _dec(get("savings_plan_total_commitment_to_date")) - _dec(
        get("savings_plan_used_commitment")
    )

    def amortized(net: bool) -> Decimal:
        prefix = "net_" if net else ""
        if line_type == "SavingsPlanCoveredUsage":
            return _dec(get(f"savings_plan_{prefix}savings_plan_effective_cost"))
        if line_type == "SavingsPlanRecurringFee":
            return commitment_gap  # no net variant: total commitment - used commitment
        if line_type in ("SavingsPlanNegation", "SavingsPlanUpfrontFee"):
            return _ZERO
        if line_type == "DiscountedUsage":
            return _dec(get(f"reservation_{prefix}effective_cost"))
        if line_type == "RIFee":
            return _dec(
                get(f"reservation_{prefix}unused_amortized_upfront_fee_for_billing_period")
            ) + _dec(get(f"reservation_{prefix}unused_recurring_fee"))
        if line_type == "Fee" and has_reservation:
            return _ZERO
        if net:
            return _dec(get("line_item_net_unblended_cost"))
        return unblended

    net_unblended = _opt(get("line_item_net_unblended_cost"))
    list_cost = (
        _ZERO if line_type == "SavingsPlanNegation" else _dec(get("pricing_public_on_demand_cost"))
    )
    if focus:
        return {
            "unblended_cost": unblended,
            "blended_cost": None,
            "net_unblended_cost": None,
            "amortized_cost": amortized(False),
            "net_amortized_cost": None,
            "list_cost": list_cost,
            "line_items": Decimal(1),
        }
    return {
        "unblended_cost": unblended,
        "blended_cost": _opt(get("line_item_blended_cost")),
        "net_unblended_cost": net_unblended,
        "amortized_cost": amortized(False),
        "net_amortized_cost": None if net_unblended is None else amortized(True),
        "list_cost": list_cost,
        "line_items": Decimal(1),
    }


def _add_into(target: Figures, figures: Figures) -> None:
    for measure in MEASURES:
        value = figures.get(measure)
        if value is None:
            target.setdefault(measure, None)
            continue
        current = target.get(measure)
        target[measure] = value if current is None else current + value


def _empty() -> Figures:
    return dict.fromkeys(MEASURES)


def _month(timestamp: str) -> str:
    return timestamp.strip()[:7]


def _day(timestamp: str) -> str:
    return timestamp.strip()[:10]


def expected_monthly(items: Iterable[Row], *, focus: bool = False) -> dict[MonthlyKey, Figures]:
    """Monthly figures per (billing period, account, service code, charge category, currency).

    ``focus=True`` gives what the FOCUS conversion of the same lines must aggregate to.
    """
    result: dict[MonthlyKey, Figures] = {}
    for row in items:
        figures = row_figures(row, focus=focus)
        if figures is None:
            continue
        get = _getter(row)
        key = (
            _month(get("bill_billing_period_start_date")),
            get("line_item_usage_account_id"),
            get("line_item_product_code"),
            charge_category(get("line_item_line_item_type")),
            get("line_item_currency_code"),
        )
        _add_into(result.setdefault(key, _empty()), figures)
    return result


def expected_daily(items: Iterable[Row], *, focus: bool = False) -> dict[DailyKey, Figures]:
    """Daily figures per (billing period, UTC usage date, account, currency)."""
    result: dict[DailyKey, Figures] = {}
    for row in items:
        figures = row_figures(row, focus=focus)
        if figures is None:
            continue
        get = _getter(row)
        key = (
            _month(get("bill_billing_period_start_date")),
            _day(get("line_item_usage_start_date")),
            get("line_item_usage_account_id"),
            get("line_item_currency_code"),
        )
        _add_into(result.setdefault(key, _empty()), figures)
    return result


def expected_focus_monthly(items: Iterable[Row]) -> dict[MonthlyKey, Figures]:
    """Monthly figures of the FOCUS export converted from ``items``."""
    return expected_monthly(items, focus=True)


def expected_focus_daily(items: Iterable[Row]) -> dict[DailyKey, Figures]:
    """Daily figures of the FOCUS export converted from ``items``."""
    return expected_daily(items, focus=True)


# --------------------------------------------------------------------------------------
# Raw FOCUS rows (e.g. the shared FOCUS sample)


def _focus_value(row: Mapping[str, str], name: str) -> str:
    value = (row.get(name) or "").strip()
    return "" if value in _FOCUS_NULLS else value


def _focus_figures(row: Mapping[str, str]) -> Figures | None:
    if _focus_value(row, "x_Operation") in _SPLIT_COST_OPERATIONS:
        return None
    return {
        "unblended_cost": _dec(_focus_value(row, "BilledCost")),
        "blended_cost": None,
        "net_unblended_cost": None,
        "amortized_cost": _dec(_focus_value(row, "EffectiveCost")),
        "net_amortized_cost": None,
        "list_cost": _dec(_focus_value(row, "ListCost")),
        "line_items": Decimal(1),
    }


def _focus_service(row: Mapping[str, str]) -> str:
    return _focus_value(row, "x_ServiceCode") or _focus_value(row, "ServiceName")


def expected_focus_rows_monthly(rows: Iterable[Mapping[str, str]]) -> dict[MonthlyKey, Figures]:
    """Monthly figures of raw FOCUS rows (column name -> string, ``NULL`` = null)."""
    result: dict[MonthlyKey, Figures] = {}
    for row in rows:
        figures = _focus_figures(row)
        if figures is None:
            continue
        key = (
            _month(_focus_value(row, "BillingPeriodStart")),
            _focus_value(row, "SubAccountId"),
            _focus_service(row),
            _focus_value(row, "ChargeCategory"),
            _focus_value(row, "BillingCurrency"),
        )
        _add_into(result.setdefault(key, _empty()), figures)
    return result


def expected_focus_rows_daily(rows: Iterable[Mapping[str, str]]) -> dict[DailyKey, Figures]:
    """Daily figures of raw FOCUS rows (UTC date of ``ChargePeriodStart``)."""
    result: dict[DailyKey, Figures] = {}
    for row in rows:
        figures = _focus_figures(row)
        if figures is None:
            continue
        key = (
            _month(_focus_value(row, "BillingPeriodStart")),
            _day(_focus_value(row, "ChargePeriodStart")),
            _focus_value(row, "SubAccountId"),
            _focus_value(row, "BillingCurrency"),
        )
        _add_into(result.setdefault(key, _empty()), figures)
    return result


# --------------------------------------------------------------------------------------
# Helpers


def merge_figures(*tables: Mapping[K, Figures]) -> dict[K, Figures]:
    """Add several figure tables together (same key -> measures summed, ``None`` kept)."""
    result: dict[K, Figures] = {}
    for table in tables:
        for key, figures in table.items():
            _add_into(result.setdefault(key, _empty()), figures)
    return result


def total(table: Mapping[Any, Figures]) -> Figures:
    """The sum of every row of a figure table."""
    result = _empty()
    for figures in table.values():
        _add_into(result, figures)
    return result


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_legacy_csv_rows(path: Path) -> list[dict[str, str]]:
    """Read a legacy CUR CSV (``.csv`` or ``.csv.gz``) with headers snake-cased."""
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = [legacy_header_to_snake(h) for h in next(reader)]
        return [dict(zip(header, values, strict=False)) for values in reader]


def read_focus_csv_rows(path: Path, *, provider: str | None = None) -> list[dict[str, str]]:
    """Read a FOCUS CSV (``.csv`` or ``.csv.gz``); keep only ``provider``'s rows if given."""
    with _open_text(path) as handle:
        rows = list(csv.DictReader(handle))
    if provider is not None:
        rows = [r for r in rows if r.get("ProviderName") == provider]
    return rows
