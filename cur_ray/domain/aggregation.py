"""Exact partial aggregation of CUR line items with Arrow compute (SPEC §4).

Pure: no I/O. Input batches carry the canonical column names of
:mod:`cur_ray.domain.columns` (the reader renames the source columns); output tables follow
:data:`PARTIAL_SCHEMA` and hold two grains side by side:

* ``daily`` rows, keyed by (billing_period, usage_date, usage_account_id, currency), with
  ``service_code``, ``service_name`` and ``charge_category`` set to ``""``;
* ``monthly`` rows, keyed by (billing_period, usage_account_id, service_code,
  charge_category, currency), with ``usage_date`` null.

Money is exact (never floats): the figures equal an exact decimal sum of the source values,
stored as ``decimal128(38, 18)``. Decimal sums run on 256 bits and come back through a
checked cast, so a figure of 1e20 or more raises :class:`AmountOutOfRangeError` instead of
wrapping around. Measures whose source column is absent are null. Empty
values count as 0, except in ``blended_cost``, ``net_unblended_cost`` and
``net_amortized_cost``: there an empty value is null on its row, so a group is null only
when all its rows are (e.g. the always-present but empty net columns of CUR 2.0 without
private pricing) and the sum of its non-null rows otherwise.

How it stays fast (no Python loop per row):

* **Keys as small integers.** Every dimension becomes an integer code per row: dictionary
  indices for strings (Parquet columns are read dictionary-encoded; others are encoded once
  per batch), day numbers for dates. The codes of a grain are packed into one ``int64`` key,
  so each grain is one hash aggregation on a single integer column; the codes are decoded
  back to strings only for the (few) groups.
* **Money as scaled integers, proven exact.** Each value is turned into an ``int64`` count of
  1e-10 (see :func:`_ints_from_floats` for the proof for doubles; decimals and decimal
  strings with at most 10 decimals convert by an exact cast). Integer sums are exact while
  they cannot overflow, which a bound carried with every amount checks per batch
  (:meth:`_Amounts.for_sum`; beyond it the batch sums decimals). The few values that have
  no exact count of 1e-10 (more than 10 decimals, ``|x| >= 2**19``) are "extra rows":
  they take the ``decimal128(38, 18)`` path of the reference implementation
  (:func:`_decimal`) and are added to their groups exactly. A text column that cannot be
  cast even then (blanks with spaces, garbage) takes the reference path as a whole. So
  results never depend on the path taken; ``tests/unit/test_exact_sums.py`` checks this
  against Python's :mod:`decimal` on random values of every kind.
* **Formulas on the rows that need them.** The amortized-cost branches read their columns
  only at the rows of their line item types.

A batch yields its grouped daily and monthly rows; batches are merged by
:func:`_regroup` on the string keys, so memory is bounded by the number of keys, never rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cur_ray.domain.billing import SourceFormat
from cur_ray.errors import AmountOutOfRangeError, FileFormatError

__all__ = [
    "CHARGE_CATEGORY_BY_LINE_ITEM_TYPE",
    "DAILY_KEYS",
    "DECIMAL_TYPE",
    "EXCLUDED_OPERATIONS",
    "MEASURES",
    "MONTHLY_KEYS",
    "PARTIAL_KEYS",
    "PARTIAL_SCHEMA",
    "WIDE_DECIMAL_TYPE",
    "aggregate",
    "aggregate_batches",
    "merge_partials",
]

DECIMAL_TYPE = pa.decimal128(38, 18)
WIDE_DECIMAL_TYPE = pa.decimal256(76, 18)
"""Sums and additions run on 256 bits, then come back to :data:`DECIMAL_TYPE` by a checked
cast: Arrow's decimal128 sums wrap around silently past 2**127 (about 1.7e20)."""
_WIDE_OPERAND_TYPE = pa.decimal256(75, 18)  # Arrow widens an addition's precision by one
_ZERO = pa.scalar(Decimal(0), DECIMAL_TYPE)
_MAX_SUM = Decimal(10) ** (DECIMAL_TYPE.precision - DECIMAL_TYPE.scale)  # 1e20: out of range

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
_LOOSE_SCHEMA = pa.schema([f.with_nullable(True) for f in PARTIAL_SCHEMA])

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

_BATCH_ROWS = 128 * 1024  # small CSV blocks are coalesced to this many rows
_COMPACT_EVERY = 8  # grouped batch tables kept before they are merged into one

_ZONE_SUFFIX = r"(Z|z|[+-]\d\d:?\d\d)$"

ArrayLike = pa.Array | pa.ChunkedArray
_NULL_STRING = pa.scalar(None, pa.string())

# Exact scaled integers: amounts are int64 counts of 1e-10 (the _SCALED_TYPE's unit).
_SCALE_DIGITS = 10
_SCALE = 10.0**_SCALE_DIGITS
_SCALED_TYPE = pa.decimal128(38, _SCALE_DIGITS)
# |x| < 2**19: a double's rounding interval is narrower than 1e-10 (see _ints_from_floats).
_FAST_LIMIT = 2.0**19
# Any integer amount stays below this, so adding two of them cannot overflow int64.
_INT_LIMIT = 2**60
# A batch's integer sums are used only when the sum of absolute values stays below this.
_SUM_LIMIT = 2.0**62
# Packed group keys must stay below this (int64, with room for the -1 "dropped" key).
_KEY_LIMIT = 2**62


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
    instead of 0.1000000000000000055…). This is the reference path: the integer fast path
    of :func:`_amounts` gives the same values whenever it applies.
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


def _narrow(values: ArrayLike, name: str) -> ArrayLike:
    """``decimal128(38, 18)`` of wide (256-bit) sums, refusing any of 1e20 or more.

    ``decimal(38, 18)`` holds ``|x| < 1e20``; Arrow's checked cast enforces exactly that.
    """
    try:
        return values.cast(DECIMAL_TYPE)
    except pa.ArrowInvalid as exc:
        raise AmountOutOfRangeError(
            f"{name} sums to 1e20 or more in absolute value (beyond decimal(38, 18)): "
            "amounts this large are refused, not stored"
        ) from exc


def _widened(table: pa.Table, names: Iterable[str]) -> pa.Table:
    """``table`` with the decimal columns ``names`` cast to 256 bits where a 128-bit sum of
    them could leave ``decimal(38, 18)``.

    A column whose largest magnitude times its length stays below 1e20 is left as it is: no
    group's sum can then wrap or reach 1e20 (the usual case, and the faster sum).
    """
    for name in names:
        column = table[name]
        if not pa.types.is_decimal(column.type) or column.null_count == len(column):
            continue
        extremes = cast(dict[str, Decimal], pc.min_max(column).as_py())
        largest = max(abs(extremes["min"]), abs(extremes["max"]))
        if largest * len(column) >= _MAX_SUM:
            table = table.set_column(
                table.schema.get_field_index(name), name, column.cast(WIDE_DECIMAL_TYPE)
            )
    return table


def _sum2(
    a: pa.Array | pa.Scalar, b: pa.Array | pa.Scalar, *, subtract: bool = False, name: str
) -> ArrayLike:
    fn = pc.subtract if subtract else pc.add
    out = fn(a.cast(_WIDE_OPERAND_TYPE), b.cast(_WIDE_OPERAND_TYPE))
    return _narrow(cast(ArrayLike, out), name)


# ------------------------------------------------------------------ exact scaled integers


def _validity(arr: pa.Array) -> np.ndarray | None:
    """``True`` where ``arr`` is not null, or ``None`` when it has no nulls."""
    if not arr.null_count:
        return None
    return np.asarray(arr.is_valid())


def _ints_from_floats(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Exact ``int64`` counts of 1e-10 of a float64 column, the rows that have none, and an
    upper bound of the sum of the counts' absolute values (``None`` if unknown).

    The reference meaning of a double ``x`` is the decimal of its shortest round-trip text
    ``S`` (what :func:`_decimal` parses). Claim: if ``|x| < 2**19`` and ``r / 1e10 == x`` in
    IEEE arithmetic for an integer ``r``, then ``S == r * 1e-10`` exactly. Proof:

    1. ``r < 2**53`` and ``1e10`` are exact doubles and IEEE division rounds correctly, so
       the check says that the decimal ``R = r * 1e-10`` rounds to ``x``: ``R`` lies in the
       rounding interval of ``x``, which is at most one ulp wide, i.e. ``<= 2**-34 < 1e-10``
       for ``|x| < 2**19``; hence ``R`` is the only multiple of 1e-10 in it.
    2. ``S`` is the decimal with the fewest significant digits in that interval. The
       interval is far narrower than ``x``, so (unless it holds a power of ten, which is
       then both ``S`` and the only multiple ``R``) every number in it has the same count
       ``k`` of integer digits and a decimal with ``f`` fraction digits has ``k + f``
       significant digits. ``R`` has at most 10 fraction digits, so ``S`` has at most 10
       too, making ``S`` a multiple of 1e-10 in the interval: ``S == R``.

    ``r`` is found as ``rint(x * 1e10)``; the product's rounding can miss by one for large
    ``|x|``, so failing values are retried with the exact split ``x = trunc(x) + frac``.
    Values that still fail (NaN, infinities, ``|x| >= 2**19``, more than 10 decimals) are
    returned as sorted row indices, with 0 in the integers: the caller converts them with
    the exact decimal path. Null rows give 0.
    """
    values = arr.fill_null(0.0) if arr.null_count else arr
    x = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        magnitude = np.abs(x)
        r = np.rint(x * _SCALE)
        bad = ~((r / _SCALE == x) & (magnitude < _FAST_LIMIT))
        total = float(magnitude.sum()) * _SCALE * 1.001  # float rounding margin
        bound = total if math.isfinite(total) else None
        if not bad.any():
            return r.astype(np.int64), _NO_ROWS, bound
        idx = np.flatnonzero(bad)
        xi = x[idx]
        whole = np.trunc(xi)
        ri = whole * _SCALE + np.rint((xi - whole) * _SCALE)
        ok = (ri / _SCALE == xi) & (np.abs(xi) < _FAST_LIMIT)
        r[idx] = np.where(ok, ri, 0.0)
    return r.astype(np.int64), idx[~ok], bound


def _ints_from_decimals(arr: pa.Array) -> np.ndarray | None:
    """Exact ``int64`` counts of 1e-10 of a decimal or decimal-string column, else ``None``.

    A safe cast to ``decimal128(38, 10)`` is exact or fails (more than 10 decimals, blanks,
    garbage); its 128-bit values are then read directly and must fit :data:`_INT_LIMIT`.
    Null rows give 0.
    """
    try:
        scaled = arr.cast(_SCALED_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    n = len(scaled)
    buffer = scaled.buffers()[1]
    if buffer is None:
        return np.zeros(n, dtype=np.int64)
    words = np.frombuffer(cast(Any, buffer), dtype=np.int64, count=2 * (scaled.offset + n))
    pairs = words[2 * scaled.offset :].reshape(n, 2)
    low, high = pairs[:, 0], pairs[:, 1]
    valid = _validity(scaled)
    fits = (high == (low >> 63)) & (np.abs(low) < _INT_LIMIT)
    if valid is not None:
        fits |= ~valid
        low = np.where(valid, low, 0)
    if not fits.all():
        return None
    return np.array(low, dtype=np.int64)


def _ints_from_integers(arr: pa.Array) -> np.ndarray | None:
    values = arr.fill_null(0) if arr.null_count else arr
    ints = np.asarray(values.to_numpy(zero_copy_only=False)).astype(np.int64)
    if ints.size and np.abs(ints).max() >= _INT_LIMIT // 10**_SCALE_DIGITS:
        return None
    return ints * 10**_SCALE_DIGITS


def _ints_to_decimal(ints: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """``decimal128(38, 18)`` of int64 counts of 1e-10 (exact: a rescale by 10**8)."""
    n = len(ints)
    pairs = np.empty((n, 2), dtype=np.int64)
    pairs[:, 0] = ints
    pairs[:, 1] = ints >> 63  # two's complement sign extension to 128 bits
    validity = None
    null_count = 0
    if valid is not None:
        validity = pa.array(valid, pa.bool_()).buffers()[1]
        null_count = n - int(np.count_nonzero(valid))
    scaled = pa.Array.from_buffers(
        _SCALED_TYPE, n, [validity, pa.py_buffer(cast(Any, pairs))], null_count=null_count
    )
    return scaled.cast(DECIMAL_TYPE)


def _scatter(values: pa.Array, rows: np.ndarray, replacements: pa.Array) -> pa.Array:
    """``values`` with ``values[rows]`` (sorted, distinct) replaced by ``replacements``."""
    if rows.size == 0:
        return values
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(values, pa.array(mask), replacements)


_NO_ROWS = np.zeros(0, dtype=np.int64)


@dataclass
class _Amounts:
    """Exact money of a batch's rows: ``ints`` (int64 counts of 1e-10) or ``decimals``.

    ``valid`` is ``False`` on null rows of ``ints`` (``None``: no nulls; the value of
    ``ints`` on a null row means nothing). ``decimals`` (``decimal128(38, 18)``) carries its
    own nulls. With ``ints``, the few rows whose value is no whole count of 1e-10 (or too
    large) are listed in ``extra_rows`` (sorted) with their exact value in ``extra``;
    ``ints`` holds 0 there. ``bound``, when known, is an upper bound of the sum of
    ``|ints|``: it proves that integer sums of the batch cannot overflow.
    """

    ints: np.ndarray | None = None
    decimals: pa.Array | None = None
    valid: np.ndarray | None = None
    extra_rows: np.ndarray = dataclasses.field(default_factory=lambda: _NO_ROWS)
    extra: pa.Array | None = None
    bound: float | None = None

    def decimal(self) -> pa.Array:
        """The amounts as ``decimal128(38, 18)``."""
        if self.decimals is not None:
            return self.decimals
        assert self.ints is not None
        out = _ints_to_decimal(self.ints, self.valid)
        if self.extra is not None:
            out = _scatter(out, self.extra_rows, self.extra)
        return out

    def at(self, rows: np.ndarray) -> pa.Array:
        """Decimal values of the (sorted, distinct) ``rows`` of zero-filled amounts."""
        if self.ints is None:
            return self.decimal().take(rows)
        out = _ints_to_decimal(self.ints[rows], None)
        if self.extra is not None:
            _, mine, theirs = np.intersect1d(rows, self.extra_rows, return_indices=True)
            out = _scatter(out, mine, self.extra.take(theirs))
        return out

    def validity(self) -> np.ndarray | None:
        """``True`` on non-null rows, ``None`` when there is no null."""
        if self.ints is not None:
            return self.valid
        assert self.decimals is not None
        return _validity(self.decimals)

    def with_validity(self, valid: np.ndarray | None) -> _Amounts:
        """The same amounts, null where ``valid`` is ``False``."""
        if valid is None or valid.all():
            return self
        if self.ints is None:
            nulls = pa.scalar(None, DECIMAL_TYPE)
            return _Amounts(decimals=pc.if_else(pa.array(valid), self.decimal(), nulls))
        kept = valid[self.extra_rows]
        return _Amounts(
            ints=self.ints,
            valid=valid,
            extra_rows=self.extra_rows[kept],
            extra=None if self.extra is None else self.extra.filter(pa.array(kept)),
            bound=self.bound,
        )

    def for_sum(self) -> tuple[pa.Array, tuple[np.ndarray, pa.Array] | None]:
        """What to sum per group: int64 when no sum of the batch can overflow it, else
        decimals; plus the extra rows and their exact values (to add to their groups)."""
        if self.ints is not None:
            total = self.bound
            if total is None:
                total = float(np.abs(self.ints).sum(dtype=np.float64)) * 1.001
            if total < _SUM_LIMIT:
                mask = None if self.valid is None else ~self.valid
                ints = pa.array(self.ints, pa.int64(), mask=mask)
                if self.extra is None or self.extra_rows.size == 0:
                    return ints, None
                return ints, (self.extra_rows, self.extra)
        return self.decimal(), None


def _zeros(n: int) -> _Amounts:
    return _Amounts(ints=np.zeros(n, dtype=np.int64), bound=0.0)


def _amounts(
    arr: pa.Array, name: str, *, nulls_as_zero: bool = True, drop: np.ndarray | None = None
) -> _Amounts:
    """Exact amounts of one cost column: scaled integers when possible, else decimals.

    ``drop`` marks rows that will be excluded (split cost allocation): the decimal path
    ignores their values, so only rows that count can make the file fail.
    """
    arr = _plain(arr)
    t = arr.type
    n = len(arr)
    valid = None if nulls_as_zero else _validity(arr)
    if pa.types.is_null(t):
        if nulls_as_zero:
            return _zeros(n)
        return _Amounts(ints=np.zeros(n, dtype=np.int64), valid=np.zeros(n, dtype=bool))
    if pa.types.is_float64(t):
        ints, rows, bound = _ints_from_floats(arr)
        if drop is not None and rows.size:
            rows = rows[~drop[rows]]
        extra = None
        if rows.size:
            extra = _decimal(arr.take(rows), name)
        return _Amounts(ints=ints, valid=valid, extra_rows=rows, extra=extra, bound=bound)
    converted: np.ndarray | None = None
    if pa.types.is_decimal(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        converted = _ints_from_decimals(arr)
    elif pa.types.is_integer(t):
        converted = _ints_from_integers(arr)
    if converted is not None:
        return _Amounts(ints=converted, valid=valid)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        amounts = _amounts_of_texts(arr, name, valid, drop)
        if amounts is not None:
            return amounts
    if drop is not None and drop.any():
        arr = pc.if_else(pa.array(drop), pa.scalar(None, arr.type), arr)
    return _Amounts(decimals=_decimal(arr, name, nulls_as_zero=nulls_as_zero))


def _amounts_of_texts(
    arr: pa.Array, name: str, valid: np.ndarray | None, drop: np.ndarray | None
) -> _Amounts | None:
    """Decimal texts of which a few have more than 10 decimals: integers plus extra rows.

    The rows whose text has more than 10 characters after its ``.`` (or uses an exponent)
    go through the exact decimal path; the others must then cast exactly to counts of
    1e-10. ``None`` when that still fails (blanks with spaces, garbage, huge values): the
    caller converts the whole column with the decimal path.
    """
    texts = cast(pa.StringArray, arr.cast(pa.string()))
    # Byte positions and lengths (a numeric text is ASCII).
    dot = np.asarray(pc.find_substring(texts, ".").fill_null(-1).to_numpy(zero_copy_only=False))
    length = np.asarray(pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False))
    exponent = np.asarray(
        pc.match_substring(texts, "e", ignore_case=True)
        .fill_null(False)
        .to_numpy(zero_copy_only=False)
    )
    awkward = ((dot >= 0) & (length - dot - 1 > _SCALE_DIGITS)) | exponent
    rows = np.flatnonzero(awkward)
    if rows.size == 0 or rows.size > len(texts) // 4:
        return None
    converted = _ints_from_decimals(_scatter(texts, rows, pa.nulls(rows.size, pa.string())))
    if converted is None:
        return None
    if drop is not None:
        rows = rows[~drop[rows]]
    if rows.size == 0:
        return _Amounts(ints=converted, valid=valid)
    extra = _decimal(texts.take(rows), name)
    return _Amounts(ints=converted, valid=valid, extra_rows=rows, extra=extra)


def _add(a: _Amounts, b: _Amounts, *, subtract: bool = False, name: str) -> _Amounts:
    """Row-wise ``a + b`` (or ``a - b``) of zero-filled amounts."""
    if a.ints is not None and b.ints is not None:
        ints = a.ints - b.ints if subtract else a.ints + b.ints
        bound = None if a.bound is None or b.bound is None else a.bound + b.bound
        rows = np.union1d(a.extra_rows, b.extra_rows)
        if rows.size == 0:
            return _Amounts(ints=ints, bound=bound)
        extra = cast(pa.Array, _sum2(a.at(rows), b.at(rows), subtract=subtract, name=name))
        ints[rows] = 0
        return _Amounts(ints=ints, extra_rows=rows, extra=extra, bound=bound)
    total = _sum2(a.decimal(), b.decimal(), subtract=subtract, name=name)
    return _Amounts(decimals=cast(pa.Array, total))


def _select(base: _Amounts, branches: Sequence[tuple[np.ndarray, _Amounts]]) -> _Amounts:
    """``base`` with the rows of each branch (sorted row indices) replaced by its amounts."""
    if not branches:
        return base
    if base.ints is not None and all(b.ints is not None for _, b in branches):
        ints = base.ints.copy()
        valid = None if base.valid is None else base.valid.copy()
        extra_rows = [base.extra_rows]
        extras = [] if base.extra is None else [base.extra]
        for rows, branch in branches:
            ints[rows] = branch.ints
            if valid is not None:
                valid[rows] = True if branch.valid is None else branch.valid
            if extra_rows[0].size:
                replaced = np.zeros(len(ints), dtype=bool)
                replaced[rows] = True
                kept = ~replaced[extra_rows[0]]
                extra_rows[0] = extra_rows[0][kept]
                extras[0] = extras[0].filter(pa.array(kept))
            if branch.extra is not None and branch.extra_rows.size:
                extra_rows.append(rows[branch.extra_rows])
                extras.append(branch.extra)
        bounds = [base.bound, *(b.bound for _, b in branches)]
        bound = None if any(b is None for b in bounds) else sum(cast(list[float], bounds))
        all_rows = np.concatenate(extra_rows)
        if all_rows.size == 0:
            return _Amounts(ints=ints, valid=valid, bound=bound)
        order = np.argsort(all_rows, kind="stable")
        extra = pa.concat_arrays([e.cast(DECIMAL_TYPE) for e in extras]).take(order)
        return _Amounts(
            ints=ints, valid=valid, extra_rows=all_rows[order], extra=extra, bound=bound
        )
    out = base.decimal()
    for rows, branch in branches:
        out = _scatter(out, rows, branch.decimal())
    return _Amounts(decimals=out)


# ------------------------------------------------------------------------- keys as codes


@dataclass
class _Codes:
    """A dimension as integer codes per row: ``values[codes[i]]`` is row ``i``'s value."""

    codes: np.ndarray
    values: pa.Array

    @property
    def size(self) -> int:
        """Number of possible codes."""
        return len(self.values)


def _member(codes: np.ndarray, ids: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
    """``codes`` in ``ids`` (all codes below ``size``), by a lookup table: one gather per row."""
    table = np.zeros(size, dtype=bool)
    table[np.asarray(ids, dtype=np.int64)] = True
    return table[codes]


def _codes_of_dictionary(arr: pa.DictionaryArray) -> _Codes:
    dictionary = arr.dictionary
    if dictionary.type != pa.string():
        dictionary = dictionary.cast(pa.string())
    indices = arr.indices
    if indices.null_count:
        codes = np.asarray(indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False))
        values = pa.concat_arrays([dictionary, pa.nulls(1, pa.string())])
    else:
        codes = np.asarray(indices.to_numpy(zero_copy_only=False))
        values = dictionary
    return _Codes(codes, values)


def _codes(arr: pa.Array) -> _Codes:
    """String codes of a column: its dictionary when it has one, else one hash pass."""
    if isinstance(arr, pa.DictionaryArray) and (
        pa.types.is_string(arr.type.value_type) or pa.types.is_large_string(arr.type.value_type)
    ):
        return _codes_of_dictionary(arr)
    return _codes_of_dictionary(cast(pa.DictionaryArray, pc.dictionary_encode(_strings(arr))))


def _null_codes(n: int) -> _Codes:
    return _Codes(np.zeros(n, dtype=np.int64), pa.nulls(1, pa.string()))


@dataclass
class _Days:
    """A date dimension as day offsets from the batch's first date; ``valid`` marks non-null."""

    codes: np.ndarray
    first: int
    size: int
    valid: np.ndarray | None

    @classmethod
    def of(cls, dates: pa.Array) -> _Days:
        """Codes of a ``date32`` array."""
        valid = _validity(dates)
        days = np.asarray(dates.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False))
        days = days.astype(np.int64)
        live = days if valid is None else days[valid]
        if live.size == 0:
            return cls(np.zeros(len(days), dtype=np.int64), 0, 1, valid)
        first, last = int(live.min()), int(live.max())
        codes = days - first
        if valid is not None:
            codes[~valid] = 0
        return cls(codes, first, last - first + 1, valid)

    def dates(self, codes: np.ndarray) -> pa.Array:
        """``date32`` values of some codes."""
        return pa.array((codes + self.first).astype(np.int32), pa.int32()).cast(pa.date32())


# ------------------------------------------------------------------------------ batch rows


@dataclass
class _Rows:
    """One batch: dimension codes per row, exact measures per row, rows to leave out."""

    n: int
    billing_day: _Days
    usage_date: _Days
    account: _Codes
    service_code: _Codes
    category: _Codes  # CUR: line_item_line_item_type; FOCUS: ChargeCategory
    currency: _Codes
    service_name: _Codes
    measures: dict[str, _Amounts]
    drop: np.ndarray | None  # split cost allocation rows


def _split_cost_rows(batch: pa.RecordBatch, column: str) -> np.ndarray | None:
    """Rows of the batch with an excluded operation (``None`` when there is none)."""
    if not _has(batch, column):
        return None
    operation = batch.column(column)
    if isinstance(operation, pa.DictionaryArray):
        codes = _codes_of_dictionary(operation)
        hits = np.flatnonzero(
            np.asarray(
                pc.is_in(codes.values, value_set=pa.array(EXCLUDED_OPERATIONS)).fill_null(False)
            )
        )
        if hits.size == 0:
            return None
        drop = _member(codes.codes, hits, codes.size)
    else:
        found = pc.is_in(_strings(operation), value_set=pa.array(EXCLUDED_OPERATIONS))
        drop = np.asarray(found.fill_null(False))
    return drop if drop.any() else None


class _TypeRows:
    """Row indices of line item types, found on the type column's codes."""

    def __init__(self, types: _Codes) -> None:
        self._types = types
        self._index: dict[str, list[int]] = {}
        for i, value in enumerate(types.values.to_pylist()):
            if value is not None:
                self._index.setdefault(value, []).append(i)
        self._found: dict[tuple[str, ...], np.ndarray | None] = {}

    def rows(self, *names: str) -> np.ndarray | None:
        """Sorted row indices of the given types, or ``None`` when there is none."""
        if names in self._found:
            return self._found[names]
        ids = [i for n in names for i in self._index.get(n, ())]
        rows = None
        if ids:
            rows = np.flatnonzero(_member(self._types.codes, ids, self._types.size))
            rows = rows if rows.size else None
        self._found[names] = rows
        return rows


def _product_name_codes(product: pa.Array) -> _Codes | None:
    """``product['product_name']`` of a CUR 2.0 map column with dictionary keys and items.

    Works on dictionary indices only: finds the entries whose key is ``product_name`` and
    takes each row's first one, without materialising any string.
    """
    if not isinstance(product, pa.MapArray):
        return None
    if not (
        pa.types.is_dictionary(product.type.key_type)
        and pa.types.is_dictionary(product.type.item_type)
    ):
        return None
    n = len(product)
    offsets = np.asarray(product.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    # MapArray.keys/items ignore the array's slice offset: slice them by the offsets.
    keys = cast(pa.DictionaryArray, product.keys.slice(start, end - start))
    items = cast(pa.DictionaryArray, product.items.slice(start, end - start))
    names = items.dictionary.cast(pa.string())
    null_slot = len(names)
    codes = np.full(n, null_slot, dtype=np.int64)
    values = pa.concat_arrays([names, pa.nulls(1, pa.string())])
    wanted = np.flatnonzero(
        np.asarray(
            pc.equal(keys.dictionary.cast(pa.string()), pa.scalar("product_name")).fill_null(False)
        )
    )
    if wanted.size == 0 or end == start:
        return _Codes(codes, values)
    key_index = keys.indices.fill_null(-1) if keys.null_count else keys.indices
    key_codes = np.asarray(key_index.to_numpy(zero_copy_only=False))
    item_index = items.indices
    if item_index.null_count:
        item_index = item_index.fill_null(null_slot)
    item_codes = np.asarray(item_index.to_numpy(zero_copy_only=False))
    if wanted.size == 1:
        entries = _entries_at_one_position(key_codes, offsets - start, int(wanted[0]))
        if entries is not None:
            found = entries >= 0
            codes[found] = item_codes[entries[found]]
            return _Codes(codes, values)
    if wanted.size == 1:
        hit_mask = key_codes == wanted[0]
    else:
        hit_mask = _member(np.maximum(key_codes, 0), wanted, len(keys.dictionary))
        hit_mask &= key_codes >= 0
    hits = np.flatnonzero(hit_mask)
    if hits.size == 0:
        return _Codes(codes, values)
    # The row of each hit: the last row starting at or before it (empty rows share starts).
    rows = np.searchsorted(offsets, hits + start, side="right") - 1
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    codes[rows[first]] = item_codes[hits[first]]
    return _Codes(codes, values)


_MAX_KEY_POSITION = 16


def _entries_at_one_position(
    key_codes: np.ndarray, offsets: np.ndarray, target: int
) -> np.ndarray | None:
    """Each row's first entry with key ``target`` when writers keep a fixed key order.

    Maps of one file list their keys in one order, so ``product_name`` sits at the same
    position ``j`` of every row that has it. Verified row by row: every row longer than
    ``j`` has ``target`` at ``j`` and at no earlier position, and shorter rows have it
    nowhere. Returns the entry index per row (-1: no such key), or ``None`` when the layout
    does not hold (the caller then searches every entry).
    """
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    row = int(np.argmax(lengths > 0))
    first = key_codes[starts[row] : starts[row] + lengths[row]]
    positions = np.flatnonzero(first == target)
    if positions.size == 0 or positions[0] >= _MAX_KEY_POSITION:
        return None
    j = int(positions[0])
    for k in range(j):
        longer = lengths > k
        if (key_codes[starts[longer] + k] == target).any():
            return None
    entries = np.full(len(starts), -1, dtype=np.int64)
    longer = lengths > j
    at_j = starts[longer] + j
    if not (key_codes[at_j] == target).all():
        return None
    entries[longer] = at_j
    return entries


def _cur_service_name(batch: pa.RecordBatch) -> _Codes | None:
    if _has(batch, "product_product_name"):
        return _codes(batch.column("product_product_name"))
    if not _has(batch, "product"):
        return None
    product = batch.column("product")
    fast = _product_name_codes(product)
    if fast is not None:
        return fast
    product = _plain(product)
    if pa.types.is_map(product.type):
        key = pa.scalar("product_name", _plain_type(product.type.key_type))
        if pa.types.is_dictionary(product.type.key_type) or pa.types.is_dictionary(
            product.type.item_type
        ):
            plain_type = pa.map_(
                _plain_type(product.type.key_type), _plain_type(product.type.item_type)
            )
            product = product.cast(plain_type)
        return _codes(pc.map_lookup(product, key, "first"))
    if pa.types.is_string(product.type) or pa.types.is_large_string(product.type):
        # CUR 2.0 CSV writes the map as a JSON object (one per SKU, so few distinct texts):
        # extract the name from each distinct text once. JSON escapes are left as they are.
        encoded = cast(pa.DictionaryArray, pc.dictionary_encode(product.cast(pa.string())))
        found = pc.extract_regex(
            encoded.dictionary,
            r'"product_name"\s*:\s*"(?P<name>[^"\\]*(?:\\.[^"\\]*)*)"',
        )
        names = pc.struct_field(found, [0])
        return _codes(pa.DictionaryArray.from_arrays(encoded.indices, names))
    return None


def _plain_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _cur_rows(batch: pa.RecordBatch) -> _Rows:
    """Codes and exact per-row measures of a CUR batch (CIDs amortized formulas)."""
    n = batch.num_rows
    drop = _split_cost_rows(batch, "line_item_operation")
    types = _codes(batch.column("line_item_line_item_type"))
    type_rows = _TypeRows(types)

    def value(name: str, rows: np.ndarray) -> _Amounts:
        """Zero-filled amounts of column ``name`` at ``rows`` (0 when the column is absent)."""
        if not _has(batch, name):
            return _zeros(len(rows))
        column = batch.column(name).take(rows)
        return _amounts(column, name, drop=None if drop is None else drop[rows])

    fee_rows = None
    fees = type_rows.rows("Fee")
    if fees is not None and _has(batch, "reservation_reservation_a_r_n"):
        arn = batch.column("reservation_reservation_a_r_n").take(fees)
        has_arn = np.asarray(pc.is_valid(_blank_to_null(_strings(arn))))
        fee_rows = fees[has_arn] if has_arn.any() else None

    def amortized(base: _Amounts, *, net: bool) -> _Amounts:
        """The Cloud Intelligence Dashboards amortized (``net``: net amortized) cost per row.

        Only branches of line item types present in the batch are evaluated. The net variant
        of SavingsPlanRecurringFee uses the same commitment columns: CUR has no net variant
        of ``savings_plan_total_commitment_to_date`` / ``savings_plan_used_commitment``.
        """
        p = "net_" if net else ""
        branches: list[tuple[np.ndarray, _Amounts]] = []
        rows = type_rows.rows("SavingsPlanCoveredUsage")
        if rows is not None:
            branches.append((rows, value(f"savings_plan_{p}savings_plan_effective_cost", rows)))
        rows = type_rows.rows("SavingsPlanRecurringFee")
        if rows is not None:
            total = value("savings_plan_total_commitment_to_date", rows)
            used = value("savings_plan_used_commitment", rows)
            branches.append((rows, _add(total, used, subtract=True, name=f"{p}amortized_cost")))
        rows = type_rows.rows("SavingsPlanNegation", "SavingsPlanUpfrontFee")
        if rows is not None:
            branches.append((rows, _zeros(len(rows))))
        rows = type_rows.rows("DiscountedUsage")
        if rows is not None:
            branches.append((rows, value(f"reservation_{p}effective_cost", rows)))
        rows = type_rows.rows("RIFee")
        if rows is not None:
            upfront = value(f"reservation_{p}unused_amortized_upfront_fee_for_billing_period", rows)
            recurring = value(f"reservation_{p}unused_recurring_fee", rows)
            branches.append((rows, _add(upfront, recurring, name=f"{p}amortized_cost")))
        if fee_rows is not None:
            branches.append((fee_rows, _zeros(len(fee_rows))))
        return _select(base, branches)

    unblended = _amounts(
        batch.column("line_item_unblended_cost"), "line_item_unblended_cost", drop=drop
    )
    measures: dict[str, _Amounts] = {
        "unblended_cost": unblended,
        "amortized_cost": amortized(unblended, net=False),
    }
    # Blended and net costs stay null on rows where they are empty (CUR 2.0 always has the
    # net columns, empty for accounts without private pricing): a group of such rows is
    # null, not 0. Net amortized follows net unblended row by row.
    if _has(batch, "line_item_blended_cost"):
        measures["blended_cost"] = _amounts(
            batch.column("line_item_blended_cost"),
            "line_item_blended_cost",
            nulls_as_zero=False,
            drop=drop,
        )
    if _has(batch, "line_item_net_unblended_cost"):
        net = _amounts(
            batch.column("line_item_net_unblended_cost"),
            "line_item_net_unblended_cost",
            nulls_as_zero=False,
            drop=drop,
        )
        measures["net_unblended_cost"] = net
        valid = net.validity()
        if valid is not None and not valid.any():
            measures["net_amortized_cost"] = net
        else:
            filled = net
            if valid is not None:
                filled = (
                    _Amounts(
                        ints=net.ints, extra_rows=net.extra_rows, extra=net.extra, bound=net.bound
                    )
                    if net.ints is not None
                    else _Amounts(decimals=cast(pa.Array, _fill_null(net.decimal(), _ZERO)))
                )
            measures["net_amortized_cost"] = amortized(filled, net=True).with_validity(valid)
    if _has(batch, "pricing_public_on_demand_cost"):
        listed = _amounts(
            batch.column("pricing_public_on_demand_cost"),
            "pricing_public_on_demand_cost",
            drop=drop,
        )
        negation = type_rows.rows("SavingsPlanNegation")
        if negation is not None:
            listed = _select(listed, [(negation, _zeros(len(negation)))])
        measures["list_cost"] = listed

    account = batch.column("line_item_usage_account_id")
    if pa.types.is_integer(account.type):
        # An integer-typed column lost the leading zeros of the 12-digit AWS account id.
        account = pc.utf8_lpad(account.cast(pa.string()), 12, "0")
    name = _cur_service_name(batch)
    return _Rows(
        n=n,
        billing_day=_Days.of(
            _utc_date(
                _kept(batch.column("bill_billing_period_start_date"), drop),
                "bill_billing_period_start_date",
            )
        ),
        usage_date=_Days.of(
            _utc_date(
                _kept(batch.column("line_item_usage_start_date"), drop),
                "line_item_usage_start_date",
            )
        ),
        account=_codes(account),
        service_code=_codes(batch.column("line_item_product_code")),
        category=types,
        currency=_codes(batch.column("line_item_currency_code")),
        service_name=name if name is not None else _null_codes(n),
        measures=measures,
        drop=drop,
    )


def _kept(column: pa.Array, drop: np.ndarray | None) -> pa.Array:
    """Text dates of excluded rows are not parsed (as if those rows were not there)."""
    if drop is None:
        return column
    plain_type = _plain_type(column.type)
    if not (pa.types.is_string(plain_type) or pa.types.is_large_string(plain_type)):
        return column
    column = _plain(column)
    return pc.if_else(pa.array(drop), pa.scalar(None, column.type), column)


def _focus_rows(batch: pa.RecordBatch) -> _Rows:
    """Codes and exact per-row measures of a FOCUS batch."""
    n = batch.num_rows
    drop = _split_cost_rows(batch, "x_Operation")
    service_name = _strings(batch.column("ServiceName"))
    service_code = service_name
    if _has(batch, "x_ServiceCode"):
        code = _blank_to_null(_strings(batch.column("x_ServiceCode")))
        service_code = pc.coalesce(code, service_name)
    measures = {"unblended_cost": _amounts(batch.column("BilledCost"), "BilledCost", drop=drop)}
    if _has(batch, "EffectiveCost"):
        measures["amortized_cost"] = _amounts(
            batch.column("EffectiveCost"), "EffectiveCost", drop=drop
        )
    if _has(batch, "ListCost"):
        measures["list_cost"] = _amounts(batch.column("ListCost"), "ListCost", drop=drop)
    return _Rows(
        n=n,
        billing_day=_Days.of(
            _utc_date(_kept(batch.column("BillingPeriodStart"), drop), "BillingPeriodStart")
        ),
        usage_date=_Days.of(
            _utc_date(_kept(batch.column("ChargePeriodStart"), drop), "ChargePeriodStart")
        ),
        account=_codes(batch.column("SubAccountId")),
        service_code=_codes(service_code),
        category=_codes(batch.column("ChargeCategory")),
        currency=_codes(batch.column("BillingCurrency")),
        service_name=_codes(service_name),
        measures=measures,
        drop=drop,
    )


# ------------------------------------------------------------------------------- grouping


def _sum_options() -> pc.ScalarAggregateOptions:
    # min_count=1: a measure stays null only when every input is null (column absent).
    return pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)


_Dimension = _Codes | _Days
_Extras = tuple[np.ndarray, pa.Array]


def _group(
    dims: Sequence[_Dimension],
    drop: np.ndarray | None,
    sums: dict[str, pa.Array],
    extras: dict[str, _Extras],
) -> tuple[list[np.ndarray], pa.Table, dict[str, pa.Array]]:
    """Sum ``sums`` per distinct combination of ``dims`` codes, leaving out ``drop`` rows.

    Returns the codes of each group per dimension, the table of sums (``<name>_sum`` and
    ``count_all``) and, per measure with extra rows, the exact sums of those rows aligned
    with the groups (0 elsewhere). The codes are packed into one int64 key when their
    product of sizes allows (almost always); otherwise they are grouped as separate columns.
    """
    aggregations: list[Any] = [(m, "sum", _sum_options()) for m in sums]
    aggregations.append(([], "count_all"))
    # Decimal sums (_measure_sums narrows them back) run on 256 bits, so they cannot wrap.
    sums = {
        m: v.cast(WIDE_DECIMAL_TYPE) if pa.types.is_decimal(v.type) else v for m, v in sums.items()
    }
    sizes = [d.size for d in dims]
    n = len(dims[0].codes)
    if math.prod(sizes) >= _KEY_LIMIT:
        columns = {f"__k{i}": pa.array(d.codes) for i, d in enumerate(dims)}
        # Rare path: extra rows become sparse decimal columns summed with the rest.
        sparse = {
            f"__extra_{m}": _scatter(
                pa.nulls(n, WIDE_DECIMAL_TYPE), rows, values.cast(WIDE_DECIMAL_TYPE)
            )
            for m, (rows, values) in extras.items()
        }
        table = pa.table({**columns, **sums, **sparse})
        if drop is not None:
            table = table.filter(pa.array(~drop))
        extra_aggregations = [(c, "sum", _sum_options()) for c in sparse]
        grouped = table.group_by(list(columns), use_threads=False).aggregate(
            aggregations + extra_aggregations
        )
        sparse_sums = {
            m: cast(pa.Array, _fill_null(_narrow(grouped[f"__extra_{m}_sum"], m), _ZERO))
            for m in extras
        }
        return [np.asarray(grouped[k].to_numpy()) for k in columns], grouped, sparse_sums
    key = dims[0].codes.astype(np.int64, copy=True)
    for dim in dims[1:]:
        key *= dim.size
        key += dim.codes
    if drop is not None:
        key[drop] = -1
    table = pa.table({"__key": pa.array(key), **sums})
    grouped = table.group_by("__key", use_threads=False).aggregate(aggregations)
    packed = np.asarray(grouped["__key"].to_numpy())
    if drop is not None:
        kept = packed >= 0
        if not kept.all():
            grouped = grouped.filter(pa.array(kept))
            packed = packed[kept]
    extra_sums: dict[str, pa.Array] = {}
    if extras:
        sorter = np.argsort(packed, kind="stable")
        ordered = packed[sorter]
        for m, (rows, values) in extras.items():
            keys = key[rows]
            live = keys >= 0
            if not live.any():
                continue
            per_key = (
                pa.table(
                    {"k": keys[live], "v": values.filter(pa.array(live)).cast(WIDE_DECIMAL_TYPE)}
                )
                .group_by("k", use_threads=False)
                .aggregate([("v", "sum")])
            )
            found = np.asarray(per_key["k"].to_numpy())
            positions = sorter[np.searchsorted(ordered, found)]
            order = np.argsort(positions)
            zeros = pa.repeat(_ZERO, len(packed))
            amounts = cast(pa.Array, _narrow(per_key["v_sum"].combine_chunks(), m))
            extra_sums[m] = _scatter(zeros, positions[order], amounts.take(order))
    codes: list[np.ndarray] = []
    rest = packed.copy()
    for size in reversed(sizes):
        codes.append(rest % size)
        rest //= size
    return codes[::-1], grouped, extra_sums


def _measure_sums(
    grouped: pa.Table, sums: dict[str, pa.Array], extra_sums: dict[str, pa.Array]
) -> dict[str, pa.Array]:
    """Decimal sums of every measure (null columns for measures the batch does not have)."""
    out: dict[str, pa.Array] = {}
    n = grouped.num_rows
    for m in MEASURES:
        if m not in sums:
            out[m] = pa.nulls(n, DECIMAL_TYPE)
            continue
        column = grouped[f"{m}_sum"].combine_chunks()
        if pa.types.is_integer(column.type):
            valid = _validity(column)
            ints = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False))
            total = _ints_to_decimal(ints.astype(np.int64), valid)
        else:
            total = cast(pa.Array, _narrow(column, m))
        if m in extra_sums:
            # A group holding an extra row is never null: the row counts with 0 in ``ints``.
            total = cast(pa.Array, _sum2(total, extra_sums[m], name=m))
        out[m] = total
    return out


def _take(codes: _Codes, group_codes: np.ndarray) -> pa.Array:
    return codes.values.take(group_codes)


def _categories(category: _Codes, fmt: SourceFormat) -> _Codes:
    if fmt.is_focus:
        return _Codes(category.codes, cast(pa.Array, _fill_null(category.values, pa.scalar(""))))
    mapped = [
        CHARGE_CATEGORY_BY_LINE_ITEM_TYPE.get(v or "", "Usage") for v in category.values.to_pylist()
    ]
    return _Codes(category.codes, pa.array(mapped, pa.string()))


def _group_rows(rows: _Rows, fmt: SourceFormat) -> tuple[pa.Table | None, int]:
    """Grouped daily and monthly rows of one batch (loose schema), and the rows missing a date.

    Rows without a billing period or usage date are left out and counted (the caller fails
    the file); excluded (split cost) rows are left out silently.
    """
    dated = None
    if rows.billing_day.valid is not None or rows.usage_date.valid is not None:
        dated = np.ones(rows.n, dtype=bool)
        for days in (rows.billing_day, rows.usage_date):
            if days.valid is not None:
                dated &= days.valid
    missing = 0
    drop = rows.drop
    if dated is not None:
        undated = ~dated if drop is None else ~dated & ~drop
        missing = int(np.count_nonzero(undated))
        drop = ~dated if drop is None else drop | ~dated
    if drop is not None and drop.all():
        return None, missing
    sums: dict[str, pa.Array] = {}
    extras: dict[str, _Extras] = {}
    for m, amounts in rows.measures.items():
        sums[m], extra = amounts.for_sum()
        if extra is not None:
            extras[m] = extra
    parts = []
    for grain in ("daily", "monthly"):
        if grain == "daily":
            dims: list[_Dimension] = [
                rows.billing_day,
                rows.usage_date,
                rows.account,
                rows.currency,
            ]
        else:
            dims = [
                rows.billing_day,
                rows.account,
                rows.service_code,
                rows.category,
                rows.currency,
                rows.service_name,
            ]
        codes, grouped, extra_sums = _group(dims, drop, sums, extras)
        k = grouped.num_rows
        billing_day = rows.billing_day.dates(codes[0])
        columns: dict[str, ArrayLike] = {
            "grain": pa.repeat(pa.scalar(grain), k),
            "billing_period": pc.floor_temporal(billing_day, unit="month"),
        }
        if grain == "daily":
            blank = pa.repeat(pa.scalar("", pa.string()), k)
            columns.update(
                usage_date=rows.usage_date.dates(codes[1]),
                usage_account_id=_take(rows.account, codes[2]),
                service_code=blank,
                service_name=blank,
                charge_category=blank,
                currency=_take(rows.currency, codes[3]),
            )
        else:
            columns.update(
                usage_date=pa.nulls(k, pa.date32()),
                usage_account_id=_take(rows.account, codes[1]),
                service_code=_take(rows.service_code, codes[2]),
                service_name=_take(rows.service_name, codes[5]),
                charge_category=_take(_categories(rows.category, fmt), codes[3]),
                currency=_take(rows.currency, codes[4]),
            )
        for name in ("usage_account_id", "service_code", "currency"):
            columns[name] = _fill_null(columns[name], pa.scalar(""))
        columns.update(_measure_sums(grouped, sums, extra_sums))
        columns["line_items"] = grouped["count_all"]
        parts.append(pa.table(columns).select(_LOOSE_SCHEMA.names).cast(_LOOSE_SCHEMA))
    return pa.concat_tables(parts), missing


def _regroup(table: pa.Table, *, sort: bool = True) -> pa.Table:
    """Group partial rows on :data:`PARTIAL_KEYS` (sorted unless told not to): the merge."""
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
    table = _widened(table, MEASURES)
    grouped = table.group_by(list(PARTIAL_KEYS), use_threads=False).aggregate(
        [(m, "sum", _sum_options()) for m in MEASURES]
        + [("line_items", "sum"), ("service_name", "max")]
    )
    columns: list[pa.ChunkedArray] = []
    for field in PARTIAL_SCHEMA:
        if field.name in PARTIAL_KEYS:
            columns.append(grouped[field.name])
        elif field.name == "service_name":
            columns.append(pc.coalesce(grouped["service_name_max"], grouped["service_code"]))
        elif field.name in MEASURES:
            column = grouped[f"{field.name}_sum"]
            if column.type != DECIMAL_TYPE:  # widened: check; else proved in range
                column = cast(pa.ChunkedArray, _narrow(column, field.name))
            columns.append(column)
        else:
            columns.append(grouped[f"{field.name}_sum"])
    result = pa.Table.from_arrays(columns, schema=PARTIAL_SCHEMA)
    if not sort:
        return result
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


def _aggregate_batch(batch: pa.RecordBatch, fmt: SourceFormat) -> tuple[pa.Table | None, int]:
    if batch.num_rows == 0:
        return None, 0
    rows = _focus_rows(batch) if fmt.is_focus else _cur_rows(batch)
    return _group_rows(rows, fmt)


def aggregate_batches(batches: Iterable[pa.RecordBatch], fmt: SourceFormat) -> pa.Table:
    """Aggregate a stream of normalised batches of one file into :data:`PARTIAL_SCHEMA`.

    Memory is bounded by one (coalesced) batch plus the grouped tables, whose size depends
    on the number of distinct keys, not rows; so the stream may come straight from a CSV or
    Parquet reader. All batches must have the same columns. Raises
    :class:`FileFormatError` for values that cannot be converted and for line items without
    a billing period or usage date.
    """
    parts: list[pa.Table] = []
    missing = 0
    for batch in _coalesced(batches, _BATCH_ROWS):
        part, missed = _aggregate_batch(batch, fmt)
        missing += missed
        if part is not None:
            parts.append(part)
        if len(parts) >= _COMPACT_EVERY:
            parts = [_regroup(pa.concat_tables(parts), sort=False).cast(_LOOSE_SCHEMA)]
    if missing:
        label = (
            "BillingPeriodStart/ChargePeriodStart"
            if fmt.is_focus
            else "bill_billing_period_start_date/line_item_usage_start_date"
        )
        raise FileFormatError(f"{missing} line items have no {label}")
    if not parts:
        return PARTIAL_SCHEMA.empty_table()
    return _regroup(pa.concat_tables(parts))


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
    conformed = [t.select(PARTIAL_SCHEMA.names).cast(_LOOSE_SCHEMA) for t in tables]
    return _regroup(pa.concat_tables(conformed))
