"""Synthetic AWS CUR line items: one record type and a deterministic, realistic generator.

A :class:`LineItem` holds one CUR line with string-valued canonical CUR 2.0 snake_case
fields (``""`` = empty/absent), exactly as a CSV export would spell them, plus the resource
tags as a dict. The writers in :mod:`cur_ray.samples.writers` turn lists of them into every
supported export format; :mod:`cur_ray.samples.expected` computes the expected figures from
the same strings with :mod:`decimal`.

:func:`generate_line_items` produces a month of a small AWS organisation: several services
and accounts, usage on every day of the month, a Compute Savings Plan (covered usage with
its negation, hourly recurring fee, upfront fee), an EC2 and an RDS reservation (discounted
usage, monthly RI fee, upfront fee), tax, credits, a refund and a few split-cost-allocation
rows (``EKSPod-EC2`` / ``ECSTask-EC2``) that aggregations must skip. All numbers are exact
decimals with at most 10 decimal places and internally consistent (a negation is minus its
covered line, a recurring fee's used commitment is the sum of the effective costs it covered,
a RI fee's unused amounts match the hours its discounted usage did not use, …).
"""

from __future__ import annotations

import calendar
import dataclasses
import random
import re
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

__all__ = [
    "FIELDS",
    "LEGACY_HEADERS",
    "LINE_ITEM_TYPES",
    "SERVICE_CODES",
    "FieldKind",
    "FieldSpec",
    "LineItem",
    "add_months",
    "format_decimal",
    "format_timestamp",
    "generate_line_items",
    "legacy_header_to_snake",
    "legacy_tag_header",
    "snake_tag_key",
]


class FieldKind(StrEnum):
    """How a column is typed in the typed formats (legacy Parquet, CUR 2.0)."""

    STRING = "string"
    NUMBER = "number"  # double in Parquet
    RATE = "rate"  # numeric, but stored as a string in legacy and CUR 2.0 Parquet
    TIMESTAMP = "timestamp"
    INTERVAL = "interval"  # identity_time_interval: "start/end", a string


@dataclass(frozen=True)
class FieldSpec:
    """One LineItem field: its CUR 2.0 snake name, legacy CSV header and type.

    ``net``: one of the ``_net_`` columns, present only for accounts with discounts.
    ``cur2_only``: not part of a legacy CUR (account names).
    ``product_map_key``: in CUR 2.0 this product attribute lives in the ``product`` map
    under that key instead of a top-level column.
    """

    name: str
    legacy: str | None
    kind: FieldKind = FieldKind.STRING
    net: bool = False
    cur2_only: bool = False
    product_map_key: str | None = None


_S, _N, _R, _T, _I = (
    FieldKind.STRING,
    FieldKind.NUMBER,
    FieldKind.RATE,
    FieldKind.TIMESTAMP,
    FieldKind.INTERVAL,
)

#: Every string field of :class:`LineItem`, in the column order of a real report. The legacy
#: header is an explicit table because snake-casing is not invertible
#: (``reservation/ReservationARN`` -> ``reservation_reservation_a_r_n``).
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("identity_line_item_id", "identity/LineItemId"),
    FieldSpec("identity_time_interval", "identity/TimeInterval", _I),
    FieldSpec("bill_invoice_id", "bill/InvoiceId"),
    FieldSpec("bill_invoicing_entity", "bill/InvoicingEntity"),
    FieldSpec("bill_billing_entity", "bill/BillingEntity"),
    FieldSpec("bill_bill_type", "bill/BillType"),
    FieldSpec("bill_payer_account_id", "bill/PayerAccountId"),
    FieldSpec("bill_payer_account_name", None, cur2_only=True),
    FieldSpec("bill_billing_period_start_date", "bill/BillingPeriodStartDate", _T),
    FieldSpec("bill_billing_period_end_date", "bill/BillingPeriodEndDate", _T),
    FieldSpec("line_item_usage_account_id", "lineItem/UsageAccountId"),
    FieldSpec("line_item_usage_account_name", None, cur2_only=True),
    FieldSpec("line_item_line_item_type", "lineItem/LineItemType"),
    FieldSpec("line_item_usage_start_date", "lineItem/UsageStartDate", _T),
    FieldSpec("line_item_usage_end_date", "lineItem/UsageEndDate", _T),
    FieldSpec("line_item_product_code", "lineItem/ProductCode"),
    FieldSpec("line_item_usage_type", "lineItem/UsageType"),
    FieldSpec("line_item_operation", "lineItem/Operation"),
    FieldSpec("line_item_availability_zone", "lineItem/AvailabilityZone"),
    FieldSpec("line_item_resource_id", "lineItem/ResourceId"),
    FieldSpec("line_item_usage_amount", "lineItem/UsageAmount", _N),
    FieldSpec("line_item_normalization_factor", "lineItem/NormalizationFactor", _N),
    FieldSpec("line_item_normalized_usage_amount", "lineItem/NormalizedUsageAmount", _N),
    FieldSpec("line_item_currency_code", "lineItem/CurrencyCode"),
    FieldSpec("line_item_unblended_rate", "lineItem/UnblendedRate", _R),
    FieldSpec("line_item_unblended_cost", "lineItem/UnblendedCost", _N),
    FieldSpec("line_item_blended_rate", "lineItem/BlendedRate", _R),
    FieldSpec("line_item_blended_cost", "lineItem/BlendedCost", _N),
    FieldSpec("line_item_net_unblended_rate", "lineItem/NetUnblendedRate", _R, net=True),
    FieldSpec("line_item_net_unblended_cost", "lineItem/NetUnblendedCost", _N, net=True),
    FieldSpec("line_item_line_item_description", "lineItem/LineItemDescription"),
    FieldSpec("line_item_tax_type", "lineItem/TaxType"),
    FieldSpec("line_item_legal_entity", "lineItem/LegalEntity"),
    FieldSpec("product_product_name", "product/ProductName", product_map_key="product_name"),
    FieldSpec("product_product_family", "product/productFamily"),
    FieldSpec("product_instance_type", "product/instanceType"),
    FieldSpec("product_location", "product/location"),
    FieldSpec("product_region", "product/region", product_map_key="region"),
    FieldSpec("product_region_code", "product/regionCode"),
    FieldSpec("product_servicecode", "product/servicecode"),
    FieldSpec("product_sku", "product/sku"),
    FieldSpec("pricing_public_on_demand_cost", "pricing/publicOnDemandCost", _N),
    FieldSpec("pricing_public_on_demand_rate", "pricing/publicOnDemandRate", _R),
    FieldSpec("pricing_term", "pricing/term"),
    FieldSpec("pricing_unit", "pricing/unit"),
    FieldSpec("reservation_reservation_a_r_n", "reservation/ReservationARN"),
    FieldSpec(
        "reservation_amortized_upfront_cost_for_usage",
        "reservation/AmortizedUpfrontCostForUsage",
        _N,
    ),
    FieldSpec(
        "reservation_amortized_upfront_fee_for_billing_period",
        "reservation/AmortizedUpfrontFeeForBillingPeriod",
        _N,
    ),
    FieldSpec("reservation_effective_cost", "reservation/EffectiveCost", _N),
    FieldSpec("reservation_recurring_fee_for_usage", "reservation/RecurringFeeForUsage", _N),
    FieldSpec(
        "reservation_unused_amortized_upfront_fee_for_billing_period",
        "reservation/UnusedAmortizedUpfrontFeeForBillingPeriod",
        _N,
    ),
    FieldSpec("reservation_unused_quantity", "reservation/UnusedQuantity", _N),
    FieldSpec("reservation_unused_recurring_fee", "reservation/UnusedRecurringFee", _N),
    FieldSpec(
        "reservation_net_amortized_upfront_cost_for_usage",
        "reservation/NetAmortizedUpfrontCostForUsage",
        _N,
        net=True,
    ),
    FieldSpec(
        "reservation_net_amortized_upfront_fee_for_billing_period",
        "reservation/NetAmortizedUpfrontFeeForBillingPeriod",
        _N,
        net=True,
    ),
    FieldSpec("reservation_net_effective_cost", "reservation/NetEffectiveCost", _N, net=True),
    FieldSpec(
        "reservation_net_recurring_fee_for_usage",
        "reservation/NetRecurringFeeForUsage",
        _N,
        net=True,
    ),
    FieldSpec(
        "reservation_net_unused_amortized_upfront_fee_for_billing_period",
        "reservation/NetUnusedAmortizedUpfrontFeeForBillingPeriod",
        _N,
        net=True,
    ),
    FieldSpec(
        "reservation_net_unused_recurring_fee",
        "reservation/NetUnusedRecurringFee",
        _N,
        net=True,
    ),
    FieldSpec("reservation_start_time", "reservation/StartTime"),
    FieldSpec("reservation_end_time", "reservation/EndTime"),
    FieldSpec("savings_plan_savings_plan_a_r_n", "savingsPlan/SavingsPlanARN"),
    FieldSpec("savings_plan_savings_plan_rate", "savingsPlan/SavingsPlanRate", _N),
    FieldSpec(
        "savings_plan_savings_plan_effective_cost", "savingsPlan/SavingsPlanEffectiveCost", _N
    ),
    FieldSpec(
        "savings_plan_net_savings_plan_effective_cost",
        "savingsPlan/NetSavingsPlanEffectiveCost",
        _N,
        net=True,
    ),
    FieldSpec("savings_plan_total_commitment_to_date", "savingsPlan/TotalCommitmentToDate", _N),
    FieldSpec("savings_plan_used_commitment", "savingsPlan/UsedCommitment", _N),
    FieldSpec(
        "savings_plan_amortized_upfront_commitment_for_billing_period",
        "savingsPlan/AmortizedUpfrontCommitmentForBillingPeriod",
        _N,
    ),
    FieldSpec(
        "savings_plan_net_amortized_upfront_commitment_for_billing_period",
        "savingsPlan/NetAmortizedUpfrontCommitmentForBillingPeriod",
        _N,
        net=True,
    ),
    FieldSpec(
        "savings_plan_recurring_commitment_for_billing_period",
        "savingsPlan/RecurringCommitmentForBillingPeriod",
        _N,
    ),
    FieldSpec(
        "savings_plan_net_recurring_commitment_for_billing_period",
        "savingsPlan/NetRecurringCommitmentForBillingPeriod",
        _N,
        net=True,
    ),
    FieldSpec("savings_plan_start_time", "savingsPlan/StartTime"),
    FieldSpec("savings_plan_end_time", "savingsPlan/EndTime"),
    FieldSpec("savings_plan_offering_type", "savingsPlan/OfferingType"),
    FieldSpec("savings_plan_payment_option", "savingsPlan/PaymentOption"),
    FieldSpec("savings_plan_purchase_term", "savingsPlan/PurchaseTerm"),
)

#: snake field name -> legacy CSV header (only fields a legacy CUR has).
LEGACY_HEADERS: dict[str, str] = {f.name: f.legacy for f in FIELDS if f.legacy is not None}

#: The line item types :func:`generate_line_items` produces (all of them by default).
LINE_ITEM_TYPES: tuple[str, ...] = (
    "Usage",
    "DiscountedUsage",
    "SavingsPlanCoveredUsage",
    "SavingsPlanNegation",
    "SavingsPlanRecurringFee",
    "SavingsPlanUpfrontFee",
    "RIFee",
    "Fee",
    "Tax",
    "Credit",
    "Refund",
)


@dataclass(frozen=True)
class LineItem:
    """One CUR line: canonical CUR 2.0 snake_case fields as strings, ``""`` when empty.

    Costs are decimal strings with at most 10 decimals, timestamps ``2024-03-05T13:00:00Z``,
    ``identity_time_interval`` ``start/end``. ``resource_tags`` maps legacy-style tag keys
    (``user:team``) to values.
    """

    identity_line_item_id: str = ""
    identity_time_interval: str = ""
    bill_invoice_id: str = ""
    bill_invoicing_entity: str = ""
    bill_billing_entity: str = ""
    bill_bill_type: str = ""
    bill_payer_account_id: str = ""
    bill_payer_account_name: str = ""
    bill_billing_period_start_date: str = ""
    bill_billing_period_end_date: str = ""
    line_item_usage_account_id: str = ""
    line_item_usage_account_name: str = ""
    line_item_line_item_type: str = ""
    line_item_usage_start_date: str = ""
    line_item_usage_end_date: str = ""
    line_item_product_code: str = ""
    line_item_usage_type: str = ""
    line_item_operation: str = ""
    line_item_availability_zone: str = ""
    line_item_resource_id: str = ""
    line_item_usage_amount: str = ""
    line_item_normalization_factor: str = ""
    line_item_normalized_usage_amount: str = ""
    line_item_currency_code: str = ""
    line_item_unblended_rate: str = ""
    line_item_unblended_cost: str = ""
    line_item_blended_rate: str = ""
    line_item_blended_cost: str = ""
    line_item_net_unblended_rate: str = ""
    line_item_net_unblended_cost: str = ""
    line_item_line_item_description: str = ""
    line_item_tax_type: str = ""
    line_item_legal_entity: str = ""
    product_product_name: str = ""
    product_product_family: str = ""
    product_instance_type: str = ""
    product_location: str = ""
    product_region: str = ""
    product_region_code: str = ""
    product_servicecode: str = ""
    product_sku: str = ""
    pricing_public_on_demand_cost: str = ""
    pricing_public_on_demand_rate: str = ""
    pricing_term: str = ""
    pricing_unit: str = ""
    reservation_reservation_a_r_n: str = ""
    reservation_amortized_upfront_cost_for_usage: str = ""
    reservation_amortized_upfront_fee_for_billing_period: str = ""
    reservation_effective_cost: str = ""
    reservation_recurring_fee_for_usage: str = ""
    reservation_unused_amortized_upfront_fee_for_billing_period: str = ""
    reservation_unused_quantity: str = ""
    reservation_unused_recurring_fee: str = ""
    reservation_net_amortized_upfront_cost_for_usage: str = ""
    reservation_net_amortized_upfront_fee_for_billing_period: str = ""
    reservation_net_effective_cost: str = ""
    reservation_net_recurring_fee_for_usage: str = ""
    reservation_net_unused_amortized_upfront_fee_for_billing_period: str = ""
    reservation_net_unused_recurring_fee: str = ""
    reservation_start_time: str = ""
    reservation_end_time: str = ""
    savings_plan_savings_plan_a_r_n: str = ""
    savings_plan_savings_plan_rate: str = ""
    savings_plan_savings_plan_effective_cost: str = ""
    savings_plan_net_savings_plan_effective_cost: str = ""
    savings_plan_total_commitment_to_date: str = ""
    savings_plan_used_commitment: str = ""
    savings_plan_amortized_upfront_commitment_for_billing_period: str = ""
    savings_plan_net_amortized_upfront_commitment_for_billing_period: str = ""
    savings_plan_recurring_commitment_for_billing_period: str = ""
    savings_plan_net_recurring_commitment_for_billing_period: str = ""
    savings_plan_start_time: str = ""
    savings_plan_end_time: str = ""
    savings_plan_offering_type: str = ""
    savings_plan_payment_option: str = ""
    savings_plan_purchase_term: str = ""
    resource_tags: Mapping[str, str] = field(default_factory=dict, hash=False)

    def as_row(self) -> dict[str, str]:
        """The string fields as a dict (snake name -> value), tags excluded."""
        return {spec.name: getattr(self, spec.name) for spec in FIELDS}

    def get(self, name: str) -> str:
        """The value of one string field by snake name (``""`` for an unknown name)."""
        value = getattr(self, name, "")
        return value if isinstance(value, str) else ""

    def replace(self, **changes: Any) -> LineItem:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------
# Column naming helpers

_CAMEL_BOUNDARY = re.compile(r"(?<=[^_])(?=[A-Z])")


def legacy_header_to_snake(header: str) -> str:
    """Athena-style snake name of a legacy header: ``lineItem/UnblendedCost`` ->
    ``line_item_unblended_cost``, ``reservation/ReservationARN`` ->
    ``reservation_reservation_a_r_n``, ``resourceTags/user:team`` -> ``resource_tags_user_team``.
    """
    flat = re.sub(r"[^A-Za-z0-9]", "_", header)
    return _CAMEL_BOUNDARY.sub("_", flat).lower()


def legacy_tag_header(tag_key: str) -> str:
    """Legacy CSV header of a resource tag (``user:team`` -> ``resourceTags/user:team``)."""
    return f"resourceTags/{tag_key}"


def snake_tag_key(tag_key: str) -> str:
    """CUR 2.0 ``resource_tags`` map key of a tag (``user:team`` -> ``user_team``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", tag_key)


# --------------------------------------------------------------------------------------
# Formatting helpers

_Q10 = Decimal("1E-10")
_CENT = Decimal("0.01")
_ZERO = Decimal(0)


def format_decimal(value: Decimal) -> str:
    """A decimal as a plain CUR string: no exponent, no trailing zeros, ``0.0`` for zero."""
    if value == 0:
        return "0.0"
    text = format(value.normalize(), "f")
    return text


def format_timestamp(moment: datetime) -> str:
    """``2024-03-05T13:00:00Z`` (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_months(day: date, months: int) -> date:
    """The first day of the month ``months`` after ``day``'s month."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _q(value: Decimal) -> Decimal:
    return value.quantize(_Q10, rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------------------
# The catalogue


@dataclass(frozen=True)
class _Sku:
    product_code: str
    usage_type: str  # without the region prefix
    operation: str
    unit: str
    rate: str
    amount: tuple[int, int, int]  # amount = randint(lo, hi) * 10**-exp
    description: str
    resource_kind: str  # kind of resource in _Org.resources, or "" for none
    family: str
    instance_type: str = ""
    weight: int = 10


_PRODUCT_NAMES: dict[str, str] = {
    "AmazonEC2": "Amazon Elastic Compute Cloud",
    "AmazonS3": "Amazon Simple Storage Service",
    "AmazonRDS": "Amazon Relational Database Service",
    "AWSLambda": "AWS Lambda",
    "AmazonCloudWatch": "AmazonCloudWatch",
    "awskms": "AWS Key Management Service",
    "AmazonDynamoDB": "Amazon DynamoDB",
    "AmazonVPC": "Amazon Virtual Private Cloud",
    "ComputeSavingsPlans": "Savings Plans for AWS Compute usage",
}

_SKUS: tuple[_Sku, ...] = (
    _Sku(
        "AmazonEC2", "BoxUsage:m5.large", "RunInstances", "Hrs", "0.096", (1, 1, 0),
        "$0.096 per On Demand Linux m5.large Instance Hour", "instance", "Compute Instance",
        "m5.large", 30,
    ),
    _Sku(
        "AmazonEC2", "BoxUsage:t3.medium", "RunInstances", "Hrs", "0.0416", (1, 1, 0),
        "$0.0416 per On Demand Linux t3.medium Instance Hour", "instance", "Compute Instance",
        "t3.medium", 30,
    ),
    _Sku(
        "AmazonEC2", "EBS:VolumeUsage.gp3", "CreateVolume-Gp3", "GB-Mo", "0.08",
        (50_000, 700_000, 6), "$0.08 per GB-month of General Purpose (gp3) provisioned storage",
        "volume", "Storage", "", 20,
    ),
    _Sku(
        "AmazonEC2", "DataTransfer-Out-Bytes", "RunInstances", "GB", "0.09",
        (1, 5_000_000, 6), "$0.090 per GB - first 10 TB / month data transfer out beyond the "
        "global free tier", "instance", "Data Transfer", "", 10,
    ),
    _Sku(
        "AmazonEC2", "NatGateway-Hours", "NatGateway", "Hrs", "0.045", (1, 1, 0),
        "$0.045 per NAT Gateway Hour", "nat", "NAT Gateway", "", 8,
    ),
    _Sku(
        "AmazonS3", "TimedStorage-ByteHrs", "StandardStorage", "GB-Mo", "0.023",
        (1_000, 2_000_000, 6), "$0.023 per GB - first 50 TB / month of storage used",
        "bucket", "Storage", "", 15,
    ),
    _Sku(
        "AmazonS3", "Requests-Tier1", "PutObject", "Requests", "0.000005", (1, 20_000, 0),
        "$0.005 per 1,000 PUT, COPY, POST, or LIST requests", "bucket", "API Request", "", 8,
    ),
    _Sku(
        "AmazonS3", "Requests-Tier2", "GetObject", "Requests", "0.0000004", (1, 200_000, 0),
        "$0.0004 per 1,000 GET and all other requests", "bucket", "API Request", "", 8,
    ),
    _Sku(
        "AmazonRDS", "InstanceUsage:db.t3.medium", "CreateDBInstance:0002", "Hrs", "0.068",
        (1, 1, 0), "$0.068 per RDS db.t3.medium Single-AZ instance hour (or partial hour) "
        "running MySQL", "db", "Database Instance", "db.t3.medium", 15,
    ),
    _Sku(
        "AmazonRDS", "RDS:GP2-Storage", "CreateDBInstance:0002", "GB-Mo", "0.115",
        (10_000, 300_000, 6), "$0.115 per GB-month of provisioned GP2 storage running MySQL",
        "db", "Database Storage", "", 6,
    ),
    _Sku(
        "AWSLambda", "Lambda-GB-Second", "Invoke", "Lambda-GB-Second", "0.0000166667",
        (1_000, 4_000_000, 3), "AWS Lambda - Total Compute - US East (Northern Virginia)",
        "function", "Serverless", "", 12,
    ),
    _Sku(
        "AWSLambda", "Request", "Invoke", "Requests", "0.0000002", (1, 100_000, 0),
        "AWS Lambda - Total Requests - US East (Northern Virginia)", "function", "Serverless",
        "", 8,
    ),
    _Sku(
        "AmazonCloudWatch", "CW:MetricMonitorUsage", "MetricStorage", "Metrics", "0.3",
        (1_000, 200_000, 6), "$0.30 per metric-month - first 10,000 metrics", "", "Metric", "",
        8,
    ),
    _Sku(
        "AmazonCloudWatch", "CW:Requests", "GetMetricData", "Requests", "0.00001",
        (1, 50_000, 0), "$0.01 per 1,000 metrics requested using GetMetricData API", "",
        "API Request", "", 5,
    ),
    _Sku(
        "awskms", "KMS-Requests", "Decrypt", "Requests", "0.000003", (1, 100_000, 0),
        "$0.03 per 10,000 requests", "key", "Encryption Key", "", 6,
    ),
    _Sku(
        "awskms", "KMS-Keys", "CreateKey", "Keys", "1", (1_344, 13_441, 7),
        "$1 per customer-managed key per month", "key", "Encryption Key", "", 4,
    ),
    _Sku(
        "AmazonDynamoDB", "TimedStorage-ByteHrs", "StandardStorage", "GB-Mo", "0.25",
        (1_000, 100_000, 6), "$0.25 per GB-Month of storage used beyond first 25 free GB-Months",
        "table", "Database Storage", "", 5,
    ),
    _Sku(
        "AmazonDynamoDB", "ReadRequestUnits", "GetItem", "ReadRequestUnits", "0.00000025",
        (1, 1_000_000, 0), "$0.25 per million read request units", "table", "Amazon DynamoDB "
        "PayPerRequest Throughput", "", 5,
    ),
    _Sku(
        "AmazonVPC", "PublicIPv4:InUseAddress", "AssociateAddressVPC", "Hrs", "0.005",
        (1, 1, 0), "$0.005 per In-use public IPv4 address per hour", "eip", "IP Address", "", 6,
    ),
)  # fmt: skip

#: Product codes with regular usage, in a stable order.
SERVICE_CODES: tuple[str, ...] = tuple(dict.fromkeys(s.product_code for s in _SKUS))

_REGIONS: dict[str, tuple[str, str]] = {  # code -> (usage type prefix, location)
    "us-east-1": ("", "US East (N. Virginia)"),
    "eu-west-1": ("EU-", "EU (Ireland)"),
    "ap-northeast-1": ("APN1-", "Asia Pacific (Tokyo)"),
}
_HOME_REGIONS = ("us-east-1", "us-east-1", "eu-west-1", "ap-northeast-1")
_ACCOUNT_NAMES = (
    "acme-payer",
    "acme-prod",
    "acme-staging",
    "acme-data",
    "acme-sandbox",
    "acme-security",
)
_TEAMS = ("payments", "search", "platform", "data", "identity")
_ENVIRONMENTS = ("prod", "staging", "dev")
_WORDS = ("orders", "assets", "events", "users", "billing", "reports", "images", "ledger")
_ENTITY = "Amazon Web Services, Inc."
_NET_FACTOR = Decimal("0.97")  # a 3 % private-pricing discount where discounts apply
_TAX_RATE = Decimal("0.08")
_HOUR = timedelta(hours=1)
_YEAR_HOURS = Decimal(8760)

# Savings Plan: 1-year Compute SP, Partial Upfront, $0.10/hour (half upfront).
_SP_UPFRONT_H = Decimal("0.05")
_SP_RECURRING_H = Decimal("0.05")
_SP_COMMITMENT_H = _SP_UPFRONT_H + _SP_RECURRING_H
_SP_COVERED = {  # usage type -> (SP rate) for the lines a Compute SP covers here
    "BoxUsage:t3.medium": Decimal("0.0291"),
    "Lambda-GB-Second": Decimal("0.0000140000"),
}


@dataclass(frozen=True)
class _Reservation:
    product_code: str
    usage_type: str
    operation: str
    resource_kind: str
    instance_type: str
    od_rate: Decimal
    upfront_h: Decimal
    recurring_h: Decimal
    arn_template: str
    description: str
    family: str


_RESERVATIONS: tuple[_Reservation, ...] = (
    _Reservation(
        "AmazonEC2", "BoxUsage:m5.large", "RunInstances", "instance", "m5.large",
        Decimal("0.096"), Decimal("0.05"), Decimal("0.028"),
        "arn:aws:ec2:us-east-1:{payer}:reserved-instances/{id}",
        "USD 0.028 hourly fee per Linux/UNIX (Amazon VPC), m5.large instance",
        "Compute Instance",
    ),
    _Reservation(
        "AmazonRDS", "InstanceUsage:db.t3.medium", "CreateDBInstance:0002", "db",
        "db.t3.medium", Decimal("0.068"), Decimal("0"), Decimal("0.051"),
        "arn:aws:rds:us-east-1:{payer}:ri:ri-{id}",
        "USD 0.051 hourly fee per MySQL, db.t3.medium instance",
        "Database Instance",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class _Resource:
    resource_id: str
    availability_zone: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class _Account:
    account_id: str
    name: str
    region: str


class _Org:
    """Accounts, resources, commitments: stable across months for one ``org_seed``."""

    def __init__(self, org_seed: int, accounts: int) -> None:
        rng = random.Random(f"cur-ray-org-{org_seed}")  # noqa: S311 - synthetic data
        ids: list[str] = []
        while len(ids) < accounts:
            candidate = str(rng.randrange(10**11, 10**12))
            if candidate not in ids:
                ids.append(candidate)
        self.accounts = [
            _Account(
                account_id,
                _ACCOUNT_NAMES[i] if i < len(_ACCOUNT_NAMES) else f"acme-account-{i}",
                _HOME_REGIONS[i % len(_HOME_REGIONS)],
            )
            for i, account_id in enumerate(ids)
        ]
        self.payer = self.accounts[0]
        self.resources: dict[tuple[str, str], list[_Resource]] = {}
        for account in self.accounts:
            for kind in ("instance", "volume", "nat", "bucket", "db", "function", "key"):
                self.resources[(account.account_id, kind)] = [
                    self._resource(rng, account, kind) for _ in range(rng.randint(1, 4))
                ]
            for kind in ("table", "eip"):
                self.resources[(account.account_id, kind)] = [
                    self._resource(rng, account, kind) for _ in range(rng.randint(1, 2))
                ]
        self.sp_arn = f"arn:aws:savingsplans::{self.payer.account_id}:savingsplan/{_uuid(rng)}"
        self.ri_arns = [
            ri.arn_template.format(payer=self.payer.account_id, id=_uuid(rng))
            for ri in _RESERVATIONS
        ]

    @staticmethod
    def _resource(rng: random.Random, account: _Account, kind: str) -> _Resource:
        region, acct = account.region, account.account_id
        team, env, word = rng.choice(_TEAMS), rng.choice(_ENVIRONMENTS), rng.choice(_WORDS)
        hex17 = f"{rng.getrandbits(68):017x}"
        names = {
            "instance": f"i-{hex17}",
            "volume": f"vol-{hex17}",
            "nat": f"arn:aws:ec2:{region}:{acct}:natgateway/nat-{hex17}",
            "bucket": f"{team}-{env}-{word}-{acct[-4:]}",
            "db": f"arn:aws:rds:{region}:{acct}:db:{team}-{word}-{env}",
            "function": f"arn:aws:lambda:{region}:{acct}:function:{team}-{word}-{env}",
            "key": f"arn:aws:kms:{region}:{acct}:key/{_uuid(rng)}",
            "table": f"arn:aws:dynamodb:{region}:{acct}:table/{team}-{word}",
            "eip": f"arn:aws:ec2:{region}:{acct}:elastic-ip/eipalloc-{hex17}",
        }
        zone = f"{region}{rng.choice('abc')}" if kind in ("instance", "volume", "db") else ""
        tags: dict[str, str] = {}
        roll = rng.random()
        if roll < 0.8:
            tags = {"user:environment": env, "user:team": team}
            if roll < 0.25:
                tags["user:cost-center"] = f"cc-{rng.randint(1000, 9999)}"
        return _Resource(names[kind], zone, dict(sorted(tags.items())))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class _Builder:
    """Builds the lines of one month; keeps the base fields in one place."""

    def __init__(
        self, rng: random.Random, org: _Org, period: date, *, discounts: bool, currency: str
    ) -> None:
        self.rng = rng
        self.org = org
        self.discounts = discounts
        self.currency = currency
        self.start = datetime(period.year, period.month, 1, tzinfo=UTC)
        end_day = add_months(period, 1)
        self.end = datetime(end_day.year, end_day.month, 1, tzinfo=UTC)
        self.days = calendar.monthrange(period.year, period.month)[1]
        self.hours = self.days * 24
        self.items: list[LineItem] = []

    # -- helpers ------------------------------------------------------------------
    def random_hour(self) -> datetime:
        return self.start + timedelta(
            days=self.rng.randrange(self.days), hours=self.rng.randrange(24)
        )

    def line_id(self) -> str:
        return "".join(self.rng.choices(_ID_ALPHABET, k=52))

    def net(self, value: Decimal, *, discounted: bool = True) -> str:
        if not self.discounts:
            return ""
        return format_decimal(_q(value * _NET_FACTOR) if discounted else value)

    def base(
        self,
        *,
        account: _Account,
        line_type: str,
        product_code: str,
        start: datetime,
        end: datetime,
        bill_type: str = "Anniversary",
    ) -> dict[str, Any]:
        region = account.region
        return {
            "identity_line_item_id": self.line_id(),
            "identity_time_interval": f"{format_timestamp(start)}/{format_timestamp(end)}",
            "bill_invoicing_entity": _ENTITY,
            "bill_billing_entity": "AWS",
            "bill_bill_type": bill_type,
            "bill_payer_account_id": self.org.payer.account_id,
            "bill_payer_account_name": self.org.payer.name,
            "bill_billing_period_start_date": format_timestamp(self.start),
            "bill_billing_period_end_date": format_timestamp(self.end),
            "line_item_usage_account_id": account.account_id,
            "line_item_usage_account_name": account.name,
            "line_item_line_item_type": line_type,
            "line_item_usage_start_date": format_timestamp(start),
            "line_item_usage_end_date": format_timestamp(end),
            "line_item_product_code": product_code,
            "line_item_currency_code": self.currency,
            "line_item_legal_entity": _ENTITY,
            "product_product_name": _PRODUCT_NAMES.get(product_code, product_code),
            "product_servicecode": product_code,
            "product_region": region,
            "product_region_code": region,
            "product_location": _REGIONS[region][1],
        }

    def add(self, fields: dict[str, Any]) -> LineItem:
        item = LineItem(**fields)
        self.items.append(item)
        return item

    def pick_resource(self, account: _Account, kind: str) -> _Resource | None:
        if not kind:
            return None
        return self.rng.choice(self.org.resources[(account.account_id, kind)])

    # -- line kinds ---------------------------------------------------------------
    def usage(self, account: _Account, sku: _Sku) -> LineItem:
        start = self.random_hour()
        lo, hi, exp = sku.amount
        amount = Decimal(self.rng.randint(lo, hi)).scaleb(-exp)
        rate = Decimal(sku.rate)
        cost = _q(amount * rate)
        blended_rate = rate
        if sku.usage_type.startswith("BoxUsage") and account is not self.org.payer:
            blended_rate = _q(rate * Decimal("0.93"))  # blended across the org's RIs
        blended = _q(amount * blended_rate)
        fields = self.base(
            account=account,
            line_type="Usage",
            product_code=sku.product_code,
            start=start,
            end=start + _HOUR,
        )
        fields.update(self._usage_fields(account, sku, amount))
        fields.update(
            line_item_unblended_rate=sku.rate,
            line_item_unblended_cost=format_decimal(cost),
            line_item_blended_rate=format_decimal(blended_rate),
            line_item_blended_cost=format_decimal(blended),
            line_item_net_unblended_rate=self.net(rate),
            line_item_net_unblended_cost=self.net(cost),
            line_item_line_item_description=sku.description,
            pricing_public_on_demand_cost=format_decimal(cost),
            pricing_public_on_demand_rate=sku.rate,
            pricing_term="OnDemand",
        )
        return self.add(fields)

    def _usage_fields(self, account: _Account, sku: _Sku, amount: Decimal) -> dict[str, Any]:
        prefix = _REGIONS[account.region][0]
        resource = self.pick_resource(account, sku.resource_kind)
        return {
            "line_item_usage_type": prefix + sku.usage_type,
            "line_item_operation": sku.operation,
            "line_item_availability_zone": resource.availability_zone if resource else "",
            "line_item_resource_id": resource.resource_id if resource else "",
            "line_item_usage_amount": format_decimal(amount),
            "product_product_family": sku.family,
            "product_instance_type": sku.instance_type,
            "product_sku": _sku_code(sku.product_code + prefix + sku.usage_type),
            "pricing_unit": sku.unit,
            "resource_tags": resource.tags if resource else {},
        }

    def split_cost_row(self, account: _Account, operation: str) -> LineItem:
        """A split-cost-allocation row (EKS pod / ECS task share of an EC2 instance)."""
        start = self.random_hour()
        amount = Decimal(self.rng.randint(50, 2_000)).scaleb(-3)  # vCPU-hours
        rate = Decimal("0.048")
        cost = _q(amount * rate)
        prefix = _REGIONS[account.region][0]
        region = account.region
        uid = _uuid(self.rng)
        if operation == "EKSPod-EC2":
            usage_type = f"{prefix}EKS-EC2-vCPU-Hours"
            resource = (
                f"arn:aws:eks:{region}:{account.account_id}:pod/main/default/web-{uid[:8]}/{uid}"
            )
        else:
            usage_type = f"{prefix}ECS-EC2-vCPU-Hours"
            resource = f"arn:aws:ecs:{region}:{account.account_id}:task/main/{uid.replace('-', '')}"
        fields = self.base(
            account=account,
            line_type="Usage",
            product_code="AmazonEC2",
            start=start,
            end=start + _HOUR,
        )
        fields.update(
            line_item_usage_type=usage_type,
            line_item_operation=operation,
            line_item_resource_id=resource,
            line_item_usage_amount=format_decimal(amount),
            line_item_unblended_rate=format_decimal(rate),
            line_item_unblended_cost=format_decimal(cost),
            line_item_blended_rate=format_decimal(rate),
            line_item_blended_cost=format_decimal(cost),
            line_item_net_unblended_rate=self.net(rate),
            line_item_net_unblended_cost=self.net(cost),
            line_item_line_item_description="Split cost allocation: vCPU share of an EC2 instance",
            product_product_family="Compute Instance",
            pricing_public_on_demand_cost=format_decimal(cost),
            pricing_public_on_demand_rate=format_decimal(rate),
            pricing_term="OnDemand",
            pricing_unit="vCPU-Hours",
        )
        return self.add(fields)

    # -- Savings Plan ----------------------------------------------------------------
    def sp_fields(self) -> dict[str, str]:
        sp_start = datetime(self.start.year, 1, 1, tzinfo=UTC)
        return {
            "savings_plan_savings_plan_a_r_n": self.org.sp_arn,
            "savings_plan_start_time": format_timestamp(sp_start),
            "savings_plan_end_time": format_timestamp(sp_start + timedelta(hours=8760)),
            "savings_plan_offering_type": "ComputeSavingsPlans",
            "savings_plan_payment_option": "Partial Upfront",
            "savings_plan_purchase_term": "1yr",
        }

    def sp_hour(self, hour: datetime, covered: int) -> None:
        """A recurring-fee line for ``hour`` and ``covered`` covered/negation pairs."""
        used = _ZERO
        for _ in range(covered):
            used += self.sp_covered_pair(hour)
        payer = self.org.payer
        fields = self.base(
            account=payer,
            line_type="SavingsPlanRecurringFee",
            product_code="ComputeSavingsPlans",
            start=hour,
            end=hour + _HOUR,
        )
        fields.update(self.sp_fields())
        fields.update(
            line_item_usage_type="ComputeSP:1yrPartialUpfront",
            line_item_usage_amount="1.0",
            line_item_unblended_rate=format_decimal(_SP_RECURRING_H),
            line_item_unblended_cost=format_decimal(_SP_RECURRING_H),
            line_item_blended_rate=format_decimal(_SP_RECURRING_H),
            line_item_blended_cost=format_decimal(_SP_RECURRING_H),
            line_item_net_unblended_rate=self.net(_SP_RECURRING_H),
            line_item_net_unblended_cost=self.net(_SP_RECURRING_H),
            line_item_line_item_description="1 year Partial Upfront Compute Savings Plan",
            product_product_family="Savings Plans",
            product_region="",
            product_region_code="",
            product_location="Any",
            savings_plan_total_commitment_to_date=format_decimal(_SP_COMMITMENT_H),
            savings_plan_used_commitment=format_decimal(used),
            savings_plan_amortized_upfront_commitment_for_billing_period=format_decimal(
                _SP_UPFRONT_H
            ),
            savings_plan_net_amortized_upfront_commitment_for_billing_period=self.net(
                _SP_UPFRONT_H
            ),
            savings_plan_recurring_commitment_for_billing_period=format_decimal(_SP_RECURRING_H),
            savings_plan_net_recurring_commitment_for_billing_period=self.net(_SP_RECURRING_H),
        )
        self.add(fields)

    def sp_covered_pair(self, hour: datetime) -> Decimal:
        """A SavingsPlanCoveredUsage line and its negation; returns the effective cost."""
        account = self.rng.choice(self.org.accounts)
        usage_type = self.rng.choice(sorted(_SP_COVERED))
        sku = next(s for s in _SKUS if s.usage_type == usage_type)
        if usage_type.startswith("BoxUsage"):
            amount = Decimal(1)
        else:
            amount = Decimal(self.rng.randint(1_000, 1_200_000)).scaleb(-3)
        rate, sp_rate = Decimal(sku.rate), _SP_COVERED[usage_type]
        cost, effective = _q(amount * rate), _q(amount * sp_rate)
        usage = self._usage_fields(account, sku, amount)
        covered = self.base(
            account=account,
            line_type="SavingsPlanCoveredUsage",
            product_code=sku.product_code,
            start=hour,
            end=hour + _HOUR,
        )
        covered.update(usage)
        covered.update(self.sp_fields())
        covered.update(
            line_item_unblended_rate=sku.rate,
            line_item_unblended_cost=format_decimal(cost),
            line_item_blended_rate=sku.rate,
            line_item_blended_cost=format_decimal(cost),
            line_item_net_unblended_rate=self.net(rate),
            line_item_net_unblended_cost=self.net(cost),
            line_item_line_item_description=sku.description,
            pricing_public_on_demand_cost=format_decimal(cost),
            pricing_public_on_demand_rate=sku.rate,
            pricing_term="OnDemand",
            savings_plan_savings_plan_rate=format_decimal(sp_rate),
            savings_plan_savings_plan_effective_cost=format_decimal(effective),
            savings_plan_net_savings_plan_effective_cost=self.net(effective),
        )
        covered_item = self.add(covered)
        negation = self.base(
            account=account,
            line_type="SavingsPlanNegation",
            product_code=sku.product_code,
            start=hour,
            end=hour + _HOUR,
        )
        negation.update(usage)
        negation.update(self.sp_fields())
        negation.update(
            line_item_unblended_rate="-" + sku.rate,
            line_item_unblended_cost=format_decimal(-cost),
            line_item_blended_rate="-" + sku.rate,
            line_item_blended_cost=format_decimal(-cost),
            line_item_net_unblended_rate=self.net(-rate),
            line_item_net_unblended_cost=(
                format_decimal(-Decimal(covered_item.line_item_net_unblended_cost))
                if self.discounts
                else ""
            ),
            line_item_line_item_description=(
                f"SavingsPlanNegation used by AccountId : {account.account_id} and UsageSku : "
                f"{usage['product_sku']}"
            ),
            # Real negation lines repeat the public on-demand cost; list cost must ignore it.
            pricing_public_on_demand_cost=format_decimal(cost),
            pricing_public_on_demand_rate=sku.rate,
            pricing_term="OnDemand",
            savings_plan_savings_plan_rate=format_decimal(sp_rate),
        )
        self.add(negation)
        return effective

    def sp_upfront_fee(self) -> None:
        amount = _q(_SP_UPFRONT_H * _YEAR_HOURS)
        fields = self.base(
            account=self.org.payer,
            line_type="SavingsPlanUpfrontFee",
            product_code="ComputeSavingsPlans",
            start=self.start,
            end=self.start + _HOUR,
            bill_type="Purchase",
        )
        fields.update(self.sp_fields())
        fields.update(
            line_item_usage_type="ComputeSP:1yrPartialUpfront",
            line_item_usage_amount="1.0",
            line_item_unblended_rate=format_decimal(amount),
            line_item_unblended_cost=format_decimal(amount),
            line_item_blended_rate=format_decimal(amount),
            line_item_blended_cost=format_decimal(amount),
            line_item_net_unblended_rate=self.net(amount),
            line_item_net_unblended_cost=self.net(amount),
            line_item_line_item_description="Upfront fee for 1 year Partial Upfront Compute "
            "Savings Plan",
            product_product_family="Savings Plans",
            product_region="",
            product_region_code="",
            product_location="Any",
        )
        self.add(fields)

    # -- Reservations -------------------------------------------------------------
    def ri_fields(self, index: int) -> dict[str, str]:
        ri_start = datetime(self.start.year, 1, 1, tzinfo=UTC)
        return {
            "reservation_reservation_a_r_n": self.org.ri_arns[index],
            "reservation_start_time": format_timestamp(ri_start),
            "reservation_end_time": format_timestamp(ri_start + timedelta(hours=8760)),
        }

    def ri_discounted_usage(self, index: int, hours: list[datetime]) -> None:
        ri = _RESERVATIONS[index]
        eligible = [a for a in self.org.accounts if a.region == "us-east-1"]
        sku = next(s for s in _SKUS if s.usage_type == ri.usage_type)
        effective = ri.upfront_h + ri.recurring_h
        for hour in hours:
            account = self.rng.choice(eligible)
            fields = self.base(
                account=account,
                line_type="DiscountedUsage",
                product_code=ri.product_code,
                start=hour,
                end=hour + _HOUR,
            )
            fields.update(self._usage_fields(account, sku, Decimal(1)))
            fields.update(self.ri_fields(index))
            fields.update(
                line_item_unblended_rate="0.0",
                line_item_unblended_cost="0.0",
                line_item_blended_rate="0.0",
                line_item_blended_cost="0.0",
                line_item_net_unblended_rate=self.net(_ZERO),
                line_item_net_unblended_cost=self.net(_ZERO),
                line_item_line_item_description=ri.description,
                pricing_public_on_demand_cost=format_decimal(ri.od_rate),
                pricing_public_on_demand_rate=format_decimal(ri.od_rate),
                pricing_term="Reserved",
                reservation_amortized_upfront_cost_for_usage=format_decimal(ri.upfront_h),
                reservation_recurring_fee_for_usage=format_decimal(ri.recurring_h),
                reservation_effective_cost=format_decimal(effective),
                reservation_net_amortized_upfront_cost_for_usage=self.net(ri.upfront_h),
                reservation_net_recurring_fee_for_usage=self.net(ri.recurring_h),
                reservation_net_effective_cost=self.net(effective),
            )
            self.add(fields)

    def ri_fee(self, index: int, used_hours: int) -> None:
        ri = _RESERVATIONS[index]
        total_hours = Decimal(self.hours)
        unused = Decimal(self.hours - used_hours)
        recurring = _q(ri.recurring_h * total_hours)
        fields = self.base(
            account=self.org.payer,
            line_type="RIFee",
            product_code=ri.product_code,
            start=self.start,
            end=self.end,
        )
        fields.update(self.ri_fields(index))
        fields.update(
            line_item_usage_type=f"HeavyUsage:{ri.instance_type}",
            line_item_operation=ri.operation,
            line_item_usage_amount=format_decimal(total_hours),
            line_item_unblended_rate=format_decimal(ri.recurring_h),
            line_item_unblended_cost=format_decimal(recurring),
            line_item_blended_rate=format_decimal(ri.recurring_h),
            line_item_blended_cost=format_decimal(recurring),
            line_item_net_unblended_rate=self.net(ri.recurring_h),
            line_item_net_unblended_cost=self.net(recurring),
            line_item_line_item_description=ri.description,
            product_product_family=ri.family,
            product_instance_type=ri.instance_type,
            pricing_term="Reserved",
            pricing_unit="Hrs",
            reservation_amortized_upfront_fee_for_billing_period=format_decimal(
                _q(ri.upfront_h * total_hours)
            ),
            reservation_net_amortized_upfront_fee_for_billing_period=self.net(
                _q(ri.upfront_h * total_hours)
            ),
            reservation_unused_quantity=format_decimal(unused),
            reservation_unused_amortized_upfront_fee_for_billing_period=format_decimal(
                _q(ri.upfront_h * unused)
            ),
            reservation_unused_recurring_fee=format_decimal(_q(ri.recurring_h * unused)),
            reservation_net_unused_amortized_upfront_fee_for_billing_period=self.net(
                _q(ri.upfront_h * unused)
            ),
            reservation_net_unused_recurring_fee=self.net(_q(ri.recurring_h * unused)),
        )
        self.add(fields)

    def ri_upfront_fee(self, index: int) -> None:
        ri = _RESERVATIONS[index]
        amount = _q(ri.upfront_h * _YEAR_HOURS)
        fields = self.base(
            account=self.org.payer,
            line_type="Fee",
            product_code=ri.product_code,
            start=self.start,
            end=self.start + _HOUR,
            bill_type="Purchase",
        )
        fields.update(self.ri_fields(index))
        fields.update(
            line_item_usage_type=f"HeavyUsage:{ri.instance_type}",
            line_item_operation=ri.operation,
            line_item_usage_amount="1.0",
            line_item_unblended_rate=format_decimal(amount),
            line_item_unblended_cost=format_decimal(amount),
            line_item_blended_rate=format_decimal(amount),
            line_item_blended_cost=format_decimal(amount),
            line_item_net_unblended_rate=self.net(amount),
            line_item_net_unblended_cost=self.net(amount),
            line_item_line_item_description=(
                f"Sign up charge for subscription: {self.rng.randint(10**8, 10**9 - 1)}, "
                f"planId: {self.rng.randint(1000, 9999)}"
            ),
            product_product_family=ri.family,
            product_instance_type=ri.instance_type,
            pricing_term="Reserved",
        )
        self.add(fields)

    # -- Whole-month adjustments ---------------------------------------------------
    def adjustment(
        self,
        account: _Account,
        line_type: str,
        product_code: str,
        amount: Decimal,
        description: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        tax_type: str = "",
    ) -> None:
        fields = self.base(
            account=account,
            line_type=line_type,
            product_code=product_code,
            start=start or self.start,
            end=end or self.end,
        )
        text = format_decimal(amount)
        fields.update(
            line_item_usage_amount="1.0" if line_type == "Tax" else "",
            line_item_unblended_cost=text,
            line_item_blended_cost=text,
            line_item_net_unblended_cost=self.net(amount, discounted=False),
            line_item_line_item_description=description,
            line_item_tax_type=tax_type,
        )
        self.add(fields)


def _sku_code(text: str) -> str:
    digest = random.Random(text).getrandbits(80)  # noqa: S311
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(alphabet[(digest >> (5 * i)) & 31] for i in range(16))


def _minimum_rows(accounts: int, purchases: bool) -> int:
    pairs = accounts * len(SERVICE_CODES)
    fixed = 2 + 3 + 1 + 6  # RIFee x2, credits x2 + refund, payer SP tax, split rows
    commitments = 3 + len(_RESERVATIONS)  # one SP hour with a pair, one DU per RI
    purchase_rows = 1 + sum(1 for r in _RESERVATIONS if r.upfront_h) if purchases else 0
    return 2 * pairs + fixed + commitments + purchase_rows


def generate_line_items(
    *,
    period: date,
    seed: int,
    rows: int = 2000,
    accounts: int = 3,
    org_seed: int = 0,
    purchases: bool = True,
    discounts: bool = True,
    currency: str = "USD",
) -> list[LineItem]:
    """Generate exactly ``rows`` realistic line items of one billing period.

    Deterministic: the same arguments give the same items. ``seed`` drives the usage of the
    month; ``org_seed`` the organisation (account ids and names, resources, tags, the Savings
    Plan and reservation ARNs), so several months of one organisation share their accounts.
    ``accounts`` usage accounts (the first is the payer). ``purchases``: include the upfront
    fees of the Savings Plan and the EC2 reservation (the purchase month). ``discounts``:
    fill the ``_net_`` columns (a 3 % private-pricing discount); without it they are empty,
    as in reports of accounts without discounts.

    Raises ValueError when ``rows`` is too small to hold every kind of line.
    """
    if accounts < 1:
        raise ValueError("accounts must be at least 1")
    minimum = _minimum_rows(accounts, purchases)
    if rows < minimum:
        raise ValueError(f"rows must be at least {minimum} for {accounts} account(s)")
    period = period.replace(day=1)
    rng = random.Random(f"cur-ray-items-{seed}-{period.isoformat()}")  # noqa: S311
    org = _Org(org_seed, accounts)
    builder = _Builder(rng, org, period, discounts=discounts, currency=currency)

    pairs = [(a, code) for a in org.accounts for code in SERVICE_CODES]
    budget = rows - _minimum_rows(accounts, purchases)
    sp_budget = min(budget * 12 // 100, builder.hours - 3)
    du_budget = min(budget * 8 // 100, builder.hours * len(_RESERVATIONS) - len(_RESERVATIONS))
    plain_budget = budget - sp_budget - du_budget

    # 1. Regular usage: one line per (account, service) at least, then weighted at random.
    for account, code in pairs:
        builder.usage(account, rng.choice([s for s in _SKUS if s.product_code == code]))
    weights = [s.weight for s in _SKUS]
    for _ in range(plain_budget):
        sku = rng.choices(_SKUS, weights=weights)[0]
        builder.usage(rng.choice(org.accounts), sku)

    # 2. Savings Plan: recurring fee per hour, 0-2 covered/negation pairs each.
    sp_rows = 3 + sp_budget
    all_hours = [builder.start + timedelta(hours=h) for h in range(builder.hours)]
    for position, hour in enumerate(sorted(rng.sample(all_hours, k=sp_rows))):
        if sp_rows <= 0:
            break
        covered = rng.choice((0, 1, 1, 2)) if position else rng.choice((1, 2))
        covered = min(covered, (sp_rows - 1) // 2)
        builder.sp_hour(hour, covered)
        sp_rows -= 1 + 2 * covered
    if purchases:
        builder.sp_upfront_fee()

    # 3. Reservations: discounted usage in distinct hours, the month's RI fee, upfront fee.
    du_rows = len(_RESERVATIONS) + du_budget
    for index, ri in enumerate(_RESERVATIONS):
        count = du_rows // len(_RESERVATIONS) + (1 if index < du_rows % len(_RESERVATIONS) else 0)
        hours = sorted(rng.sample(all_hours, k=count))
        builder.ri_discounted_usage(index, hours)
        builder.ri_fee(index, len(hours))
        if purchases and ri.upfront_h:
            builder.ri_upfront_fee(index)

    # 4. Split cost allocation rows (to be excluded by aggregations).
    for i, operation in enumerate(("EKSPod-EC2",) * 4 + ("ECSTask-EC2",) * 2):
        builder.split_cost_row(org.accounts[i % len(org.accounts)], operation)

    # 5. Credits, refund, then tax on everything billed so far.
    billed: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for item in builder.items:
        if item.line_item_operation not in ("EKSPod-EC2", "ECSTask-EC2"):
            key = (item.line_item_usage_account_id, item.line_item_product_code)
            billed[key] += Decimal(item.line_item_unblended_cost)
    payer = org.payer
    second = org.accounts[1 % len(org.accounts)]
    last = org.accounts[-1]
    ec2 = billed[(payer.account_id, "AmazonEC2")]
    builder.adjustment(
        payer,
        "Credit",
        "AmazonEC2",
        -max(_CENT, min(ec2 * Decimal("0.1"), Decimal(25)).quantize(_CENT)),
        "AWS Promotional Credit",
    )
    credit_day = builder.start + timedelta(days=min(14, builder.days - 1))
    lam = billed[(second.account_id, "AWSLambda")]
    builder.adjustment(
        second,
        "Credit",
        "AWSLambda",
        -max(_CENT, _q(lam * Decimal("0.5"))),
        "AWS Activate Credits",
        start=credit_day,
        end=credit_day + timedelta(days=1),
    )
    rds = billed[(last.account_id, "AmazonRDS")]
    builder.adjustment(
        last,
        "Refund",
        "AmazonRDS",
        -max(_CENT, (rds * Decimal("0.05")).quantize(_CENT)),
        "Refund for service event (RDS instance unavailability)",
    )
    tax_pairs = [*pairs, (payer, "ComputeSavingsPlans")]
    for account, code in tax_pairs:
        base = billed[(account.account_id, code)]
        tax = max(_ZERO, (base * _TAX_RATE).quantize(_CENT, rounding=ROUND_HALF_UP))
        builder.adjustment(
            account,
            "Tax",
            code,
            tax,
            f"Tax for product code {code}",
            tax_type="US Sales Tax",
        )

    items = builder.items
    if len(items) != rows:  # pragma: no cover - guarded by the budget arithmetic
        raise AssertionError(f"generated {len(items)} rows instead of {rows}")
    items.sort(key=lambda i: (i.line_item_usage_start_date, i.identity_line_item_id))
    return items
