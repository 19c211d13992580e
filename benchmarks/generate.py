"""Vectorised generator of realistic CUR 2.0 exports (Parquet and CSV.gz) for benchmarks.

``cur_ray.samples`` builds line items one Python object at a time, which is right for exact
test oracles and far too slow for tens of millions of rows. This module builds the same
CUR 2.0 schema (:func:`cur_ray.samples.writers.cur2_columns`: 80+ columns, ``product`` and
``resource_tags`` maps) column by column with numpy and Arrow ``take`` from small pools:

* an organisation of ``accounts`` linked accounts (12-digit ids, some with leading zeros,
  half of them with private pricing so the ``_net_`` columns are filled), one payer;
* ~100 real AWS product codes with Zipf-like usage, 4-40 SKUs each (usage type, operation,
  region, instance type, product map of 7-15 attributes);
* a pool of resources (instance ids, ARNs, volume ids; ~1 per 20 rows) each owned by one
  account and one SKU, with tag maps of 0-5 tags;
* hourly usage over the whole month, every line item type (Usage, DiscountedUsage,
  SavingsPlanCoveredUsage/Negation/RecurringFee/UpfrontFee, RIFee, Fee with and without a
  reservation ARN, Tax, Credit, Refund) and ~1 % split cost allocation rows
  (``EKSPod-EC2``/``ECSTask-EC2``) that the aggregation must skip;
* costs as ``double`` like AWS writes them, from exact decimals with 2-10 decimals, plus
  0.05 % of unblended and list costs with full double precision and Savings Plans upfront
  fees up to 692 040 (beyond the aggregation's integer fast path: they exercise its exact
  per-value fallback); unique 52-character line item ids.

Row groups are sized like parquet-mr's default (what Spark/Hive-based exporters use): about
``row_group_mib`` MiB (default 128) of encoded, uncompressed column data per row group,
snappy compression, dictionary pages with plain fallback, 1 MiB data pages. The exact
writer AWS uses is not documented; this is an assumption stated in benchmarks/README.md.

Everything is deterministic for a given seed. Files are written one row group at a time, so
memory stays at one row group whatever the file size.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cur_ray.samples.line_items import LINE_ITEM_TYPES
from cur_ray.samples.writers import cur2_columns

__all__ = [
    "DatasetSpec",
    "GeneratedFile",
    "World",
    "ensure_dataset",
    "write_csv_gz",
    "write_parquet",
]

SCALE = 10**10  # money is generated as integers of 1e-10 dollars, then written as doubles
EXPORT = "bench-cur2"

# (code, product name, kind) — kind picks the SKU and resource id shapes.
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("AmazonEC2", "Amazon Elastic Compute Cloud", "compute"),
    ("AmazonS3", "Amazon Simple Storage Service", "storage"),
    ("AmazonRDS", "Amazon Relational Database Service", "database"),
    ("AWSDataTransfer", "AWS Data Transfer", "transfer"),
    ("AmazonCloudWatch", "AmazonCloudWatch", "other"),
    ("AWSLambda", "AWS Lambda", "function"),
    ("AmazonDynamoDB", "Amazon DynamoDB", "database"),
    ("AmazonVPC", "Amazon Virtual Private Cloud", "network"),
    ("AmazonEKS", "Amazon Elastic Container Service for Kubernetes", "compute"),
    ("AmazonECS", "Amazon Elastic Container Service", "compute"),
    ("AmazonElastiCache", "Amazon ElastiCache", "database"),
    ("AWSELB", "Elastic Load Balancing", "network"),
    ("AmazonES", "Amazon OpenSearch Service", "database"),
    ("AmazonRedshift", "Amazon Redshift", "database"),
    ("AmazonKinesis", "Amazon Kinesis", "other"),
    ("AmazonKinesisFirehose", "Amazon Kinesis Firehose", "other"),
    ("AmazonSNS", "Amazon Simple Notification Service", "other"),
    ("AWSQueueService", "Amazon Simple Queue Service", "other"),
    ("AmazonRoute53", "Amazon Route 53", "network"),
    ("AmazonCloudFront", "Amazon CloudFront", "transfer"),
    ("AmazonEFS", "Amazon Elastic File System", "storage"),
    ("AmazonFSx", "Amazon FSx", "storage"),
    ("AWSBackup", "AWS Backup", "storage"),
    ("AWSGlue", "AWS Glue", "other"),
    ("AmazonAthena", "Amazon Athena", "other"),
    ("AmazonSageMaker", "Amazon SageMaker", "compute"),
    ("AmazonECR", "Amazon EC2 Container Registry (ECR)", "storage"),
    ("AWSCloudTrail", "AWS CloudTrail", "other"),
    ("AWSConfig", "AWS Config", "other"),
    ("AWSSecretsManager", "AWS Secrets Manager", "other"),
    ("awskms", "AWS Key Management Service", "other"),
    ("AmazonGuardDuty", "Amazon GuardDuty", "other"),
    ("AWSSecurityHub", "AWS Security Hub", "other"),
    ("AmazonInspectorV2", "Amazon Inspector", "other"),
    ("awswaf", "AWS WAF", "network"),
    ("AWSShield", "AWS Shield", "network"),
    ("AmazonApiGateway", "Amazon API Gateway", "network"),
    ("AmazonStates", "AWS Step Functions", "function"),
    ("AmazonMQ", "Amazon MQ", "database"),
    ("AmazonMSK", "Amazon Managed Streaming for Apache Kafka", "database"),
    ("AmazonDocDB", "Amazon DocumentDB (with MongoDB compatibility)", "database"),
    ("AmazonNeptune", "Amazon Neptune", "database"),
    ("AmazonQuickSight", "Amazon QuickSight", "other"),
    ("CodeBuild", "AWS CodeBuild", "function"),
    ("AWSCodePipeline", "AWS CodePipeline", "other"),
    ("AWSCodeArtifact", "AWS CodeArtifact", "storage"),
    ("AmazonCognito", "Amazon Cognito", "other"),
    ("AmazonSES", "Amazon Simple Email Service", "other"),
    ("AWSSystemsManager", "AWS Systems Manager", "other"),
    ("AmazonWorkSpaces", "Amazon WorkSpaces", "compute"),
    ("AWSDirectConnect", "AWS Direct Connect", "transfer"),
    ("AWSTransfer", "AWS Transfer Family", "transfer"),
    ("AmazonLightsail", "Amazon Lightsail", "compute"),
    ("AWSAmplify", "AWS Amplify", "function"),
    ("AWSAppSync", "AWS AppSync", "function"),
    ("AmazonTimestream", "Amazon Timestream", "database"),
    ("AmazonMemoryDB", "Amazon MemoryDB", "database"),
    ("AWSDatabaseMigrationSvc", "AWS Database Migration Service", "compute"),
    ("ElasticMapReduce", "Amazon Elastic MapReduce", "compute"),
    ("AmazonBedrock", "Amazon Bedrock", "function"),
    ("comprehend", "Amazon Comprehend", "function"),
    ("AmazonRekognition", "Amazon Rekognition", "function"),
    ("AmazonTextract", "Amazon Textract", "function"),
    ("translate", "Amazon Translate", "function"),
    ("AmazonPolly", "Amazon Polly", "function"),
    ("transcribe", "Amazon Transcribe", "function"),
    ("AmazonConnect", "Amazon Connect", "other"),
    ("AmazonPinpoint", "Amazon Pinpoint", "other"),
    ("AWSEvents", "CloudWatch Events", "other"),
    ("AWSCostExplorer", "AWS Cost Explorer", "other"),
    ("AWSSupportBusiness", "AWS Support (Business)", "support"),
    ("AWSSupportEnterprise", "AWS Support (Enterprise)", "support"),
    ("AmazonGlacier", "Amazon Glacier", "storage"),
    ("AmazonSimpleDB", "Amazon SimpleDB", "database"),
    ("AWSCertificateManager", "AWS Certificate Manager", "other"),
    ("AWSXRay", "AWS X-Ray", "other"),
    ("AWSCloudShell", "AWS CloudShell", "other"),
    ("AWSServiceCatalog", "AWS Service Catalog", "other"),
    ("AmazonMacie", "Amazon Macie", "other"),
    ("AmazonDetective", "Amazon Detective", "other"),
    ("AWSFMS", "AWS Firewall Manager", "network"),
    ("AWSNetworkFirewall", "AWS Network Firewall", "network"),
    ("AWSGlobalAccelerator", "AWS Global Accelerator", "network"),
    ("AmazonAppStream", "Amazon AppStream", "compute"),
    ("AmazonLocationService", "Amazon Location Service", "function"),
    ("AWSIoT", "AWS IoT", "other"),
    ("AWSGreengrass", "AWS IoT Greengrass", "other"),
    ("AmazonKendra", "Amazon Kendra", "function"),
    ("AmazonLex", "Amazon Lex", "function"),
    ("AWSElementalMediaConvert", "AWS Elemental MediaConvert", "function"),
    ("AmazonPrometheus", "Amazon Managed Service for Prometheus", "other"),
    ("AmazonGrafana", "Amazon Managed Grafana", "other"),
    ("AWSAppRunner", "AWS App Runner", "compute"),
    ("AmazonMCS", "Amazon Keyspaces (for Apache Cassandra)", "database"),
    ("AmazonQLDB", "Amazon Quantum Ledger Database", "database"),
    ("AWSStorageGateway", "AWS Storage Gateway", "storage"),
    ("AWSDataSync", "AWS DataSync", "transfer"),
    ("AmazonSWF", "Amazon Simple Workflow Service", "function"),
    ("AWSCloudFormation", "AWS CloudFormation", "other"),
    ("ComputeSavingsPlans", "Savings Plans for AWS Compute usage", "savings_plan"),
)

REGIONS: tuple[tuple[str, str, str], ...] = (
    ("us-east-1", "US East (N. Virginia)", "USE1"),
    ("us-east-2", "US East (Ohio)", "USE2"),
    ("us-west-2", "US West (Oregon)", "USW2"),
    ("eu-west-1", "EU (Ireland)", "EU"),
    ("eu-central-1", "EU (Frankfurt)", "EUC1"),
    ("ap-northeast-1", "Asia Pacific (Tokyo)", "APN1"),
    ("ap-southeast-2", "Asia Pacific (Sydney)", "APS2"),
    ("sa-east-1", "South America (Sao Paulo)", "SAE1"),
)
_REGION_WEIGHTS = np.array([0.42, 0.12, 0.14, 0.12, 0.08, 0.06, 0.04, 0.02])

# The share of rows of each of LINE_ITEM_TYPES, in its order (the rest is Usage).
_TYPE_SHARES = np.array([0.0, 0.05, 0.07, 0.07, 0.003, 0.0002, 0.001, 0.0008, 0.002, 0.008, 0.001])
_TYPE_SHARES[0] = 1.0 - _TYPE_SHARES.sum()
(USAGE, DISCOUNTED, SP_COVERED, SP_NEGATION, SP_RECURRING, SP_UPFRONT, RI_FEE, FEE, TAX) = range(9)
CREDIT, REFUND = 9, 10
_MONTHLY_TYPES = (SP_UPFRONT, RI_FEE, FEE, TAX, CREDIT, REFUND)
SPLIT_COST_SHARE = 0.01
COMPUTED_SHARE = 0.0005  # costs written with full double precision (16-17 digits)

_INSTANCE_TYPES = (
    "t3.micro",
    "t3.medium",
    "m5.large",
    "m5.xlarge",
    "m6i.2xlarge",
    "c5.xlarge",
    "c6g.large",
    "r5.2xlarge",
    "r6g.xlarge",
    "g5.xlarge",
)
_BASE32 = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)
_HEX = "0123456789abcdef"
_TAG_KEYS = ("user_team", "user_environment", "user_service", "user_cost_center", "aws_createdBy")
_TEAMS = ("payments", "search", "platform", "data", "identity", "growth", "mobile", "ml")


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate; the folder is reused while its ``spec.json`` matches."""

    rows: int = 8_000_000
    files: int = 4
    seed: int = 2024
    period: str = "2024-03"
    accounts: int = 40
    row_group_mib: int = 128
    csv_rows: int = 1_000_000

    @property
    def period_start(self) -> date:
        """First day of the billing period."""
        year, month = (int(p) for p in self.period.split("-"))
        return date(year, month, 1)


@dataclass(frozen=True)
class GeneratedFile:
    """One written data file."""

    path: str
    key: str
    rows: int
    size_bytes: int
    row_groups: int


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _strings(values: Sequence[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _map_pool(maps: Sequence[dict[str, str]]) -> tuple[pa.MapArray, pa.Array]:
    """A ``map<string,string>`` pool and the same maps as JSON text (CUR 2.0 CSV)."""
    offsets = np.zeros(len(maps) + 1, dtype=np.int32)
    keys: list[str] = []
    items: list[str] = []
    for i, m in enumerate(maps):
        keys.extend(m)
        items.extend(m.values())
        offsets[i + 1] = len(keys)
    from_arrays: Any = pa.MapArray.from_arrays
    array = from_arrays(pa.array(offsets), _strings(keys), _strings(items))
    text = _strings([json.dumps(m, separators=(",", ":")) for m in maps])
    return array, text


class World:
    """The organisation, services, SKUs and resources shared by every file of a dataset."""

    def __init__(self, spec: DatasetSpec, resources: int) -> None:
        rng = np.random.default_rng(spec.seed)
        self.spec = spec
        start = spec.period_start
        end = (start + timedelta(days=32)).replace(day=1)
        self.period_start_ms = _epoch_ms(start)
        self.period_end_ms = _epoch_ms(end)
        self.hours = (end - start).days * 24

        # Accounts: the payer and its linked accounts; half have private pricing (net costs).
        n_accounts = spec.accounts
        ids = rng.integers(10**10, 10**12, size=n_accounts)
        self.account_ids = [f"{i:012d}" for i in ids]
        self.account_names = [
            f"{_TEAMS[i % len(_TEAMS)]}-{['prod', 'dev', 'stg'][i % 3]}-{i:02d}"
            for i in range(n_accounts)
        ]
        self.account_weights = _zipf(n_accounts, 0.8)
        self.account_discount = np.arange(n_accounts) % 2 == 0
        self.payer = self.account_ids[0]

        # Services and SKUs.
        self.services = SERVICES
        service_weights = _zipf(len(SERVICES) - 1, 1.15)  # Savings Plans get no usage rows
        skus: list[dict[str, Any]] = []
        sku_weights: list[float] = []
        for s, (code, name, kind) in enumerate(SERVICES):
            count = 1 if kind == "savings_plan" else int(np.clip(40 / (1 + s / 6), 4, 40))
            for k in range(count):
                region = int(rng.choice(len(REGIONS), p=_REGION_WEIGHTS))
                skus.append(_sku(rng, s, code, name, kind, k, region))
                weight = 0.0 if kind == "savings_plan" else service_weights[s] / count
                sku_weights.append(weight)
        self.skus = skus
        self.sp_sku = next(i for i, s in enumerate(skus) if s["kind"] == "savings_plan")
        weights = np.array(sku_weights)
        self.sku_service = np.array([s["service"] for s in skus], dtype=np.int32)
        self.sku_rate_k = np.array([s["rate_k"] for s in skus], dtype=np.int64)
        self.sku_factor = np.array([s["factor"] for s in skus], dtype=np.float64)
        self.sku_compute = np.array([s["kind"] == "compute" for s in skus])
        self.sku_has_resource = np.array([s["resource_prefix"] != "" for s in skus])

        # Resources: each belongs to one account and one SKU.
        n_res = max(resources, 100)
        res_sku = rng.choice(len(skus), size=n_res, p=weights / weights.sum())
        res_account = rng.choice(n_accounts, size=n_res, p=self.account_weights)
        tags = rng.integers(0, 400, size=n_res)
        self.res_sku = res_sku.astype(np.int32)
        self.res_account = res_account.astype(np.int32)
        self.res_tags = tags.astype(np.int32)
        id_rng = np.random.default_rng(spec.seed + 1)
        raw = id_rng.integers(0, 2**62, size=n_res)
        resource_ids = []
        for i in range(n_res):
            sku = skus[res_sku[i]]
            prefix = sku["resource_prefix"]
            if not prefix:
                resource_ids.append("")
                continue
            hexa = f"{int(raw[i]):017x}"[:17]
            account = self.account_ids[res_account[i]]
            region = REGIONS[sku["region"]][0]
            if prefix.startswith("arn:"):
                resource_ids.append(prefix.format(region=region, account=account, id=hexa[:12]))
            else:
                resource_ids.append(f"{prefix}{hexa}")
        self.resource_ids = _strings(resource_ids)
        self.resource_ids.validate()

        # Pools of per-SKU strings and maps.
        def column(name: str) -> pa.Array:
            return _strings([s[name] for s in skus])

        self.sku_columns = {
            "line_item_product_code": _strings([SERVICES[s["service"]][0] for s in skus]),
            "line_item_usage_type": column("usage_type"),
            "line_item_operation": column("operation"),
            "line_item_availability_zone": column("az"),
            "product_product_family": column("family"),
            "product_instance_type": column("instance_type"),
            "product_location": _strings([REGIONS[s["region"]][1] for s in skus]),
            "product_region_code": _strings([REGIONS[s["region"]][0] for s in skus]),
            "product_servicecode": _strings([SERVICES[s["service"]][0] for s in skus]),
            "product_sku": column("sku"),
            "pricing_unit": column("unit"),
            "line_item_line_item_description": column("description"),
            "line_item_unblended_rate": column("rate_text"),
        }
        self.product_maps, self.product_json = _map_pool([s["product"] for s in skus])
        tag_rng = np.random.default_rng(spec.seed + 2)
        tag_maps: list[dict[str, str]] = [{}]
        for _ in range(399):
            count = int(tag_rng.integers(0, 6))
            keys = sorted(tag_rng.choice(len(_TAG_KEYS), size=count, replace=False))
            tag_maps.append(
                {_TAG_KEYS[k]: f"{_TEAMS[int(tag_rng.integers(0, 8))]}-{k}" for k in keys}
            )
        self.tag_maps, self.tag_json = _map_pool(tag_maps)
        self.cost_category_maps, self.cost_category_json = _map_pool(
            [{"business_unit": _TEAMS[i % len(_TEAMS)]} for i in range(n_accounts)]
        )

        # Commitments.
        self.sp_arns = _strings(
            [f"arn:aws:savingsplans::{self.payer}:savingsplan/{i:08x}-sp" for i in range(3)]
        )
        self.ri_arns = _strings(
            [
                f"arn:aws:ec2:us-east-1:{self.account_ids[i % n_accounts]}:reserved-instances/"
                f"{i:08x}-{i * 7919:04x}-ri"
                for i in range(24)
            ]
        )
        self.type_names = _strings(LINE_ITEM_TYPES)
        self.interval_text = _strings(
            [f"{_iso(start, h)}/{_iso(start, h + 1)}" for h in range(self.hours)]
            + [f"{_iso(start, 0)}/{_iso(start, self.hours)}"]
        )
        self.hour_text = _strings([_iso_ms(start, h) for h in range(self.hours + 1)])


def _epoch_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _iso(start: date, hour: int) -> str:
    moment = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(hours=hour)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(start: date, hour: int) -> str:
    moment = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(hours=hour)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _sku(
    rng: np.random.Generator, service: int, code: str, name: str, kind: str, k: int, region: int
) -> dict[str, Any]:
    region_code, location, prefix = REGIONS[region]
    instance = _INSTANCE_TYPES[k % len(_INSTANCE_TYPES)] if kind == "compute" else ""
    if kind == "compute":
        usage_type = f"{prefix}-BoxUsage:{instance}"
        operation, family, unit = "RunInstances", "Compute Instance", "Hrs"
    elif kind == "storage":
        usage_type = (
            f"{prefix}-TimedStorage-ByteHrs" if k % 2 == 0 else f"{prefix}-Requests-Tier{k}"
        )
        operation, family, unit = (
            ("StandardStorage" if k % 2 == 0 else "GetObject"),
            "Storage",
            "GB-Mo",
        )
    elif kind == "database":
        usage_type = f"{prefix}-InstanceUsage:db.r6g.{['large', 'xlarge', '2xlarge'][k % 3]}"
        operation, family, unit = f"CreateDBInstance:00{k % 10:02d}", "Database Instance", "Hrs"
    elif kind == "transfer":
        usage_type = (
            f"{prefix}-DataTransfer-Out-Bytes"
            if k % 2 == 0
            else f"{prefix}-{REGIONS[(region + 1) % 8][2]}-AWS-Out-Bytes"
        )
        operation, family, unit = "InterZone-Out" if k % 3 else "", "Data Transfer", "GB"
    elif kind == "network":
        usage_type = f"{prefix}-LoadBalancerUsage" if k % 2 == 0 else f"{prefix}-NatGateway-Hours"
        operation, family, unit = "LoadBalancing:Application", "Load Balancer", "Hrs"
    elif kind == "function":
        usage_type = f"{prefix}-Request" if k % 2 == 0 else f"{prefix}-Lambda-GB-Second"
        operation, family, unit = "Invoke", "Serverless", "Requests"
    elif kind == "support":
        usage_type, operation, family, unit = "Dollar", "", "Support", "Dollar"
    elif kind == "savings_plan":
        usage_type, operation, family, unit = "ComputeSP:3yrAllUpfront", "", "Savings Plan", "Hrs"
    else:
        usage_type = f"{prefix}-{code[:8]}-Units-{k}"
        operation, family, unit = f"{code}Op{k % 4}", "Metric", "Units"
    resource_prefix = {
        "compute": "i-0",
        "storage": "arn:aws:s3:::bucket-{id}",
        "database": "arn:aws:rds:{region}:{account}:db:db-{id}",
        "function": "arn:aws:lambda:{region}:{account}:function:fn-{id}",
        "network": "arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/app/lb-{id}",
    }.get(kind, "")
    rate = float(np.exp(rng.normal(-3.0, 1.5)))
    decimals = int(rng.choice([3, 4, 6, 8, 10]))
    rate_k = max(1, round(rate * 10**decimals)) * 10 ** (10 - decimals)
    product = {
        "product_name": name,
        "servicecode": code,
        "region": region_code,
        "location": location,
        "location_type": "AWS Region",
        "product_family": family,
        "usagetype": usage_type,
        "operation": operation,
    }
    if kind in ("compute", "database"):
        product.update(
            instance_type=instance or usage_type.rsplit(":", 1)[-1],
            instance_family=(instance or "db.r6g").split(".")[0],
            vcpu=str(2 ** (k % 4 + 1)),
            memory=f"{2 ** (k % 4 + 2)} GiB",
            operating_system="Linux",
            tenancy="Shared",
            pre_installed_sw="NA",
        )
    sku_code = "".join(_HEX[int(c) % 16].upper() for c in rng.integers(0, 16, size=16))
    return {
        "service": service,
        "kind": kind,
        "region": region,
        "usage_type": usage_type,
        "operation": operation,
        "family": family,
        "unit": unit,
        "instance_type": instance,
        "az": f"{region_code}{'abc'[k % 3]}" if kind in ("compute", "database") else "",
        "sku": sku_code,
        "description": f"${rate_k / SCALE:.4f} per {unit} for {usage_type} in {location}",
        "rate_k": rate_k,
        "rate_text": _decimal_text(rate_k),
        "factor": float(2 ** (k % 5)) if kind == "compute" else math.nan,
        "resource_prefix": resource_prefix,
        "product": product,
    }


def _decimal_text(k: int) -> str:
    sign = "-" if k < 0 else ""
    whole, frac = divmod(abs(k), SCALE)
    text = f"{whole}.{frac:010d}".rstrip("0").rstrip(".")
    return sign + text


# ------------------------------------------------------------------------------ money


def _round_digits(rng: np.random.Generator, k: np.ndarray) -> np.ndarray:
    """Keep 2-10 decimals per value (AWS costs have up to 10)."""
    decimals = rng.choice(np.array([2, 4, 6, 8, 10]), size=k.shape, p=[0.1, 0.15, 0.25, 0.25, 0.25])
    q = 10 ** (10 - decimals)
    return np.floor_divide(k + q // 2, q) * q


def _scaled(k: np.ndarray, numerator: int, denominator: int) -> np.ndarray:
    """``k * numerator / denominator`` rounded to 1e-10 (exact integer arithmetic)."""
    return np.floor_divide(k * numerator + denominator // 2, denominator)


def _dollars(
    k: np.ndarray, valid: np.ndarray | None = None, computed: np.ndarray | None = None
) -> pa.Array:
    """Doubles of integer 1e-10 amounts (correctly rounded: the shortest text is exact).

    ``computed`` rows get a third of their amount as a plain double (16-17 significant
    digits), like values computed in floating point upstream.
    """
    values = k.astype(np.float64) / SCALE
    if computed is not None:
        values[computed] = k[computed].astype(np.float64) / 3 / SCALE
    if valid is None:
        return pa.array(values, pa.float64())
    return pa.array(values, pa.float64(), mask=~valid)


def _fixed_strings(chars: np.ndarray) -> pa.Array:
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(np.ascontiguousarray(chars).tobytes())
    )


def _take(pool: pa.Array, indices: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    idx = pa.array(indices.astype(np.int32), pa.int32(), mask=None if valid is None else ~valid)
    return pool.take(idx)


# ------------------------------------------------------------------------------ chunks


@dataclass
class Chunk:
    """One generated row group: the CUR 2.0 table and the pool indices of its map columns."""

    table: pa.Table
    sku: np.ndarray
    tags: np.ndarray
    account: np.ndarray


def generate_chunk(world: World, rng: np.random.Generator, n: int) -> Chunk:
    """``n`` rows of the CUR 2.0 schema (every column of ``cur2_columns()``)."""
    res = rng.integers(0, len(world.res_sku), size=n)
    sku = world.res_sku[res].copy()
    account = world.res_account[res]
    hour = rng.integers(0, world.hours, size=n)
    kind = rng.choice(len(LINE_ITEM_TYPES), size=n, p=_TYPE_SHARES)
    # Commitments are bought and covered for compute-like SKUs, fees go to Savings Plans.
    sp_fee = (kind == SP_RECURRING) | (kind == SP_UPFRONT)
    sku[sp_fee] = world.sp_sku
    monthly = np.isin(kind, _MONTHLY_TYPES)
    hour[monthly] = 0
    has_resource = world.sku_has_resource[sku] & ~monthly & ~sp_fee
    discount = world.account_discount[account]

    # Usage amounts and on-demand cost (integers of 1e-10 dollars).
    amount = np.round(np.exp(rng.normal(0.0, 1.6, size=n)), 6)
    od = _round_digits(rng, (amount * world.sku_rate_k[sku]).astype(np.int64))
    od = np.minimum(od, 50_000 * SCALE)
    zero = np.zeros(n, dtype=np.int64)
    unblended = od.copy()
    unblended[kind == DISCOUNTED] = 0
    unblended[kind == SP_NEGATION] = -od[kind == SP_NEGATION]
    commitment = _round_digits(rng, rng.integers(2 * SCALE, 40 * SCALE, size=n))
    unblended[kind == SP_RECURRING] = commitment[kind == SP_RECURRING]
    upfront = (rng.integers(1, 80, size=n) * 8760 * SCALE).astype(np.int64)  # up to 692 040
    unblended[kind == SP_UPFRONT] = upfront[kind == SP_UPFRONT]
    ri_fee = _round_digits(rng, rng.integers(50 * SCALE, 5000 * SCALE, size=n))
    unblended[kind == RI_FEE] = ri_fee[kind == RI_FEE]
    fee_with_arn = (kind == FEE) & (rng.random(n) < 0.7)
    fees = _round_digits(rng, rng.integers(1 * SCALE, 60_000 * SCALE, size=n))
    unblended[kind == FEE] = fees[kind == FEE]
    unblended[kind == TAX] = _scaled(od, 8, 100)[kind == TAX]
    unblended[kind == CREDIT] = -od[kind == CREDIT]
    unblended[kind == REFUND] = -_scaled(od, 1, 2)[kind == REFUND]
    usage_kinds = np.isin(kind, (USAGE, DISCOUNTED, SP_COVERED, SP_NEGATION))
    list_cost = np.where(usage_kinds, od, zero)
    blended = unblended.copy()
    blended_shift = (kind == USAGE) & (rng.random(n) < 0.2)
    blended[blended_shift] = _scaled(od, 103, 100)[blended_shift]

    sp_eff = np.where(kind == SP_COVERED, _scaled(od, 72, 100), zero)
    ri_eff = np.where(kind == DISCOUNTED, _scaled(od, 61, 100), zero)
    used = np.where(kind == SP_RECURRING, _scaled(commitment, 87, 100), zero)
    unused_upfront = np.where(kind == RI_FEE, _scaled(ri_fee, 13, 100), zero)
    unused_recurring = np.where(kind == RI_FEE, _scaled(ri_fee, 5, 100), zero)

    def net(values: np.ndarray) -> np.ndarray:
        return _scaled(values, 97, 100)

    sp_rows = np.isin(kind, (SP_COVERED, SP_NEGATION, SP_RECURRING, SP_UPFRONT))
    ri_rows = (kind == DISCOUNTED) | (kind == RI_FEE) | fee_with_arn
    split = (kind == USAGE) & world.sku_compute[sku] & (rng.random(n) < SPLIT_COST_SHARE * 4)
    operation = _take(world.sku_columns["line_item_operation"], sku)
    if split.any():
        split_names = pa.array(["EKSPod-EC2", "ECSTask-EC2"])
        operation = pc.if_else(
            pa.array(split),
            _take(split_names, (rng.random(n) < 0.7).astype(np.int32)),
            operation,
        )

    start_ms = world.period_start_ms + hour.astype(np.int64) * 3_600_000
    end_ms = np.where(monthly, world.period_end_ms, start_ms + 3_600_000)
    ts = pa.timestamp("ms")
    chars = _BASE32[rng.integers(0, 32, size=(n, 52), dtype=np.uint8)]
    sku_col = world.sku_columns
    hours_col = np.where(monthly, world.hours, hour)
    factor = world.sku_factor[sku]
    has_factor = ~np.isnan(factor) & usage_kinds

    columns: dict[str, pa.Array] = {
        "identity_line_item_id": _fixed_strings(chars),
        "identity_time_interval": _take(world.interval_text, hours_col),
        "bill_invoice_id": pa.repeat(pa.scalar("EUINUS24-1234567"), n),
        "bill_invoicing_entity": pa.repeat(pa.scalar("Amazon Web Services, Inc."), n),
        "bill_billing_entity": pa.repeat(pa.scalar("AWS"), n),
        "bill_bill_type": pa.repeat(pa.scalar("Anniversary"), n),
        "bill_payer_account_id": pa.repeat(pa.scalar(world.payer), n),
        "bill_payer_account_name": pa.repeat(pa.scalar("acme-payer"), n),
        "bill_billing_period_start_date": pa.array(np.full(n, world.period_start_ms), ts),
        "bill_billing_period_end_date": pa.array(np.full(n, world.period_end_ms), ts),
        "line_item_usage_account_id": _take(_strings(world.account_ids), account),
        "line_item_usage_account_name": _take(_strings(world.account_names), account),
        "line_item_line_item_type": _take(world.type_names, kind),
        "line_item_usage_start_date": pa.array(start_ms, ts),
        "line_item_usage_end_date": pa.array(end_ms, ts),
        "line_item_product_code": _take(sku_col["line_item_product_code"], sku),
        "line_item_usage_type": _take(sku_col["line_item_usage_type"], sku),
        "line_item_operation": operation,
        "line_item_availability_zone": _take(sku_col["line_item_availability_zone"], sku),
        "line_item_resource_id": _take(world.resource_ids, res, has_resource),
        "line_item_usage_amount": pa.array(np.where(usage_kinds, amount, 1.0)),
        "line_item_normalization_factor": pa.array(factor, mask=~has_factor),
        "line_item_normalized_usage_amount": pa.array(amount * factor, mask=~has_factor),
        "line_item_currency_code": pa.repeat(pa.scalar("USD"), n),
        "line_item_unblended_rate": _take(sku_col["line_item_unblended_rate"], sku),
        "line_item_unblended_cost": _dollars(unblended, computed=rng.random(n) < COMPUTED_SHARE),
        "line_item_blended_rate": _take(sku_col["line_item_unblended_rate"], sku),
        "line_item_blended_cost": _dollars(blended),
        "line_item_net_unblended_rate": _take(sku_col["line_item_unblended_rate"], sku, discount),
        "line_item_net_unblended_cost": _dollars(net(unblended), discount),
        "line_item_line_item_description": _take(sku_col["line_item_line_item_description"], sku),
        "line_item_tax_type": pa.array(np.where(kind == TAX, "Sales tax", ""), pa.string()),
        "line_item_legal_entity": pa.repeat(pa.scalar("Amazon Web Services, Inc."), n),
        "product_product_family": _take(sku_col["product_product_family"], sku),
        "product_instance_type": _take(sku_col["product_instance_type"], sku),
        "product_location": _take(sku_col["product_location"], sku),
        "product_region_code": _take(sku_col["product_region_code"], sku),
        "product_servicecode": _take(sku_col["product_servicecode"], sku),
        "product_sku": _take(sku_col["product_sku"], sku),
        "pricing_public_on_demand_cost": _dollars(
            list_cost, computed=rng.random(n) < COMPUTED_SHARE
        ),
        "pricing_public_on_demand_rate": _take(sku_col["line_item_unblended_rate"], sku),
        "pricing_term": pa.array(
            np.where(kind == DISCOUNTED, "Reserved", np.where(usage_kinds, "OnDemand", "")),
            pa.string(),
        ),
        "pricing_unit": _take(sku_col["pricing_unit"], sku),
        "reservation_reservation_a_r_n": _take(
            world.ri_arns, account % len(world.ri_arns), ri_rows
        ),
        "reservation_amortized_upfront_cost_for_usage": _dollars(
            _scaled(ri_eff, 2, 3), kind == DISCOUNTED
        ),
        "reservation_amortized_upfront_fee_for_billing_period": _dollars(
            _scaled(ri_fee, 40, 100), kind == RI_FEE
        ),
        "reservation_effective_cost": _dollars(ri_eff, kind == DISCOUNTED),
        "reservation_recurring_fee_for_usage": _dollars(_scaled(ri_eff, 1, 3), kind == DISCOUNTED),
        "reservation_unused_amortized_upfront_fee_for_billing_period": _dollars(
            unused_upfront, kind == RI_FEE
        ),
        "reservation_unused_quantity": _dollars(_scaled(ri_fee, 1, 1000), kind == RI_FEE),
        "reservation_unused_recurring_fee": _dollars(unused_recurring, kind == RI_FEE),
        "reservation_net_amortized_upfront_cost_for_usage": _dollars(
            net(_scaled(ri_eff, 2, 3)), discount & (kind == DISCOUNTED)
        ),
        "reservation_net_amortized_upfront_fee_for_billing_period": _dollars(
            net(_scaled(ri_fee, 40, 100)), discount & (kind == RI_FEE)
        ),
        "reservation_net_effective_cost": _dollars(net(ri_eff), discount & (kind == DISCOUNTED)),
        "reservation_net_recurring_fee_for_usage": _dollars(
            net(_scaled(ri_eff, 1, 3)), discount & (kind == DISCOUNTED)
        ),
        "reservation_net_unused_amortized_upfront_fee_for_billing_period": _dollars(
            net(unused_upfront), discount & (kind == RI_FEE)
        ),
        "reservation_net_unused_recurring_fee": _dollars(
            net(unused_recurring), discount & (kind == RI_FEE)
        ),
        "reservation_start_time": pa.array(
            np.where(ri_rows, "2023-06-01T00:00:00.000Z", ""), pa.string()
        ),
        "reservation_end_time": pa.array(
            np.where(ri_rows, "2026-06-01T00:00:00.000Z", ""), pa.string()
        ),
        "savings_plan_savings_plan_a_r_n": _take(world.sp_arns, account % 3, sp_rows),
        "savings_plan_savings_plan_rate": _dollars(
            _scaled(world.sku_rate_k[sku], 72, 100), kind == SP_COVERED
        ),
        "savings_plan_savings_plan_effective_cost": _dollars(sp_eff, kind == SP_COVERED),
        "savings_plan_net_savings_plan_effective_cost": _dollars(
            net(sp_eff), discount & (kind == SP_COVERED)
        ),
        "savings_plan_total_commitment_to_date": _dollars(commitment, kind == SP_RECURRING),
        "savings_plan_used_commitment": _dollars(used, kind == SP_RECURRING),
        "savings_plan_amortized_upfront_commitment_for_billing_period": _dollars(
            _scaled(commitment, 1, 2), kind == SP_RECURRING
        ),
        "savings_plan_net_amortized_upfront_commitment_for_billing_period": _dollars(
            net(_scaled(commitment, 1, 2)), discount & (kind == SP_RECURRING)
        ),
        "savings_plan_recurring_commitment_for_billing_period": _dollars(
            _scaled(commitment, 1, 2), kind == SP_RECURRING
        ),
        "savings_plan_net_recurring_commitment_for_billing_period": _dollars(
            net(_scaled(commitment, 1, 2)), discount & (kind == SP_RECURRING)
        ),
        "savings_plan_start_time": pa.array(
            np.where(sp_rows, "2023-01-01T00:00:00.000Z", ""), pa.string()
        ),
        "savings_plan_end_time": pa.array(
            np.where(sp_rows, "2026-01-01T00:00:00.000Z", ""), pa.string()
        ),
        "savings_plan_offering_type": pa.array(
            np.where(sp_rows, "ComputeSavingsPlans", ""), pa.string()
        ),
        "savings_plan_payment_option": pa.array(
            np.where(sp_rows, "Partial Upfront", ""), pa.string()
        ),
        "savings_plan_purchase_term": pa.array(np.where(sp_rows, "3yr", ""), pa.string()),
        "product": _take(world.product_maps, sku),
        "resource_tags": _take(world.tag_maps, np.where(has_resource, world.res_tags[res], 0)),
        "cost_category": _take(world.cost_category_maps, account),
        "discount": cast(Any, pa.MapArray.from_arrays)(
            pa.array(np.zeros(n + 1, dtype=np.int32)),
            pa.array([], pa.string()),
            pa.array([], pa.float64()),
        ),
    }
    schema = pa.schema([pa.field(name, dtype) for name, dtype in cur2_columns()])
    missing = set(schema.names) ^ set(columns)
    if missing:
        raise AssertionError(f"generator and cur2_columns() disagree on {sorted(missing)}")
    arrays = []
    for field in schema:
        array = columns[field.name]
        if array.type != field.type:
            array = array.cast(field.type)
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, schema=schema)
    tags = np.where(has_resource, world.res_tags[res], 0)
    return Chunk(table=table, sku=sku, tags=tags, account=account)


def csv_table(world: World, chunk: Chunk) -> pa.Table:
    """The chunk as CUR 2.0 CSV text columns: ISO timestamps, shortest numbers, JSON maps."""
    arrays: list[pa.Array] = []
    for field in chunk.table.schema:
        column = chunk.table.column(field.name).combine_chunks()
        if pa.types.is_timestamp(field.type):
            hours = pc.divide(
                pc.subtract(column.cast(pa.int64()), world.period_start_ms), 3_600_000
            )
            column = world.hour_text.take(hours.cast(pa.int32()))
        elif pa.types.is_floating(field.type):
            column = column.cast(pa.string())
        elif field.name == "product":
            column = _take(world.product_json, chunk.sku)
        elif field.name == "resource_tags":
            column = _take(world.tag_json, chunk.tags)
        elif field.name == "cost_category":
            column = _take(world.cost_category_json, chunk.account)
        elif pa.types.is_map(field.type):
            column = pa.repeat(pa.scalar("{}"), len(column))
        arrays.append(column)
    return pa.Table.from_arrays(arrays, names=chunk.table.schema.names)


# ------------------------------------------------------------------------------ files


def rows_per_row_group(world: World, mib: int, seed: int) -> int:
    """Rows that make about ``mib`` MiB of encoded, uncompressed Parquet column data."""
    sample = generate_chunk(world, np.random.default_rng(seed), 50_000).table
    sink = pa.BufferOutputStream()
    pq.write_table(sample, sink, compression="none")
    meta = pq.read_metadata(pa.BufferReader(sink.getvalue()))
    per_row = meta.row_group(0).total_byte_size / sample.num_rows
    return max(10_000, int(mib * 2**20 / per_row) // 1000 * 1000)


def _chunk_sizes(rows: int, per_group: int) -> Iterator[int]:
    left = rows
    while left > 0:
        n = min(per_group, left)
        yield n
        left -= n


def write_parquet(
    world: World, path: Path, rows: int, *, seed: int, row_group_rows: int
) -> GeneratedFile:
    """Write one CUR 2.0 Parquet file, one generated row group at a time."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([pa.field(name, dtype) for name, dtype in cur2_columns()])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(
        tmp,
        schema,
        compression="snappy",
        use_dictionary=True,
        data_page_size=2**20,
        dictionary_pagesize_limit=2**20,
        write_statistics=True,
    ) as writer:
        for n in _chunk_sizes(rows, row_group_rows):
            writer.write_table(generate_chunk(world, rng, n).table, row_group_size=n)
    tmp.rename(path)
    meta = pq.read_metadata(path)
    return GeneratedFile(str(path), "", rows, path.stat().st_size, meta.num_row_groups)


def write_csv_gz(world: World, path: Path, rows: int, *, seed: int) -> GeneratedFile:
    """Write one CUR 2.0 CSV.gz file (header with snake-case names, JSON maps)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with pa.CompressedOutputStream(str(tmp), "gzip") as stream:
        header = True
        for n in _chunk_sizes(rows, 200_000):
            table = csv_table(world, generate_chunk(world, rng, n))
            pacsv.write_csv(table, stream, write_options=pacsv.WriteOptions(include_header=header))
            header = False
    tmp.rename(path)
    return GeneratedFile(str(path), "", rows, path.stat().st_size, 0)


@dataclass
class Dataset:
    """A generated dataset: bucket folders laid out as CUR 2.0 exports."""

    root: Path
    spec: DatasetSpec
    parquet: list[GeneratedFile]
    csv: list[GeneratedFile]

    @property
    def parquet_bucket(self) -> Path:
        """Local "bucket" of the Parquet export (a project's storage folder)."""
        return self.root / "parquet-bucket"

    @property
    def csv_bucket(self) -> Path:
        """Local "bucket" of the CSV.gz export."""
        return self.root / "csv-bucket"


def _data_folder(spec: DatasetSpec) -> str:
    return f"{EXPORT}/data/BILLING_PERIOD={spec.period}"


def ensure_dataset(root: Path, spec: DatasetSpec, *, log: Any = print) -> Dataset:
    """Generate the dataset under ``root`` unless a matching one is already there."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "spec.json"
    folder = _data_folder(spec)
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("spec") == asdict(spec):
            return Dataset(
                root,
                spec,
                [GeneratedFile(**f) for f in saved["parquet"]],
                [GeneratedFile(**f) for f in saved["csv"]],
            )
        marker.unlink()
    for sub in ("parquet-bucket", "csv-bucket"):
        for old in sorted((root / sub).rglob("*"), reverse=True) if (root / sub).exists() else ():
            old.unlink() if old.is_file() else old.rmdir()
    started = time.monotonic()
    resources = max(1000, spec.rows // 20)
    world = World(spec, resources)
    per_group = rows_per_row_group(world, spec.row_group_mib, spec.seed + 7)
    log(
        f"generating {spec.rows:,} rows in {spec.files} Parquet files "
        f"({per_group:,} rows per row group) under {root}"
    )
    parquet = []
    per_file = -(-spec.rows // spec.files)
    for i in range(spec.files):
        rows = min(per_file, spec.rows - i * per_file)
        key = f"{folder}/{EXPORT}-{i + 1:05d}.snappy.parquet"
        info = write_parquet(
            world,
            root / "parquet-bucket" / key,
            rows,
            seed=spec.seed + 100 + i,
            row_group_rows=per_group,
        )
        parquet.append(GeneratedFile(info.path, key, rows, info.size_bytes, info.row_groups))
    csv = []
    if spec.csv_rows:
        key = f"{folder}/{EXPORT}-00001.csv.gz"
        log(f"generating {spec.csv_rows:,} rows of CSV.gz")
        info = write_csv_gz(world, root / "csv-bucket" / key, spec.csv_rows, seed=spec.seed + 100)
        csv.append(GeneratedFile(info.path, key, spec.csv_rows, info.size_bytes, 0))
    marker.write_text(
        json.dumps(
            {
                "spec": asdict(spec),
                "parquet": [asdict(f) for f in parquet],
                "csv": [asdict(f) for f in csv],
            },
            indent=2,
        )
    )
    log(f"generated in {time.monotonic() - started:.1f} s")
    return Dataset(root, spec, parquet, csv)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.generate``: write a dataset without running the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "cur_ray_bench" / "data"
    )
    parser.add_argument("--rows", type=int, default=DatasetSpec.rows)
    parser.add_argument("--files", type=int, default=DatasetSpec.files)
    parser.add_argument("--csv-rows", type=int, default=DatasetSpec.csv_rows)
    parser.add_argument("--row-group-mib", type=int, default=DatasetSpec.row_group_mib)
    parser.add_argument("--seed", type=int, default=DatasetSpec.seed)
    args = parser.parse_args(argv)
    spec = DatasetSpec(
        rows=args.rows,
        files=args.files,
        csv_rows=args.csv_rows,
        row_group_mib=args.row_group_mib,
        seed=args.seed,
    )
    dataset = ensure_dataset(args.out, spec)
    for f in [*dataset.parquet, *dataset.csv]:
        print(
            f"{f.path}: {f.rows:,} rows, {f.size_bytes / 2**20:.1f} MiB, {f.row_groups} row groups"
        )


if __name__ == "__main__":
    main()
