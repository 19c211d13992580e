"""Write line items as real CUR exports: every format, in the key layout AWS delivers.

Keys are relative to a storage root folder (the "bucket"); ``prefix`` may be ``""``.
Every writer is deterministic (fixed gzip/zip timestamps, stable ordering).

Layouts (``P`` = ``<prefix>/`` or nothing, period March 2024):

* legacy CSV: ``P<report>/20240301-20240401/<assemblyId>/<report>-<n>.csv.gz`` (``.csv``,
  ``.csv.zip``; without the assembly folder in overwrite mode), the period manifest
  ``P<report>/20240301-20240401/<report>-Manifest.json`` naming the current assembly, and a
  copy of it in the assembly folder.
* legacy Parquet (Athena integration):
  ``P<report>/<report>/year=2024/month=3/<report>-00001.snappy.parquet``, no manifest.
* CUR 2.0 / FOCUS (Data Exports):
  ``P<export>/data/BILLING_PERIOD=2024-03/[<executionFolder>/]<export>-00001.snappy.parquet``
  (or ``.csv.gz``), manifest
  ``P<export>/metadata/BILLING_PERIOD=2024-03/<export>-Manifest.json``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from cur_ray.samples.line_items import (
    FIELDS,
    FieldKind,
    FieldSpec,
    LineItem,
    add_months,
    legacy_header_to_snake,
    legacy_tag_header,
    snake_tag_key,
)

__all__ = [
    "DEFAULT_BUCKET",
    "FOCUS_COLUMNS",
    "LEGACY_PARQUET_STRING_COLUMNS",
    "S3Uploader",
    "cur2_columns",
    "export_data_folder",
    "export_manifest_key",
    "focus_row",
    "legacy_csv_columns",
    "legacy_manifest_key",
    "legacy_period_folder",
    "upload_tree",
    "write_data_export",
    "write_legacy_csv_export",
    "write_legacy_parquet",
    "write_shared_focus_sample",
    "write_shared_legacy_sample",
]

DEFAULT_BUCKET = "example-cur-bucket"

#: Numeric columns that real legacy (Athena) Parquet stores as strings.
LEGACY_PARQUET_STRING_COLUMNS: frozenset[str] = frozenset(
    f.name for f in FIELDS if f.kind is FieldKind.RATE
)

_SPLIT_COST_OPERATIONS = frozenset({"EKSPod-EC2", "ECSTask-EC2"})
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class S3Uploader(Protocol):
    """The part of a boto3 S3 client :func:`upload_tree` uses."""

    def upload_file(self, Filename: str, Bucket: str, Key: str) -> Any:
        """Upload one local file."""


# --------------------------------------------------------------------------------------
# Keys and small helpers


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _period_start(period: date) -> date:
    return period.replace(day=1)


def legacy_period_folder(period: date) -> str:
    """``20240301-20240401`` for March 2024."""
    start = _period_start(period)
    return f"{start:%Y%m%d}-{add_months(start, 1):%Y%m%d}"


def legacy_manifest_key(prefix: str, report: str, period: date) -> str:
    """The period-level manifest key of a legacy CSV report."""
    return _join(prefix, report, legacy_period_folder(period), f"{report}-Manifest.json")


def export_data_folder(prefix: str, export: str, period: date) -> str:
    """``<prefix>/<export>/data/BILLING_PERIOD=YYYY-MM``."""
    return _join(prefix, export, "data", f"BILLING_PERIOD={_period_start(period):%Y-%m}")


def export_manifest_key(prefix: str, export: str, period: date) -> str:
    """``<prefix>/<export>/metadata/BILLING_PERIOD=YYYY-MM/<export>-Manifest.json``."""
    return _join(
        prefix,
        export,
        "metadata",
        f"BILLING_PERIOD={_period_start(period):%Y-%m}",
        f"{export}-Manifest.json",
    )


def _write(root: Path, key: str, data: bytes) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _chunks(items: Sequence[Any], files: int) -> list[Sequence[Any]]:
    if files < 1:
        raise ValueError("files must be at least 1")
    size, extra = divmod(len(items), files)
    chunks, start = [], 0
    for index in range(files):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _millis(timestamp: str) -> str:
    """``2024-03-01T00:00:00Z`` -> ``2024-03-01T00:00:00.000Z`` (legacy CSV style)."""
    if timestamp.endswith("Z") and "." not in timestamp:
        return timestamp[:-1] + ".000Z"
    return timestamp


def _parse_timestamp(text: str) -> datetime | None:
    text = text.strip()
    if not text or text == "NULL":
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _naive(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=None)


def _payer(items: Sequence[LineItem]) -> str:
    return items[0].bill_payer_account_id if items else ""


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _write_parquet(root: Path, key: str, table: pa.Table, row_group_size: int | None) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy", row_group_size=row_group_size)


def _tag_keys(items: Iterable[LineItem]) -> list[str]:
    return sorted({key for item in items for key in item.resource_tags})


def _present_fields(items: Sequence[LineItem], *, cur2: bool) -> list[FieldSpec]:
    """Fields of a report: net columns only when some line has a value (legacy style)."""
    specs = []
    for spec in FIELDS:
        if spec.cur2_only and not cur2:
            continue
        if spec.net and not cur2 and not any(item.get(spec.name) for item in items):
            continue
        specs.append(spec)
    return specs


# --------------------------------------------------------------------------------------
# Legacy CUR CSV


def legacy_csv_columns(items: Sequence[LineItem]) -> list[str]:
    """The legacy CSV header for ``items``: fixed columns, net ones if used, tag columns."""
    headers = [spec.legacy for spec in _present_fields(items, cur2=False) if spec.legacy]
    return headers + [legacy_tag_header(key) for key in _tag_keys(items)]


_LEGACY_TYPES = {
    FieldKind.STRING: "String",
    FieldKind.NUMBER: "OptionalBigDecimal",
    FieldKind.RATE: "OptionalBigDecimal",
    FieldKind.TIMESTAMP: "DateTime",
    FieldKind.INTERVAL: "Interval",
}


def _legacy_rows(
    items: Sequence[LineItem], specs: Sequence[FieldSpec], tags: Sequence[str]
) -> list[list[str]]:
    rows = []
    for item in items:
        row = []
        for spec in specs:
            value = item.get(spec.name)
            row.append(_millis(value) if spec.kind is FieldKind.TIMESTAMP else value)
        row.extend(item.resource_tags.get(tag, "") for tag in tags)
        rows.append(row)
    return rows


def write_legacy_csv_export(
    root: Path,
    *,
    prefix: str,
    report: str,
    period: date,
    assembly_id: str,
    items: Sequence[LineItem],
    compression: Literal["gzip", "none", "zip"] = "gzip",
    files: int = 1,
    write_manifest: bool = True,
    overwrite: bool = False,
    bucket: str = DEFAULT_BUCKET,
) -> list[str]:
    """Write one delivery (assembly) of a legacy CUR CSV report; return its data keys.

    Data: ``<prefix>/<report>/<YYYYMMDD-YYYYMMDD>/<assembly_id>/<report>-<n>.csv.gz``
    (``.csv`` for ``compression="none"``, ``.csv.zip`` holding ``<report>-<n>.csv`` for
    ``"zip"``). ``overwrite=True`` is the "overwrite existing report" mode: no assembly folder.
    With ``write_manifest`` the period manifest ``<report>-Manifest.json`` is (re)written to
    name this assembly, and a copy is put in the assembly folder. Items are split into
    ``files`` contiguous parts; dates are written ``2024-03-01T00:00:00.000Z`` like AWS.
    """
    specs = _present_fields(items, cur2=False)
    tags = _tag_keys(items)
    header = [spec.legacy or spec.name for spec in specs] + [legacy_tag_header(t) for t in tags]
    period_folder = _join(prefix, report, legacy_period_folder(period))
    data_folder = period_folder if overwrite else _join(period_folder, assembly_id)
    extension = {"gzip": ".csv.gz", "none": ".csv", "zip": ".csv.zip"}[compression]
    keys = []
    for number, chunk in enumerate(_chunks(items, files), start=1):
        body = _csv_bytes(header, _legacy_rows(chunk, specs, tags))
        key = _join(data_folder, f"{report}-{number}{extension}")
        if compression == "gzip":
            body = _gzip(body)
        elif compression == "zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                info = zipfile.ZipInfo(f"{report}-{number}.csv", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, body)
            body = buffer.getvalue()
        _write(root, key, body)
        keys.append(key)
    if write_manifest:
        start = _period_start(period)
        end = add_months(start, 1)
        columns = [
            {"category": h.split("/", 1)[0], "name": h.split("/", 1)[1], "type": kind}
            for h, kind in zip(
                header,
                [_LEGACY_TYPES[s.kind] for s in specs] + ["OptionalString"] * len(tags),
                strict=True,
            )
        ]
        manifest = {
            "assemblyId": assembly_id,
            "account": _payer(items),
            "columns": columns,
            "charset": "UTF-8",
            "compression": {"gzip": "GZIP", "zip": "ZIP", "none": "NONE"}[compression],
            "contentType": "text/csv",
            "reportId": _stable_id(bucket, prefix, report),
            "reportName": report,
            "billingPeriod": {
                "start": f"{start:%Y%m%d}T000000.000Z",
                "end": f"{end:%Y%m%d}T000000.000Z",
            },
            "bucket": bucket,
            "reportKeys": keys,
            "additionalArtifactKeys": [],
        }
        raw = json.dumps(manifest, indent=2).encode("utf-8")
        _write(root, _join(period_folder, f"{report}-Manifest.json"), raw)
        if not overwrite:
            _write(root, _join(data_folder, f"{report}-Manifest.json"), raw)
    return keys


# --------------------------------------------------------------------------------------
# Legacy Parquet (Athena integration)


def _number(text: str) -> float | None:
    text = text.strip()
    return float(Decimal(text)) if text else None


def _legacy_parquet_array(
    spec: FieldSpec, values: list[str], *, as_string: bool
) -> tuple[pa.DataType, pa.Array]:
    if spec.kind is FieldKind.TIMESTAMP:
        moments = [_naive(_parse_timestamp(v)) for v in values]
        return pa.timestamp("ms"), pa.array(moments, type=pa.timestamp("ms"))
    if spec.kind in (FieldKind.NUMBER, FieldKind.RATE):
        if as_string:
            return pa.string(), pa.array([v or None for v in values], type=pa.string())
        return pa.float64(), pa.array([_number(v) for v in values], type=pa.float64())
    return pa.string(), pa.array(values, type=pa.string())


def write_legacy_parquet(
    root: Path,
    *,
    prefix: str,
    report: str,
    period: date,
    items: Sequence[LineItem],
    files: int = 1,
    string_columns: Collection[str] = LEGACY_PARQUET_STRING_COLUMNS,
    row_group_size: int | None = None,
) -> list[str]:
    """Write a month of a legacy CUR with Athena integration (Parquet); return the data keys.

    Keys ``<prefix>/<report>/<report>/year=YYYY/month=M/<report>-0000n.snappy.parquet``; no
    manifest. Columns are the snake names (``line_item_unblended_cost``), tags as
    ``resource_tags_user_team``; numbers are doubles except ``string_columns`` (by default
    the rate columns, as in real legacy Parquet; empty -> null), timestamps
    ``timestamp[ms]``, other strings keep ``""`` for empty values. ``row_group_size`` limits
    the rows per row group.
    """
    specs = _present_fields(items, cur2=False)
    tags = _tag_keys(items)
    start = _period_start(period)
    folder = _join(prefix, report, report, f"year={start.year}", f"month={start.month}")
    keys = []
    for number, chunk in enumerate(_chunks(items, files), start=1):
        fields, arrays = [], []
        for spec in specs:
            values = [item.get(spec.name) for item in chunk]
            as_string = spec.name in string_columns
            dtype, array = _legacy_parquet_array(spec, values, as_string=as_string)
            fields.append(pa.field(spec.name, dtype))
            arrays.append(array)
        for tag in tags:
            fields.append(pa.field(legacy_header_to_snake(legacy_tag_header(tag)), pa.string()))
            arrays.append(pa.array([i.resource_tags.get(tag, "") for i in chunk], pa.string()))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        key = _join(folder, f"{report}-{number:05d}.snappy.parquet")
        _write_parquet(root, key, table, row_group_size)
        keys.append(key)
    return keys


# --------------------------------------------------------------------------------------
# CUR 2.0


_CUR2_EXTRA_MAPS: tuple[tuple[str, pa.DataType], ...] = (
    ("cost_category", pa.map_(pa.string(), pa.string())),
    ("discount", pa.map_(pa.string(), pa.float64())),
)


def cur2_columns() -> list[tuple[str, pa.DataType]]:
    """The CUR 2.0 Parquet schema written here: (column name, Arrow type)."""
    columns: list[tuple[str, pa.DataType]] = []
    for spec in FIELDS:
        if spec.product_map_key:
            continue
        if spec.kind is FieldKind.NUMBER:
            columns.append((spec.name, pa.float64()))
        elif spec.kind is FieldKind.TIMESTAMP:
            columns.append((spec.name, pa.timestamp("ms")))
        else:
            columns.append((spec.name, pa.string()))
    columns.append(("product", pa.map_(pa.string(), pa.string())))
    columns.append(("resource_tags", pa.map_(pa.string(), pa.string())))
    columns.extend(_CUR2_EXTRA_MAPS)
    return columns


def _product_map(item: LineItem) -> dict[str, str]:
    return {
        spec.product_map_key: item.get(spec.name)
        for spec in FIELDS
        if spec.product_map_key and item.get(spec.name)
    }


def _tags_map(item: LineItem) -> dict[str, str]:
    return {snake_tag_key(k): v for k, v in sorted(item.resource_tags.items())}


def _cur2_values(item: LineItem) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for spec in FIELDS:
        if not spec.product_map_key:
            values[spec.name] = item.get(spec.name)
    values["product"] = _product_map(item)
    values["resource_tags"] = _tags_map(item)
    values["cost_category"] = {}
    values["discount"] = {}
    return values


def _arrow_type_name(dtype: pa.DataType) -> str:
    if pa.types.is_map(dtype):
        return f"map<{_arrow_type_name(dtype.key_type)},{_arrow_type_name(dtype.item_type)}>"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_decimal(dtype):
        return f"decimal({dtype.precision},{dtype.scale})"
    if pa.types.is_float64(dtype):
        return "double"
    return "string"


def _cur2_table(items: Sequence[LineItem]) -> pa.Table:
    rows = [_cur2_values(item) for item in items]
    columns = cur2_columns()
    arrays = [
        _typed_array([row[name] if row[name] != "" else None for row in rows], dtype)
        for name, dtype in columns
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(n, t) for n, t in columns]))


def _cur2_csv_rows(items: Sequence[LineItem]) -> tuple[list[str], list[list[str]]]:
    names = [name for name, _ in cur2_columns()]
    rows = []
    for item in items:
        values = _cur2_values(item)
        row = []
        for name in names:
            value = values[name]
            if isinstance(value, dict):
                row.append(json.dumps(value, separators=(",", ":")))
            else:
                row.append(value)
        rows.append(row)
    return names, rows


# --------------------------------------------------------------------------------------
# FOCUS 1.0

_DEC = pa.decimal128(38, 10)
_TS = pa.timestamp("ms", tz="UTC")
_TAGS = pa.map_(pa.string(), pa.string())

#: FOCUS 1.0 columns written for AWS (plus AWS's x_ columns), with their Parquet types.
FOCUS_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("AvailabilityZone", pa.string()),
    ("BilledCost", _DEC),
    ("BillingAccountId", pa.string()),
    ("BillingAccountName", pa.string()),
    ("BillingCurrency", pa.string()),
    ("BillingPeriodEnd", _TS),
    ("BillingPeriodStart", _TS),
    ("ChargeCategory", pa.string()),
    ("ChargeClass", pa.string()),
    ("ChargeDescription", pa.string()),
    ("ChargeFrequency", pa.string()),
    ("ChargePeriodEnd", _TS),
    ("ChargePeriodStart", _TS),
    ("CommitmentDiscountCategory", pa.string()),
    ("CommitmentDiscountId", pa.string()),
    ("CommitmentDiscountName", pa.string()),
    ("CommitmentDiscountStatus", pa.string()),
    ("CommitmentDiscountType", pa.string()),
    ("ConsumedQuantity", pa.float64()),
    ("ConsumedUnit", pa.string()),
    ("ContractedCost", _DEC),
    ("ContractedUnitPrice", _DEC),
    ("EffectiveCost", _DEC),
    ("InvoiceIssuerName", pa.string()),
    ("ListCost", _DEC),
    ("ListUnitPrice", _DEC),
    ("PricingCategory", pa.string()),
    ("PricingQuantity", pa.float64()),
    ("PricingUnit", pa.string()),
    ("ProviderName", pa.string()),
    ("PublisherName", pa.string()),
    ("RegionId", pa.string()),
    ("RegionName", pa.string()),
    ("ResourceId", pa.string()),
    ("ResourceName", pa.string()),
    ("ResourceType", pa.string()),
    ("ServiceCategory", pa.string()),
    ("ServiceName", pa.string()),
    ("SkuId", pa.string()),
    ("SkuPriceId", pa.string()),
    ("SubAccountId", pa.string()),
    ("SubAccountName", pa.string()),
    ("Tags", _TAGS),
    ("x_Operation", pa.string()),
    ("x_ServiceCode", pa.string()),
    ("x_UsageType", pa.string()),
)

_SERVICE_CATEGORIES = {
    "AmazonEC2": "Compute",
    "AWSLambda": "Compute",
    "ComputeSavingsPlans": "Compute",
    "AmazonS3": "Storage",
    "AmazonRDS": "Databases",
    "AmazonDynamoDB": "Databases",
    "AmazonCloudWatch": "Management and Governance",
    "awskms": "Security",
    "AmazonVPC": "Networking",
}
_PURCHASES = frozenset({"Fee", "RIFee", "SavingsPlanUpfrontFee", "SavingsPlanRecurringFee"})


def _d(text: str) -> Decimal:
    return Decimal(text) if text.strip() else Decimal(0)


def _focus_category(line_type: str) -> str:
    if line_type in ("Tax", "Credit"):
        return line_type
    if line_type == "Refund":
        return "Adjustment"
    return "Purchase" if line_type in _PURCHASES else "Usage"


def _effective_cost(item: LineItem) -> Decimal:
    """The conversion's EffectiveCost: the CID amortized-cost formula."""
    line_type = item.line_item_line_item_type
    if line_type == "SavingsPlanCoveredUsage":
        return _d(item.savings_plan_savings_plan_effective_cost)
    if line_type == "SavingsPlanRecurringFee":
        return _d(item.savings_plan_total_commitment_to_date) - _d(
            item.savings_plan_used_commitment
        )
    if line_type in ("SavingsPlanNegation", "SavingsPlanUpfrontFee"):
        return Decimal(0)
    if line_type == "DiscountedUsage":
        return _d(item.reservation_effective_cost)
    if line_type == "RIFee":
        return _d(item.reservation_unused_amortized_upfront_fee_for_billing_period) + _d(
            item.reservation_unused_recurring_fee
        )
    if line_type == "Fee" and item.reservation_reservation_a_r_n:
        return Decimal(0)
    return _d(item.line_item_unblended_cost)


def _text(value: Decimal) -> str:
    return "0" if value == 0 else format(value.normalize(), "f")


def focus_row(item: LineItem) -> dict[str, str | dict[str, str] | None]:
    """The FOCUS 1.0 row AWS's FOCUS export would hold for one CUR line (None = null)."""
    line_type = item.line_item_line_item_type
    category = _focus_category(line_type)
    sp, ri = item.savings_plan_savings_plan_a_r_n, item.reservation_reservation_a_r_n
    commitment_type = "Savings Plan" if sp else ("Reservation" if ri else None)
    if line_type in ("SavingsPlanCoveredUsage", "DiscountedUsage"):
        status: str | None = "Used"
    elif line_type in ("SavingsPlanRecurringFee", "RIFee"):
        status = "Unused"
    else:
        status = None
    if line_type in ("RIFee", "SavingsPlanRecurringFee", "Tax"):
        frequency = "Recurring"
    elif line_type in ("Fee", "SavingsPlanUpfrontFee", "Credit", "Refund"):
        frequency = "One-Time"
    else:
        frequency = "Usage-Based"
    if line_type == "Usage":
        pricing_category: str | None = "Standard"
    elif line_type in ("SavingsPlanCoveredUsage", "SavingsPlanNegation", "DiscountedUsage"):
        pricing_category = "Committed"
    else:
        pricing_category = None
    list_cost = (
        Decimal(0) if line_type == "SavingsPlanNegation" else _d(item.pricing_public_on_demand_cost)
    )
    contracted_cost = item.line_item_net_unblended_cost or item.line_item_unblended_cost
    contracted_rate = item.line_item_net_unblended_rate or item.line_item_unblended_rate
    usage_like = category == "Usage"

    def opt(value: str) -> str | None:
        return value or None

    return {
        "AvailabilityZone": opt(item.line_item_availability_zone),
        "BilledCost": _text(_d(item.line_item_unblended_cost)),
        "BillingAccountId": item.bill_payer_account_id,
        "BillingAccountName": opt(item.bill_payer_account_name),
        "BillingCurrency": item.line_item_currency_code,
        "BillingPeriodEnd": item.bill_billing_period_end_date,
        "BillingPeriodStart": item.bill_billing_period_start_date,
        "ChargeCategory": category,
        "ChargeClass": None,
        "ChargeDescription": opt(item.line_item_line_item_description),
        "ChargeFrequency": frequency,
        "ChargePeriodEnd": item.line_item_usage_end_date,
        "ChargePeriodStart": item.line_item_usage_start_date,
        "CommitmentDiscountCategory": ("Spend" if sp else ("Usage" if ri else None)),
        "CommitmentDiscountId": opt(sp or ri),
        "CommitmentDiscountName": None,
        "CommitmentDiscountStatus": status if commitment_type else None,
        "CommitmentDiscountType": commitment_type,
        "ConsumedQuantity": opt(item.line_item_usage_amount) if usage_like else None,
        "ConsumedUnit": opt(item.pricing_unit) if usage_like else None,
        "ContractedCost": _text(_d(contracted_cost)),
        "ContractedUnitPrice": opt(contracted_rate),
        "EffectiveCost": _text(_effective_cost(item)),
        "InvoiceIssuerName": opt(item.bill_invoicing_entity),
        "ListCost": _text(list_cost),
        "ListUnitPrice": opt(item.pricing_public_on_demand_rate),
        "PricingCategory": pricing_category,
        "PricingQuantity": opt(item.line_item_usage_amount),
        "PricingUnit": opt(item.pricing_unit),
        "ProviderName": "AWS",
        "PublisherName": "Amazon Web Services, Inc.",
        "RegionId": opt(item.product_region_code),
        "RegionName": opt(item.product_location),
        "ResourceId": opt(item.line_item_resource_id),
        "ResourceName": None,
        "ResourceType": None,
        "ServiceCategory": _SERVICE_CATEGORIES.get(item.line_item_product_code, "Other"),
        "ServiceName": item.product_product_name or item.line_item_product_code,
        "SkuId": opt(item.product_sku),
        "SkuPriceId": None,
        "SubAccountId": item.line_item_usage_account_id,
        "SubAccountName": opt(item.line_item_usage_account_name),
        "Tags": {k.split(":", 1)[-1]: v for k, v in sorted(item.resource_tags.items())}
        if item.resource_tags
        else None,
        "x_Operation": opt(item.line_item_operation),
        "x_ServiceCode": item.line_item_product_code,
        "x_UsageType": opt(item.line_item_usage_type),
    }


def _focus_items(items: Iterable[LineItem]) -> list[LineItem]:
    """A FOCUS export has no split-cost-allocation rows."""
    return [i for i in items if i.line_item_operation not in _SPLIT_COST_OPERATIONS]


def _typed_array(values: list[Any], dtype: pa.DataType) -> pa.Array:
    if pa.types.is_map(dtype):
        return pa.array([None if v is None else list(v.items()) for v in values], type=dtype)
    if pa.types.is_timestamp(dtype):
        moments = [_parse_timestamp(v) if v is not None else None for v in values]
        if dtype.tz is None:
            moments = [_naive(m) for m in moments]
        return pa.array(moments, type=dtype)
    if pa.types.is_decimal(dtype):
        return pa.array([None if v is None else Decimal(v) for v in values], type=dtype)
    if pa.types.is_float64(dtype):
        return pa.array([None if v is None else _number(v) for v in values], type=dtype)
    return pa.array(values, type=dtype)


def _focus_table(items: Sequence[LineItem]) -> pa.Table:
    rows = [focus_row(item) for item in items]
    arrays = [_typed_array([row[name] for row in rows], dtype) for name, dtype in FOCUS_COLUMNS]
    return pa.Table.from_arrays(
        arrays, schema=pa.schema([pa.field(n, t) for n, t in FOCUS_COLUMNS])
    )


def _focus_csv_rows(items: Sequence[LineItem]) -> tuple[list[str], list[list[str]]]:
    names = [name for name, _ in FOCUS_COLUMNS]
    rows = []
    for item in items:
        values = focus_row(item)
        row = []
        for name in names:
            value = values[name]
            if value is None:
                row.append("NULL")
            elif isinstance(value, dict):
                row.append(json.dumps(value, separators=(",", ":")))
            else:
                row.append(value)
        rows.append(row)
    return names, rows


# --------------------------------------------------------------------------------------
# Data Exports (CUR 2.0 and FOCUS)


def _uri_base(root: Path, uri_base: str | None) -> str:
    if uri_base is None:
        return root.resolve().as_uri().rstrip("/") + "/"
    return uri_base.rstrip("/") + "/"


def _execution_folder(execution_id: str, delivered_at: datetime) -> str:
    return f"{delivered_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{execution_id}"


def write_data_export(
    root: Path,
    *,
    prefix: str,
    export: str,
    period: date,
    execution_id: str,
    items: Sequence[LineItem],
    file_format: Literal["parquet", "csv"] = "parquet",
    focus: bool = False,
    versioned: bool = False,
    files: int = 1,
    write_manifest: bool = True,
    uri_base: str | None = None,
    bucket: str = DEFAULT_BUCKET,
    delivered_at: datetime | None = None,
    row_group_size: int | None = None,
) -> list[str]:
    """Write one execution of a Data Exports export (CUR 2.0, or FOCUS 1.0 with ``focus``).

    Data: ``<prefix>/<export>/data/BILLING_PERIOD=YYYY-MM/<export>-0000n.snappy.parquet``
    (``.csv.gz`` for ``file_format="csv"``); with ``versioned`` ("create new export version")
    under an execution folder ``<YYYYMMDDTHHMMSSZ>-<execution_id>`` (``delivered_at``,
    default the 5th of the month 01:02:03 UTC). Manifest:
    ``<prefix>/<export>/metadata/BILLING_PERIOD=YYYY-MM/<export>-Manifest.json`` with
    ``dataFiles`` = ``uri_base`` + key (default ``file://<root.resolve()>/`` + key; pass
    ``"s3://<bucket>/"`` for S3 uploads). Returns the data keys.

    CUR 2.0 Parquet: snake columns, costs double, rates string, ``product``/``resource_tags``
    as ``map<string,string>`` (+ empty ``cost_category`` and ``discount`` maps); CSV: the maps
    JSON-encoded. FOCUS: split-cost rows dropped; Parquet costs ``decimal(38,10)``,
    quantities double, timestamps UTC; CSV with literal ``NULL`` for nulls.
    """
    start = _period_start(period)
    data_folder = export_data_folder(prefix, export, start)
    if versioned:
        moment = delivered_at or datetime(start.year, start.month, 5, 1, 2, 3, tzinfo=UTC)
        data_folder = _join(data_folder, _execution_folder(execution_id, moment))
    rows = _focus_items(items) if focus else list(items)
    keys = []
    column_types: list[tuple[str, pa.DataType]] = list(FOCUS_COLUMNS) if focus else cur2_columns()
    for number, chunk in enumerate(_chunks(rows, files), start=1):
        if file_format == "parquet":
            key = _join(data_folder, f"{export}-{number:05d}.snappy.parquet")
            table = _focus_table(chunk) if focus else _cur2_table(chunk)
            _write_parquet(root, key, table, row_group_size)
        elif file_format == "csv":
            key = _join(data_folder, f"{export}-{number:05d}.csv.gz")
            header, body = _focus_csv_rows(chunk) if focus else _cur2_csv_rows(chunk)
            _write(root, key, _gzip(_csv_bytes(header, body)))
        else:
            raise ValueError(f"unknown file format {file_format!r}")
        keys.append(key)
    if write_manifest:
        _write_export_manifest(
            root,
            prefix=prefix,
            export=export,
            period=start,
            execution_id=execution_id,
            keys=keys,
            columns=[{"name": n, "type": _arrow_type_name(t)} for n, t in column_types],
            account=_payer(items),
            uri_base=_uri_base(root, uri_base),
            bucket=bucket,
        )
    return keys


def _write_export_manifest(
    root: Path,
    *,
    prefix: str,
    export: str,
    period: date,
    execution_id: str,
    keys: Sequence[str],
    columns: list[dict[str, str]],
    account: str,
    uri_base: str,
    bucket: str,
) -> str:
    end = add_months(period, 1)
    manifest = {
        "version": "1",
        "exportArn": (
            f"arn:aws:bcm-data-exports:us-east-1:{account or '000000000000'}:export/"
            f"{export}-{_stable_id(bucket, prefix, export)[:36]}"
        ),
        "exportName": export,
        "executionId": execution_id,
        "billingPeriod": {
            "start": f"{period:%Y-%m-%d}T00:00:00.000Z",
            "end": f"{end:%Y-%m-%d}T00:00:00.000Z",
        },
        "bucket": bucket,
        "dataFiles": [uri_base + key for key in keys],
        "columns": columns,
    }
    key = export_manifest_key(prefix, export, period)
    _write(root, key, json.dumps(manifest, indent=2).encode("utf-8"))
    return key


# --------------------------------------------------------------------------------------
# Real sample files (tests pass paths from /work/shared/data)


def write_shared_legacy_sample(
    root: Path,
    csv_path: Path,
    *,
    prefix: str,
    report: str = "legacy",
    assembly_id: str = "3f0d0c4e-6a5b-4c1e-9a51-2b7f3c0d1e22",
    bucket: str = DEFAULT_BUCKET,
) -> list[str]:
    """Deliver a real legacy CUR CSV, gzip-compressed byte for byte, with its manifest.

    The billing period (2023-11 for the shared sample) is read from the first row's
    ``bill/BillingPeriodStartDate``. Returns the data keys.
    """
    raw = csv_path.read_bytes()
    reader = csv.reader(io.StringIO(raw.decode("utf-8")))
    header = next(reader)
    first = dict(zip(header, next(reader), strict=False))
    period = date.fromisoformat(first["bill/BillingPeriodStartDate"][:10]).replace(day=1)
    end = add_months(period, 1)
    period_folder = _join(prefix, report, legacy_period_folder(period))
    key = _join(period_folder, assembly_id, f"{report}-1.csv.gz")
    _write(root, key, _gzip(raw))
    manifest = {
        "assemblyId": assembly_id,
        "account": first.get("bill/PayerAccountId", ""),
        "columns": [
            {
                "category": h.split("/", 1)[0],
                "name": h.split("/", 1)[-1],
                "type": "OptionalBigDecimal" if "Cost" in h or "Rate" in h else "String",
            }
            for h in header
        ],
        "charset": "UTF-8",
        "compression": "GZIP",
        "contentType": "text/csv",
        "reportId": _stable_id(bucket, prefix, report),
        "reportName": report,
        "billingPeriod": {
            "start": f"{period:%Y%m%d}T000000.000Z",
            "end": f"{end:%Y%m%d}T000000.000Z",
        },
        "bucket": bucket,
        "reportKeys": [key],
        "additionalArtifactKeys": [],
    }
    document = json.dumps(manifest, indent=2).encode("utf-8")
    _write(root, _join(period_folder, f"{report}-Manifest.json"), document)
    _write(root, _join(period_folder, assembly_id, f"{report}-Manifest.json"), document)
    return [key]


_FOCUS_NUMERIC = (
    "BilledCost",
    "ConsumedQuantity",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "ListCost",
    "ListUnitPrice",
    "PricingQuantity",
)
_FOCUS_TIMESTAMPS = (
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargePeriodEnd",
    "ChargePeriodStart",
)


def _scale(values: Iterable[str]) -> int:
    scale = 0
    for value in values:
        exponent = Decimal(value).as_tuple().exponent
        if isinstance(exponent, int):
            scale = max(scale, -exponent)
    return scale


def _shared_focus_table(header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> pa.Table:
    fields, arrays = [], []
    for name in header:
        raw = [row.get(name, "") for row in rows]
        values = [None if v in ("NULL", "") else v for v in raw]
        if name in _FOCUS_NUMERIC:
            dtype: pa.DataType = pa.decimal128(38, _scale(v for v in values if v is not None))
            array = pa.array([None if v is None else Decimal(v) for v in values], type=dtype)
        elif name in _FOCUS_TIMESTAMPS:
            dtype = _TS
            array = pa.array(
                [None if v is None else _parse_timestamp(v) for v in values], type=dtype
            )
        elif name == "Tags":
            dtype = _TAGS
            array = pa.array(
                [None if v is None else list(json.loads(v).items()) for v in values], type=dtype
            )
        else:
            dtype = pa.string()
            array = pa.array(values, type=dtype)
        fields.append(pa.field(name, dtype))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_shared_focus_sample(
    root: Path,
    csv_path: Path,
    *,
    prefix: str,
    export: str = "focus",
    file_format: Literal["parquet", "csv"] = "parquet",
    execution_id: str = "9b2e4f61-0c7d-4a8e-b3f5-6d1a2c3e4f50",
    uri_base: str | None = None,
    bucket: str = DEFAULT_BUCKET,
) -> list[str]:
    """Deliver the AWS rows of a real FOCUS 1.0 CSV as a FOCUS export (period from the data).

    CSV.gz keeps the file's strings (literal ``NULL``s included); Parquet types the numeric
    columns as ``decimal(38, s)`` (``s`` = the column's largest scale), timestamps as UTC
    ``timestamp[ms]`` and ``Tags`` as ``map<string,string>``. Returns the data keys.
    """
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("ProviderName") == "AWS"]
    if not rows:
        raise ValueError(f"{csv_path} has no AWS rows")
    period = date.fromisoformat(rows[0]["BillingPeriodStart"][:10]).replace(day=1)
    folder = export_data_folder(prefix, export, period)
    if file_format == "csv":
        key = _join(folder, f"{export}-00001.csv.gz")
        body = _csv_bytes(header, ([row.get(n, "") for n in header] for row in rows))
        _write(root, key, _gzip(body))
        columns = [{"name": n, "type": "string"} for n in header]
    else:
        key = _join(folder, f"{export}-00001.snappy.parquet")
        table = _shared_focus_table(header, rows)
        _write_parquet(root, key, table, None)
        columns = [{"name": f.name, "type": _arrow_type_name(f.type)} for f in table.schema]
    _write_export_manifest(
        root,
        prefix=prefix,
        export=export,
        period=period,
        execution_id=execution_id,
        keys=[key],
        columns=columns,
        account=rows[0].get("BillingAccountId", ""),
        uri_base=_uri_base(root, uri_base),
        bucket=bucket,
    )
    return [key]


# --------------------------------------------------------------------------------------
# Upload


def upload_tree(root: Path, s3_client: S3Uploader, bucket: str) -> int:
    """Upload every file under ``root`` to ``bucket`` (key = path relative to root, in
    sorted order) with a boto3 S3 client; return the number of files uploaded.
    """
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            key = path.relative_to(root).as_posix()
            s3_client.upload_file(Filename=str(path), Bucket=bucket, Key=key)
            count += 1
    return count
