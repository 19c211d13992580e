"""Exact partial aggregation of CUR line items with Arrow compute (SPEC §4).

Pure: no I/O. Input batches carry the canonical column names of
:mod:`cur_ray.domain.columns` (the reader renames the source columns); output tables follow
:data:`PARTIAL_SCHEMA` and hold two grains side by side:

* ``daily`` rows, keyed by (billing_period, usage_date, usage_account_id, currency), with
  ``service_code``, ``service_name`` and ``charge_category`` set to ``""``;
* ``monthly`` rows, keyed by (billing_period, usage_account_id, service_code,
  charge_category, currency), with ``usage_date`` null.

Money is summed as ``decimal128(38, 18)`` (never floats), so the figures equal an exact
decimal sum of the source strings. Measures whose source column is absent are null. Empty
values count as 0, except in ``blended_cost``, ``net_unblended_cost`` and
``net_amortized_cost``: there an empty value is null on its row, so a group is null only
when all its rows are (e.g. the always-present but empty net columns of CUR 2.0 without
private pricing) and the sum of its non-null rows otherwise.

Work per row is vectorised: batches are first grouped on their raw dimensions (dictionary
encoded) into a small "fine" table; categories, months and the two grains are derived from
that table, whose size is bounded by the number of distinct dimension values, not rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from cur_ray.domain.billing import SourceFormat
from cur_ray.errors import FileFormatError

__all__ = [
    "CHARGE_CATEGORY_BY_LINE_ITEM_TYPE",
    "DAILY_KEYS",
    "DECIMAL_TYPE",
    "EXCLUDED_OPERATIONS",
    "MEASURES",
    "MONTHLY_KEYS",
    "PARTIAL_KEYS",
    "PARTIAL_SCHEMA",
    "aggregate",
    "aggregate_batches",
    "merge_partials",
]

DECIMAL_TYPE = pa.decimal128(38, 18)
# Operands of an addition/subtraction: Arrow widens p+1, and 38 is decimal128's limit.
_OPERAND_TYPE = pa.decimal128(37, 18)
_ZERO = pa.scalar(Decimal(0), DECIMAL_TYPE)

MEASURES: tuple[str, ...] = (
    "unblended_cost",
    "blended_cost",
    "net_unblended_cost",
    "amortized_cost",
    "net_amortized_cost",
    "list_cost",
)
DAILY_KEYS: tuple[str, ...] = ("billing_period", "usage_date", "usage_account_id", "currency")
MONTHLY_KEYS: tuple[str, ...] = (
    "billing_period",
    "usage_account_id",
    "service_code",
    "charge_category",
    "currency",
)
PARTIAL_KEYS: tuple[str, ...] = (
    "grain",
    "billing_period",
    "usage_date",
    "usage_account_id",
    "service_code",
    "charge_category",
    "currency",
)

_PARTIAL_FIELDS: list[pa.Field] = [
    pa.field("grain", pa.string(), nullable=False),
    pa.field("billing_period", pa.date32(), nullable=False),
    pa.field("usage_date", pa.date32()),
    pa.field("usage_account_id", pa.string(), nullable=False),
    pa.field("service_code", pa.string(), nullable=False),
    pa.field("service_name", pa.string(), nullable=False),
    pa.field("charge_category", pa.string(), nullable=False),
    pa.field("currency", pa.string(), nullable=False),
    *(pa.field(m, DECIMAL_TYPE) for m in MEASURES),
    pa.field("line_items", pa.int64(), nullable=False),
]
PARTIAL_SCHEMA = pa.schema(_PARTIAL_FIELDS)
"""Partial aggregates of one file (or work unit); see the module docstring."""

EXCLUDED_OPERATIONS: tuple[str, ...] = ("EKSPod-EC2", "ECSTask-EC2")
"""Split cost allocation rows: they repeat cost already on the EC2 line items."""

CHARGE_CATEGORY_BY_LINE_ITEM_TYPE: dict[str, str] = {
    "Tax": "Tax",
    "Credit": "Credit",
    "Refund": "Adjustment",
    "Fee": "Purchase",
    "RIFee": "Purchase",
    "SavingsPlanUpfrontFee": "Purchase",
    "SavingsPlanRecurringFee": "Purchase",
}
"""FOCUS ChargeCategory of a CUR line item type; any other type is ``Usage``."""

_FINE_KEYS: tuple[str, ...] = (
    "billing_day",
    "usage_date",
    "usage_account_id",
    "service_code",
    "category_key",  # CUR: line_item_line_item_type; FOCUS: ChargeCategory
    "currency",
    "service_name",
)
_FINE_FIELDS: list[pa.Field] = [
    pa.field("billing_day", pa.date32()),
    pa.field("usage_date", pa.date32()),
    *(pa.field(k, pa.string()) for k in _FINE_KEYS[2:]),
    *(pa.field(m, DECIMAL_TYPE) for m in MEASURES),
    pa.field("line_items", pa.int64()),
]
_FINE_SCHEMA = pa.schema(_FINE_FIELDS)

_BATCH_ROWS = 64 * 1024  # small CSV blocks are coalesced to this many rows
_COMPACT_EVERY = 16  # fine tables kept before they are merged into one

_ZONE_SUFFIX = r"(Z|z|[+-]\d\d:?\d\d)$"

ArrayLike = pa.Array | pa.ChunkedArray
_NULL_STRING = pa.scalar(None, pa.string())


# ----------------------------------------------------------------------------- conversions


def _has(batch: pa.RecordBatch, name: str) -> bool:
    return batch.schema.get_field_index(name) >= 0


def _fill_null(values: ArrayLike, fill: pa.Scalar) -> ArrayLike:
    # pc.fill_null with a scalar; the stubs only accept arguments of one type.
    fill_null: Any = pc.fill_null
    return cast(ArrayLike, fill_null(values, fill))


def _plain(arr: pa.Array) -> pa.Array:
    if isinstance(arr, pa.DictionaryArray):
        return arr.dictionary_decode()
    return arr


def _strings(arr: pa.Array) -> pa.Array:
    """Plain ``string`` array of any string-like, dictionary or integer column."""
    arr = _plain(arr)
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    return arr


def _key(arr: pa.Array) -> pa.DictionaryArray:
    """Dictionary-encoded string key: grouping on dictionary indices is much cheaper."""
    if isinstance(arr, pa.DictionaryArray) and arr.type.value_type == pa.string():
        return arr
    return cast(pa.DictionaryArray, pc.dictionary_encode(_strings(arr)))


def _blank_to_null(arr: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(arr)
    blank = pc.is_in(trimmed, value_set=pa.array(["", "NULL", "null"]))
    return pc.if_else(blank, _NULL_STRING, trimmed)


def _decimal_from_strings(arr: pa.Array, name: str) -> pa.Array:
    try:
        return arr.cast(DECIMAL_TYPE)
    except pa.ArrowInvalid:
        pass  # blanks, "NULL", white space, or more than 18 decimals: slower path below
    cleaned = _blank_to_null(arr)
    try:
        return cleaned.cast(DECIMAL_TYPE)
    except pa.ArrowInvalid as exc:
        if "Rescaling" not in str(exc):
            raise FileFormatError(f"column {name}: not a decimal number ({exc})") from exc
    try:
        wide = cleaned.cast(pa.decimal256(76, 38))
        # Round (half to even) beyond 1e-18; the safe cast then still rejects overflow.
        return pc.round(wide, ndigits=18).cast(DECIMAL_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FileFormatError(f"column {name}: not a decimal(38, 18) number ({exc})") from exc


def _decimal(arr: pa.Array, name: str, *, nulls_as_zero: bool = True) -> pa.Array:
    """Exact ``decimal128(38, 18)`` values of a cost column, nulls as 0 unless told otherwise.

    Strings are parsed as decimals (``1.0E-5``, ``-2.6137``; blank and ``NULL`` are null);
    floating-point columns go through their shortest round-trip text (``0.1`` stays 0.1
    instead of 0.1000000000000000055…).
    """
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.repeat(_ZERO, len(arr)) if nulls_as_zero else pa.nulls(len(arr), DECIMAL_TYPE)
    try:
        if pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
            out = _decimal_from_strings(arr.cast(pa.string()), name)
        elif pa.types.is_decimal(t):
            out = arr if t == DECIMAL_TYPE else pc.round(arr, ndigits=18).cast(DECIMAL_TYPE)
        elif pa.types.is_integer(t):
            out = arr.cast(DECIMAL_TYPE)
        else:
            raise FileFormatError(f"column {name}: type {t} is not a number")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FileFormatError(f"column {name}: cannot convert {t} to decimal ({exc})") from exc
    if out.null_count and nulls_as_zero:
        return cast(pa.Array, _fill_null(out, _ZERO))
    return out


def _dates_from_strings(values: pa.Array, name: str) -> pa.Array:
    """UTC dates of ISO-8601 strings with or without zone (no zone means UTC)."""
    s = _blank_to_null(values)
    zoned = pc.match_substring_regex(s, _ZONE_SUFFIX)
    date_only = pc.equal(pc.utf8_length(cast(pa.StringArray, s)), pa.scalar(10, pa.int32()))
    suffix = pc.if_else(date_only, pa.scalar("T00:00:00Z"), pa.scalar("Z"))
    fixed = pc.if_else(zoned, s, pc.binary_join_element_wise(s, suffix, pa.scalar("")))
    try:
        stamps = fixed.cast(pa.timestamp("ns", "UTC"))
    except pa.ArrowInvalid as exc:
        raise FileFormatError(f"column {name}: not an ISO-8601 timestamp ({exc})") from exc
    return stamps.cast(pa.timestamp("ns")).cast(pa.date32())


def _utc_date(arr: pa.Array, name: str) -> pa.Array:
    """``date32`` of the UTC date of a timestamp column (string, timestamp or date)."""
    t = arr.type
    if isinstance(arr, pa.DictionaryArray) and (
        pa.types.is_string(arr.type.value_type) or pa.types.is_large_string(arr.type.value_type)
    ):
        dates = _dates_from_strings(arr.dictionary.cast(pa.string()), name)
        return pc.take(dates, arr.indices)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        # Timestamps repeat (hourly or daily granularity): parse each distinct value once.
        encoded = cast(pa.DictionaryArray, pc.dictionary_encode(arr.cast(pa.string())))
        return pc.take(_dates_from_strings(encoded.dictionary, name), encoded.indices)
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            # Dropping the zone keeps the UTC instant; casting a zoned value straight to
            # date32 would give the local date instead.
            arr = arr.cast(pa.timestamp(t.unit))
        return arr.cast(pa.date32())
    if pa.types.is_date(t):
        return arr.cast(pa.date32())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.date32())
    raise FileFormatError(f"column {name}: type {t} is not a timestamp")


# ---------------------------------------------------------------------------------- CUR rows


class _TypeMasks:
    """Boolean masks of line item types, computed on dictionary indices."""

    def __init__(self, types: pa.DictionaryArray) -> None:
        self._types = types
        self._index = {v: i for i, v in enumerate(types.dictionary.to_pylist()) if v is not None}

    def present(self, *names: str) -> bool:
        return any(n in self._index for n in names)

    def mask(self, *names: str) -> pa.Array | None:
        ids = [self._index[n] for n in names if n in self._index]
        if not ids:
            return None
        hit = pc.is_in(self._types.indices, value_set=pa.array(ids, self._types.indices.type))
        return cast(pa.Array, _fill_null(hit, pa.scalar(False)))


def _sum2(a: pa.Array | pa.Scalar, b: pa.Array | pa.Scalar, *, subtract: bool = False) -> ArrayLike:
    fn = pc.subtract if subtract else pc.add
    out = fn(a.cast(_OPERAND_TYPE), b.cast(_OPERAND_TYPE))
    return cast(ArrayLike, out.cast(DECIMAL_TYPE))


def _cur_amortized(
    masks: _TypeMasks,
    base: pa.Array,
    column: Callable[[str], pa.Array | pa.Scalar],
    reservation_fee: pa.Array | None,
    *,
    net: bool,
) -> pa.Array:
    """The Cloud Intelligence Dashboards amortized (``net``: net amortized) cost per row.

    Only branches of line item types present in the batch are evaluated. The net variant of
    SavingsPlanRecurringFee uses the same commitment columns: CUR has no net variant of
    ``savings_plan_total_commitment_to_date`` / ``savings_plan_used_commitment``.
    """
    p = "net_" if net else ""
    branches: list[tuple[pa.Array, Callable[[], ArrayLike | pa.Scalar]]] = []

    def add(mask: pa.Array | None, value: Callable[[], ArrayLike | pa.Scalar]) -> None:
        if mask is not None:
            branches.append((mask, value))

    add(
        masks.mask("SavingsPlanCoveredUsage"),
        lambda: column(f"savings_plan_{p}savings_plan_effective_cost"),
    )
    add(
        masks.mask("SavingsPlanRecurringFee"),
        lambda: _sum2(
            column("savings_plan_total_commitment_to_date"),
            column("savings_plan_used_commitment"),
            subtract=True,
        ),
    )
    add(masks.mask("SavingsPlanNegation", "SavingsPlanUpfrontFee"), lambda: _ZERO)
    add(masks.mask("DiscountedUsage"), lambda: column(f"reservation_{p}effective_cost"))
    add(
        masks.mask("RIFee"),
        lambda: _sum2(
            column(f"reservation_{p}unused_amortized_upfront_fee_for_billing_period"),
            column(f"reservation_{p}unused_recurring_fee"),
        ),
    )
    add(reservation_fee, lambda: _ZERO)
    if not branches:
        return base
    conditions = pc.make_struct(
        *(m for m, _ in branches), field_names=[f"c{i}" for i in range(len(branches))]
    )
    return pc.case_when(conditions, *(value() for _, value in branches), base)


def _cur_service_name(batch: pa.RecordBatch) -> pa.Array | None:
    if _has(batch, "product_product_name"):
        return batch.column("product_product_name")
    if not _has(batch, "product"):
        return None
    product = _plain(batch.column("product"))
    if pa.types.is_map(product.type):
        key = pa.scalar("product_name", product.type.key_type)
        return pc.map_lookup(product, key, "first")
    if pa.types.is_string(product.type) or pa.types.is_large_string(product.type):
        # CUR 2.0 CSV writes the map as a JSON object; JSON escapes are left as they are.
        found = pc.extract_regex(
            product.cast(pa.string()),
            r'"product_name"\s*:\s*"(?P<name>[^"\\]*(?:\\.[^"\\]*)*)"',
        )
        return pc.struct_field(found, [0])
    return None


def _cur_rows(batch: pa.RecordBatch) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Dimension keys and per-row measures of a CUR batch (excluded rows already removed)."""
    types = _key(batch.column("line_item_line_item_type"))
    masks = _TypeMasks(types)

    def column(name: str) -> pa.Array | pa.Scalar:
        return _decimal(batch.column(name), name) if _has(batch, name) else _ZERO

    reservation_fee = None
    fee = masks.mask("Fee")
    if fee is not None and _has(batch, "reservation_reservation_a_r_n"):
        arn = _blank_to_null(_strings(batch.column("reservation_reservation_a_r_n")))
        reservation_fee = pc.and_(fee, pc.is_valid(arn))

    unblended = _decimal(batch.column("line_item_unblended_cost"), "line_item_unblended_cost")
    measures: dict[str, pa.Array] = {
        "unblended_cost": unblended,
        "amortized_cost": _cur_amortized(masks, unblended, column, reservation_fee, net=False),
    }
    # Blended and net costs stay null on rows where they are empty (CUR 2.0 always has the
    # net columns, empty for accounts without private pricing): a group of such rows is
    # null, not 0. Net amortized follows net unblended row by row.
    if _has(batch, "line_item_blended_cost"):
        measures["blended_cost"] = _decimal(
            batch.column("line_item_blended_cost"), "line_item_blended_cost", nulls_as_zero=False
        )
    if _has(batch, "line_item_net_unblended_cost"):
        net = _decimal(
            batch.column("line_item_net_unblended_cost"),
            "line_item_net_unblended_cost",
            nulls_as_zero=False,
        )
        measures["net_unblended_cost"] = net
        if net.null_count == len(net):
            measures["net_amortized_cost"] = net
        else:
            filled = cast(pa.Array, _fill_null(net, _ZERO)) if net.null_count else net
            net_amortized = _cur_amortized(masks, filled, column, reservation_fee, net=True)
            if net.null_count:
                net_amortized = pc.if_else(
                    pc.is_valid(net), net_amortized, pa.scalar(None, DECIMAL_TYPE)
                )
            measures["net_amortized_cost"] = net_amortized
    if _has(batch, "pricing_public_on_demand_cost"):
        listed = _decimal(
            batch.column("pricing_public_on_demand_cost"), "pricing_public_on_demand_cost"
        )
        negation = masks.mask("SavingsPlanNegation")
        measures["list_cost"] = listed if negation is None else pc.if_else(negation, _ZERO, listed)

    account = batch.column("line_item_usage_account_id")
    if pa.types.is_integer(account.type):
        # An integer-typed column lost the leading zeros of the 12-digit AWS account id.
        account = pc.utf8_lpad(account.cast(pa.string()), 12, "0")
    name = _cur_service_name(batch)
    keys = {
        "billing_day": _utc_date(
            batch.column("bill_billing_period_start_date"), "bill_billing_period_start_date"
        ),
        "usage_date": _utc_date(
            batch.column("line_item_usage_start_date"), "line_item_usage_start_date"
        ),
        "usage_account_id": _key(account),
        "service_code": _key(batch.column("line_item_product_code")),
        "category_key": types,
        "currency": _key(batch.column("line_item_currency_code")),
        "service_name": _key(name) if name is not None else pa.nulls(len(batch), pa.string()),
    }
    return keys, measures


def _focus_rows(batch: pa.RecordBatch) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Dimension keys and per-row measures of a FOCUS batch."""
    service_name = _strings(batch.column("ServiceName"))
    service_code = service_name
    if _has(batch, "x_ServiceCode"):
        code = _blank_to_null(_strings(batch.column("x_ServiceCode")))
        service_code = pc.coalesce(code, service_name)
    keys = {
        "billing_day": _utc_date(batch.column("BillingPeriodStart"), "BillingPeriodStart"),
        "usage_date": _utc_date(batch.column("ChargePeriodStart"), "ChargePeriodStart"),
        "usage_account_id": _key(batch.column("SubAccountId")),
        "service_code": _key(service_code),
        "category_key": _key(batch.column("ChargeCategory")),
        "currency": _key(batch.column("BillingCurrency")),
        "service_name": _key(service_name),
    }
    measures = {"unblended_cost": _decimal(batch.column("BilledCost"), "BilledCost")}
    if _has(batch, "EffectiveCost"):
        measures["amortized_cost"] = _decimal(batch.column("EffectiveCost"), "EffectiveCost")
    if _has(batch, "ListCost"):
        measures["list_cost"] = _decimal(batch.column("ListCost"), "ListCost")
    return keys, measures


# ------------------------------------------------------------------------------- grouping


def _exclude_split_cost_rows(batch: pa.RecordBatch, column: str) -> pa.RecordBatch:
    if not _has(batch, column):
        return batch
    operation = batch.column(column)
    if isinstance(operation, pa.DictionaryArray):
        hit_values = pc.is_in(operation.dictionary, value_set=pa.array(EXCLUDED_OPERATIONS))
        if not pc.any(hit_values).as_py():
            return batch
    hits = pc.is_in(_strings(operation), value_set=pa.array(EXCLUDED_OPERATIONS))
    excluded = cast(pa.BooleanArray, _fill_null(hits, pa.scalar(False)))
    if not pc.any(excluded).as_py():
        return batch
    return batch.filter(pc.invert(excluded))


def _fine_aggregate(batch: pa.RecordBatch, fmt: SourceFormat) -> pa.Table | None:
    """Group one batch on its raw dimensions; ``None`` when no row is left."""
    batch = _exclude_split_cost_rows(
        batch, "x_Operation" if fmt.is_focus else "line_item_operation"
    )
    if batch.num_rows == 0:
        return None
    keys, measures = _focus_rows(batch) if fmt.is_focus else _cur_rows(batch)
    table = pa.table({**keys, **measures})
    grouped = table.group_by(list(_FINE_KEYS)).aggregate(
        [(m, "sum") for m in measures] + [([], "count_all")]
    )
    n = grouped.num_rows
    columns: list[pa.Array | pa.ChunkedArray] = []
    for field in _FINE_SCHEMA:
        if field.name in keys:
            columns.append(grouped.column(field.name).cast(field.type))
        elif field.name in measures:
            columns.append(grouped.column(f"{field.name}_sum"))
        elif field.name == "line_items":
            columns.append(grouped.column("count_all"))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=_FINE_SCHEMA)


def _sum_options() -> pc.ScalarAggregateOptions:
    # min_count=1: a measure stays null only when every input is null (column absent).
    return pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)


def _compact_fine(tables: Sequence[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables)
    grouped = table.group_by(list(_FINE_KEYS)).aggregate(
        [(m, "sum", _sum_options()) for m in MEASURES] + [("line_items", "sum")]
    )
    columns = [
        grouped.column(f.name if f.name in _FINE_KEYS else f"{f.name}_sum") for f in _FINE_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=_FINE_SCHEMA)


def _charge_categories(category_key: ArrayLike, fmt: SourceFormat) -> ArrayLike:
    if fmt.is_focus:
        return _fill_null(category_key, pa.scalar(""))
    distinct = pc.unique(category_key)
    mapped = pa.array(
        [CHARGE_CATEGORY_BY_LINE_ITEM_TYPE.get(v or "", "Usage") for v in distinct.to_pylist()],
        pa.string(),
    )
    return pc.take(mapped, pc.index_in(category_key, value_set=distinct))


def _partials_from_fine(fine: pa.Table, fmt: SourceFormat) -> pa.Table:
    missing = pc.sum(
        pc.if_else(
            pc.or_(pc.is_null(fine["billing_day"]), pc.is_null(fine["usage_date"])),
            fine["line_items"],
            0,
        )
    ).as_py()
    if missing:
        label = (
            "BillingPeriodStart/ChargePeriodStart"
            if fmt.is_focus
            else ("bill_billing_period_start_date/line_item_usage_start_date")
        )
        raise FileFormatError(f"{missing} line items have no {label}")

    n = fine.num_rows
    billing_period = pc.floor_temporal(fine["billing_day"], unit="month")
    account = _fill_null(fine["usage_account_id"], pa.scalar(""))
    currency = _fill_null(fine["currency"], pa.scalar(""))
    blank = pa.repeat(pa.scalar("", pa.string()), n)
    measures = {m: fine[m] for m in MEASURES}
    daily = {
        "grain": pa.repeat(pa.scalar("daily"), n),
        "billing_period": billing_period,
        "usage_date": fine["usage_date"],
        "usage_account_id": account,
        "service_code": blank,
        "service_name": blank,
        "charge_category": blank,
        "currency": currency,
        **measures,
        "line_items": fine["line_items"],
    }
    monthly = {
        **daily,
        "grain": pa.repeat(pa.scalar("monthly"), n),
        "usage_date": pa.nulls(n, pa.date32()),
        "service_code": _fill_null(fine["service_code"], pa.scalar("")),
        "service_name": fine["service_name"],
        "charge_category": _charge_categories(fine["category_key"], fmt),
    }
    loose = pa.schema([f.with_nullable(True) for f in PARTIAL_SCHEMA])
    return _regroup(pa.concat_tables([pa.table(daily).cast(loose), pa.table(monthly).cast(loose)]))


def _regroup(table: pa.Table) -> pa.Table:
    """Group partial rows on :data:`PARTIAL_KEYS`, sorted; the merge of every path."""
    name = table["service_name"]
    code = table["service_code"]
    # Names equal to the code are fallbacks from an earlier merge: never let them win max().
    fallback = _fill_null(
        pc.or_(pc.equal(name, pa.scalar("")), pc.equal(name, code)), pa.scalar(True)
    )
    table = table.set_column(
        table.schema.get_field_index("service_name"),
        "service_name",
        pc.if_else(fallback, _NULL_STRING, name),
    )
    grouped = table.group_by(list(PARTIAL_KEYS)).aggregate(
        [(m, "sum", _sum_options()) for m in MEASURES]
        + [("line_items", "sum"), ("service_name", "max")]
    )
    columns: list[pa.ChunkedArray] = []
    for field in PARTIAL_SCHEMA:
        if field.name in PARTIAL_KEYS:
            columns.append(grouped[field.name])
        elif field.name == "service_name":
            columns.append(pc.coalesce(grouped["service_name_max"], grouped["service_code"]))
        else:
            columns.append(grouped[f"{field.name}_sum"])
    result = pa.Table.from_arrays(columns, schema=PARTIAL_SCHEMA)
    return result.sort_by([(k, "ascending") for k in PARTIAL_KEYS])


# ------------------------------------------------------------------------------ public API


def _concat_batches(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    # pa.concat_batches (pyarrow >= 19) is missing from pyarrow-stubs 20.
    concat: Callable[[list[pa.RecordBatch]], pa.RecordBatch] = pa.concat_batches  # type: ignore[attr-defined]
    return concat(batches)


def _coalesced(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Concatenate small consecutive batches (CSV blocks) to about ``rows`` rows."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if batch.num_rows >= rows and not pending:
            yield batch
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= rows:
            yield _concat_batches(pending)
            pending, pending_rows = [], 0
    if pending:
        yield _concat_batches(pending)


def aggregate_batches(batches: Iterable[pa.RecordBatch], fmt: SourceFormat) -> pa.Table:
    """Aggregate a stream of normalised batches of one file into :data:`PARTIAL_SCHEMA`.

    Memory is bounded by one (coalesced) batch plus the small intermediate tables, so the
    stream may come straight from a CSV or Parquet reader. All batches must have the same
    columns. Raises :class:`FileFormatError` for values that cannot be converted.
    """
    fine: list[pa.Table] = []
    for batch in _coalesced(batches, _BATCH_ROWS):
        part = _fine_aggregate(batch, fmt)
        if part is not None:
            fine.append(part)
        if len(fine) >= _COMPACT_EVERY:
            fine = [_compact_fine(fine)]
    if not fine:
        return PARTIAL_SCHEMA.empty_table()
    return _partials_from_fine(_compact_fine(fine), fmt)


def aggregate(table: pa.Table | pa.RecordBatch, fmt: SourceFormat) -> pa.Table:
    """Aggregate one normalised table or batch (canonical column names) per SPEC §4.

    Returns partial aggregates in :data:`PARTIAL_SCHEMA`, sorted by :data:`PARTIAL_KEYS`.
    """
    if isinstance(table, pa.RecordBatch):
        return aggregate_batches([table], fmt)
    return aggregate_batches(table.to_batches(max_chunksize=_BATCH_ROWS), fmt)


def merge_partials(tables: Sequence[pa.Table]) -> pa.Table:
    """Merge partial aggregates (associative and commutative), sorted by the keys.

    The result is the same whatever the order or grouping of ``tables``; a measure is null
    only when it is null in every input row of its group. Its size is bounded by the number
    of distinct keys, not by the rows of the source files.
    """
    if not tables:
        return PARTIAL_SCHEMA.empty_table()
    loose = pa.schema([f.with_nullable(True) for f in PARTIAL_SCHEMA])
    conformed = [t.select(PARTIAL_SCHEMA.names).cast(loose) for t in tables]
    return _regroup(pa.concat_tables(conformed))
