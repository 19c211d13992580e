"""Column vocabulary of the CUR formats: name normalisation, format detection, mapping.

Pure functions, no I/O. Readers use this module to decide which columns of a file to read
and under which *canonical* name to hand them to :mod:`cur_ray.domain.aggregation`.

Canonical names:

* CUR formats (legacy CSV, legacy Athena Parquet, CUR 2.0) use the snake-case names of the
  Athena integration / CUR 2.0 (``line_item_unblended_cost``). A legacy CSV header
  ``lineItem/UnblendedCost`` is mapped to it by :func:`normalise_column_name`.
* FOCUS exports keep their own names (``BilledCost``, ``x_ServiceCode``): they are already
  unambiguous and the FOCUS specification fixes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cur_ray.domain.billing import SourceFormat
from cur_ray.errors import FileFormatError

__all__ = [
    "CUR2_MARKER_COLUMNS",
    "CUR_COLUMNS",
    "FOCUS_COLUMNS",
    "REQUIRED_COLUMNS",
    "SOURCE_COLUMNS",
    "ColumnSpec",
    "columns_to_read",
    "detect_format",
    "missing_required_columns",
    "normalise_column_name",
]

_UPPER = re.compile(r"([A-Z])")
_NOT_WORD = re.compile(r"[^0-9A-Za-z_]+")


def _snake(part: str) -> str:
    """``UnusedAmortizedUpfrontFee`` -> ``unused_amortized_upfront_fee``; ``ARN`` -> ``a_r_n``."""
    return _UPPER.sub(r"_\1", part).lower().strip("_")


def normalise_column_name(name: str) -> str:
    """Return the canonical (snake-case) name of one source column.

    Rule: a name containing ``/`` is a legacy CUR CSV header ``category/Name``. Both parts are
    converted by putting an underscore before every upper-case letter and lower-casing, as
    AWS's Athena integration does (``lineItem/UnblendedCost`` -> ``line_item_unblended_cost``,
    ``reservation/ReservationARN`` -> ``reservation_reservation_a_r_n``); characters other
    than letters, digits and ``_`` (``resourceTags/user:Team``) become ``_``.

    A name without ``/`` is returned unchanged (apart from surrounding white space and a
    UTF-8 byte-order mark): it is either already snake case (Athena Parquet, CUR 2.0) or a
    FOCUS name (``BilledCost``, ``x_ServiceCode``), which is canonical as it is.
    """
    name = name.strip().lstrip("\ufeff")
    if "/" not in name:
        return name
    category, _, rest = name.partition("/")
    parts = [_snake(_NOT_WORD.sub("_", category)), _snake(_NOT_WORD.sub("_", rest))]
    return re.sub(r"_+", "_", "_".join(p for p in parts if p))


@dataclass(frozen=True)
class ColumnSpec:
    """One input column: canonical name, legacy CSV header (CUR only), whether required."""

    canonical: str
    required: bool
    legacy_csv: str | None = None


CUR_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("bill_billing_period_start_date", True, "bill/BillingPeriodStartDate"),
    ColumnSpec("line_item_usage_start_date", True, "lineItem/UsageStartDate"),
    ColumnSpec("line_item_usage_account_id", True, "lineItem/UsageAccountId"),
    ColumnSpec("line_item_line_item_type", True, "lineItem/LineItemType"),
    ColumnSpec("line_item_product_code", True, "lineItem/ProductCode"),
    ColumnSpec("line_item_currency_code", True, "lineItem/CurrencyCode"),
    ColumnSpec("line_item_unblended_cost", True, "lineItem/UnblendedCost"),
    ColumnSpec("line_item_blended_cost", False, "lineItem/BlendedCost"),
    ColumnSpec("line_item_net_unblended_cost", False, "lineItem/NetUnblendedCost"),
    ColumnSpec("line_item_operation", False, "lineItem/Operation"),
    ColumnSpec("product_product_name", False, "product/ProductName"),
    # CUR 2.0 keeps most product attributes in a map column (a JSON object in CSV);
    # read only when there is no top-level product_product_name.
    ColumnSpec("product", False, None),
    ColumnSpec("pricing_public_on_demand_cost", False, "pricing/publicOnDemandCost"),
    ColumnSpec(
        "savings_plan_savings_plan_effective_cost", False, "savingsPlan/SavingsPlanEffectiveCost"
    ),
    ColumnSpec(
        "savings_plan_net_savings_plan_effective_cost",
        False,
        "savingsPlan/NetSavingsPlanEffectiveCost",
    ),
    ColumnSpec("savings_plan_total_commitment_to_date", False, "savingsPlan/TotalCommitmentToDate"),
    ColumnSpec("savings_plan_used_commitment", False, "savingsPlan/UsedCommitment"),
    ColumnSpec("reservation_effective_cost", False, "reservation/EffectiveCost"),
    ColumnSpec("reservation_net_effective_cost", False, "reservation/NetEffectiveCost"),
    ColumnSpec(
        "reservation_unused_amortized_upfront_fee_for_billing_period",
        False,
        "reservation/UnusedAmortizedUpfrontFeeForBillingPeriod",
    ),
    ColumnSpec(
        "reservation_net_unused_amortized_upfront_fee_for_billing_period",
        False,
        "reservation/NetUnusedAmortizedUpfrontFeeForBillingPeriod",
    ),
    ColumnSpec("reservation_unused_recurring_fee", False, "reservation/UnusedRecurringFee"),
    ColumnSpec("reservation_net_unused_recurring_fee", False, "reservation/NetUnusedRecurringFee"),
    ColumnSpec("reservation_reservation_a_r_n", False, "reservation/ReservationARN"),
)

FOCUS_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("BilledCost", True),
    ColumnSpec("EffectiveCost", True),
    ColumnSpec("BillingPeriodStart", True),
    ColumnSpec("ChargePeriodStart", True),
    ColumnSpec("BillingCurrency", True),
    ColumnSpec("ChargeCategory", True),
    ColumnSpec("ServiceName", True),
    ColumnSpec("SubAccountId", True),
    ColumnSpec("ListCost", False),
    ColumnSpec("x_ServiceCode", False),
    # Split cost allocation rows (EKSPod-EC2, ECSTask-EC2) are excluded as in CUR.
    ColumnSpec("x_Operation", False),
)

# Any of these columns marks a snake-case Parquet file as CUR 2.0 rather than legacy Athena.
CUR2_MARKER_COLUMNS = frozenset(
    {"product", "resource_tags", "bill_payer_account_name", "line_item_usage_account_name"}
)

_CUR_FORMATS = (
    SourceFormat.LEGACY_CSV,
    SourceFormat.LEGACY_PARQUET,
    SourceFormat.CUR2_PARQUET,
    SourceFormat.CUR2_CSV,
)
_FOCUS_FORMATS = (SourceFormat.FOCUS_PARQUET, SourceFormat.FOCUS_CSV)


def _specs(fmt: SourceFormat) -> tuple[ColumnSpec, ...]:
    specs = FOCUS_COLUMNS if fmt.is_focus else CUR_COLUMNS
    if fmt in (SourceFormat.LEGACY_CSV, SourceFormat.LEGACY_PARQUET):
        specs = tuple(s for s in specs if s.canonical != "product")
    return specs


def _source_name(spec: ColumnSpec, fmt: SourceFormat) -> str:
    if fmt is SourceFormat.LEGACY_CSV and spec.legacy_csv is not None:
        return spec.legacy_csv
    return spec.canonical


SOURCE_COLUMNS: Mapping[SourceFormat, Mapping[str, str]] = {
    fmt: {s.canonical: _source_name(s, fmt) for s in _specs(fmt)}
    for fmt in (*_CUR_FORMATS, *_FOCUS_FORMATS)
}
"""Canonical input name -> the column name in a file of each format."""

REQUIRED_COLUMNS: Mapping[SourceFormat, frozenset[str]] = {
    fmt: frozenset(s.canonical for s in _specs(fmt) if s.required) for fmt in SOURCE_COLUMNS
}
"""Canonical names that a file of each format must have."""


_FORMAT_LABEL: Mapping[SourceFormat, str] = {
    SourceFormat.LEGACY_CSV: "legacy CUR CSV header",
    SourceFormat.LEGACY_PARQUET: "legacy CUR Parquet schema",
    SourceFormat.CUR2_PARQUET: "CUR 2.0 Parquet schema",
    SourceFormat.CUR2_CSV: "CUR 2.0 CSV header",
    SourceFormat.FOCUS_PARQUET: "FOCUS Parquet schema",
    SourceFormat.FOCUS_CSV: "FOCUS CSV header",
}


def _loose_key(name: str) -> str:
    # ReservationARN and ReservationArn normalise differently (a_r_n / arn): ignore "_".
    return normalise_column_name(name).replace("_", "").lower()


def _index(column_names: Iterable[str]) -> tuple[set[str], dict[str, str]]:
    names = [str(n) for n in column_names]
    exact = set(names)
    loose: dict[str, str] = {}
    for n in names:
        # First spelling wins if a header repeats a column under another case.
        loose.setdefault(_loose_key(n), n)
    return exact, loose


def _lookup(source: str, exact: set[str], loose: dict[str, str]) -> str | None:
    if source in exact:
        return source
    return loose.get(_loose_key(source))


def missing_required_columns(column_names: Iterable[str], fmt: SourceFormat) -> list[str]:
    """Source names of the required columns of ``fmt`` absent from ``column_names``."""
    exact, loose = _index(column_names)
    mapping = SOURCE_COLUMNS[fmt]
    return [
        mapping[c]
        for c in sorted(REQUIRED_COLUMNS[fmt], key=list(mapping).index)
        if _lookup(mapping[c], exact, loose) is None
    ]


def columns_to_read(column_names: Iterable[str], fmt: SourceFormat) -> dict[str, str]:
    """Map canonical name -> actual source column name, for the columns worth reading.

    Required columns must be present (else :class:`FileFormatError`); optional columns are
    included only when present. Names match exactly first, then after
    :func:`normalise_column_name` ignoring case and underscores (schema drift such as
    ``reservation/ReservationArn``). CUR 2.0's ``product`` map is read only when the file
    has no top-level ``product_product_name``.
    """
    names = list(column_names)
    missing = missing_required_columns(names, fmt)
    if missing:
        raise FileFormatError(
            f"{_FORMAT_LABEL[fmt]} is missing required columns: {', '.join(missing)}"
        )
    exact, loose = _index(names)
    result: dict[str, str] = {}
    for canonical, source in SOURCE_COLUMNS[fmt].items():
        found = _lookup(source, exact, loose)
        if found is not None:
            result[canonical] = found
    if "product_product_name" in result:
        result.pop("product", None)
    return result


def detect_format(column_names: Iterable[str], *, parquet: bool) -> SourceFormat:
    """Decide the format of a file from its header (CSV) or schema (Parquet).

    * a ``lineItem/…`` header -> legacy CUR CSV;
    * a ``BilledCost`` column -> FOCUS;
    * a ``line_item_unblended_cost`` column -> CUR 2.0 when any of
      :data:`CUR2_MARKER_COLUMNS` is present or the file is a CSV, else legacy Athena
      Parquet.

    The required columns of the detected format are checked too. Raises
    :class:`FileFormatError` naming the missing columns when no format fits.
    """
    names = [str(n).lstrip("\ufeff").strip() for n in column_names]
    name_set = set(names)
    kind = "Parquet" if parquet else "CSV"

    fmt: SourceFormat
    if any(n.startswith("lineItem/") for n in names):
        if parquet:
            raise FileFormatError(
                "Parquet file with legacy CSV column names (lineItem/…) is not supported"
            )
        fmt = SourceFormat.LEGACY_CSV
    elif "BilledCost" in name_set:
        fmt = SourceFormat.FOCUS_PARQUET if parquet else SourceFormat.FOCUS_CSV
    elif "line_item_unblended_cost" in name_set:
        if not parquet:
            fmt = SourceFormat.CUR2_CSV
        elif name_set & CUR2_MARKER_COLUMNS:
            fmt = SourceFormat.CUR2_PARQUET
        else:
            fmt = SourceFormat.LEGACY_PARQUET
    else:
        shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        raise FileFormatError(
            f"unrecognised CUR {kind} {'schema' if parquet else 'header'}: missing "
            "lineItem/UnblendedCost (legacy CUR), line_item_unblended_cost (CUR 2.0 / Athena) "
            f"and BilledCost (FOCUS); found {len(names)} columns: {shown or '(none)'}"
        )

    missing = missing_required_columns(names, fmt)
    if missing:
        raise FileFormatError(
            f"{_FORMAT_LABEL[fmt]} is missing required columns: {', '.join(missing)}"
        )
    return fmt
