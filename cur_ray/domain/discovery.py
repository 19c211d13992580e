"""Batch A's pure logic: recognise CUR keys, parse manifests, decide the current file set.

Key layouts (relative to the connection's prefix), SPEC §3:

* legacy CSV      ``<report>/<YYYYMMDD-YYYYMMDD>/[<assemblyId>/]<report>-<n>.csv.gz``,
                  manifest ``<report>/<YYYYMMDD-YYYYMMDD>/<report>-Manifest.json``
* legacy Parquet  ``<report>/<report>/year=YYYY/month=M/<report>-<n>.snappy.parquet``
* CUR 2.0 / FOCUS ``<export>/data/BILLING_PERIOD=YYYY-MM/[<execution>/]<file>``,
                  manifest ``<export>/metadata/BILLING_PERIOD=YYYY-MM/[…/]<export>-Manifest.json``

A manifest is untrusted input: every key it names must lie inside the connection's bucket
and prefix, or the manifest is rejected.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit

from cur_ray.domain.billing import SourceFormat
from cur_ray.domain.projects import StorageLocation
from cur_ray.errors import ManifestError

_RANGE_RE = re.compile(r"^(\d{4})(\d{2})01-(\d{8})$")
_PERIOD_RE = re.compile(r"^BILLING_PERIOD=(\d{4})-(\d{2})$")
_YEAR_RE = re.compile(r"^year=(\d{4})$")
_MONTH_RE = re.compile(r"^month=(\d{1,2})$")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".gz", ".zip")
_PARQUET_SUFFIXES = (".parquet",)
MANIFEST_SUFFIX = "Manifest.json"


class Layout(StrEnum):
    """Which kind of export a key belongs to."""

    LEGACY = "legacy"
    LEGACY_PARQUET = "legacy-parquet"
    EXPORT = "export"


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    etag: str
    last_modified: dt.datetime | None = None


@dataclass(frozen=True)
class KeyInfo:
    """What a key's position tells about it."""

    layout: Layout
    report_name: str
    billing_period: dt.date
    is_manifest: bool
    version_folder: str | None  # assembly / execution folder between period and file
    is_parquet: bool = False


@dataclass(frozen=True)
class Manifest:
    """The parts of a CUR manifest that decide the current version and its files."""

    key: str
    report_name: str
    billing_period: dt.date
    version_id: str
    data_keys: tuple[str, ...]
    columns: tuple[str, ...] = ()

    @property
    def is_focus(self) -> bool:
        """True when the manifest's column list is FOCUS's."""
        return "BilledCost" in self.columns


@dataclass(frozen=True)
class DiscoveredFile:
    """A data file and what Batch A decided about it."""

    key: str
    size: int
    etag: str
    last_modified: dt.datetime | None
    report_name: str
    billing_period: dt.date
    format: SourceFormat
    version_id: str | None
    current: bool


@dataclass(frozen=True)
class CurrentVersion:
    """A version that a manifest names current for (report, period)."""

    report_name: str
    billing_period: dt.date
    version_id: str
    manifest_key: str


@dataclass
class DiscoveryPlan:
    """The outcome of planning one project's listing."""

    files: list[DiscoveredFile] = field(default_factory=list)
    versions: list[CurrentVersion] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)  # named by a manifest, not listed


def classify_key(key: str, location: StorageLocation) -> KeyInfo | None:
    """Recognise a CUR data file or manifest by its key; ``None`` for anything else."""
    if not location.contains_key(key):
        return None
    parts = key[len(location.list_prefix) :].split("/")
    name = parts[-1]
    is_manifest = name.endswith(MANIFEST_SUFFIX)
    is_parquet = name.endswith(_PARQUET_SUFFIXES)
    if not (is_manifest or is_parquet or name.endswith(_CSV_SUFFIXES)):
        return None
    folders = parts[:-1]
    for index, folder in enumerate(folders):
        period_match = _PERIOD_RE.match(folder)
        if period_match and index >= 2 and folders[index - 1] in ("data", "metadata"):
            period = _month(int(period_match[1]), int(period_match[2]))
            if period is None:
                return None
            inner = folders[index + 1 :]
            return KeyInfo(
                layout=Layout.EXPORT,
                report_name=folders[index - 2],
                billing_period=period,
                is_manifest=is_manifest and folders[index - 1] == "metadata",
                version_folder="/".join(inner) or None,
                is_parquet=is_parquet,
            )
        range_match = _RANGE_RE.match(folder)
        if range_match and index >= 1:
            period = _month(int(range_match[1]), int(range_match[2]))
            inner = folders[index + 1 :]
            if period is None or len(inner) > 1:
                return None
            return KeyInfo(
                layout=Layout.LEGACY,
                report_name=folders[index - 1],
                billing_period=period,
                is_manifest=is_manifest,
                version_folder=inner[0] if inner else None,
                is_parquet=is_parquet,
            )
        year_match = _YEAR_RE.match(folder)
        if year_match and index >= 1 and index + 1 < len(folders) and not is_manifest:
            month_match = _MONTH_RE.match(folders[index + 1])
            period = _month(int(year_match[1]), int(month_match[1])) if month_match else None
            if period is None or not is_parquet:
                return None
            return KeyInfo(
                layout=Layout.LEGACY_PARQUET,
                report_name=folders[index - 1],
                billing_period=period,
                is_manifest=False,
                version_folder=None,
                is_parquet=True,
            )
    return None


def _month(year: int, month: int) -> dt.date | None:
    if not (1 <= month <= 12 and 2000 <= year <= 2200):
        return None
    return dt.date(year, month, 1)


def parse_manifest(raw: bytes, key: str, info: KeyInfo, location: StorageLocation) -> Manifest:
    """Parse a legacy or CUR 2.0/FOCUS manifest and validate every key it names.

    Raises :class:`ManifestError` for malformed JSON or keys outside the bucket/prefix.
    """
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: json.loads on a hostile, deeply nested document.
        raise ManifestError(f"manifest {key}: not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(document, dict):
        raise ManifestError(f"manifest {key}: expected a JSON object")
    version_id = document.get("assemblyId") or document.get("executionId")
    if not isinstance(version_id, str) or not version_id.strip():
        # Tolerate a missing id: the manifest's own key identifies the version.
        version_id = info.version_folder or key
    raw_keys = document.get("reportKeys")
    if raw_keys is None:
        raw_keys = document.get("dataFiles")
    if raw_keys is None:
        raw_keys = []
    if not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys):
        raise ManifestError(f"manifest {key}: reportKeys/dataFiles must be a list of strings")
    data_keys = tuple(_validated_data_key(k, key, location) for k in raw_keys)
    return Manifest(
        key=key,
        report_name=info.report_name,
        billing_period=info.billing_period,
        version_id=version_id.strip()[:256],
        data_keys=data_keys,
        columns=_column_names(document.get("columns")),
    )


def _column_names(columns: Any) -> tuple[str, ...]:
    if not isinstance(columns, list):
        return ()
    names = []
    for column in columns:
        if isinstance(column, dict) and isinstance(column.get("name"), str):
            names.append(column["name"])
    return tuple(names)


def _validated_data_key(raw: str, manifest_key: str, location: StorageLocation) -> str:
    """Turn a manifest entry (relative key, s3:// or file:// URI) into a key of ``location``."""
    reject = ManifestError(
        f"manifest {manifest_key}: names {raw[:200]!r}, outside the connection's bucket and prefix"
    )
    if "://" in raw:
        parts = urlsplit(raw)
        path = unquote(parts.path)
        if parts.scheme == "s3" and location.scheme == "s3":
            if parts.netloc != location.bucket:
                raise reject
            key = path.lstrip("/")
        elif parts.scheme == "file" and location.scheme == "file":
            root = location.bucket.rstrip("/") + "/"
            if parts.netloc not in ("", "localhost") or not path.startswith(root):
                raise reject
            key = path[len(root) :]
        else:
            raise reject
    else:
        key = raw
    if not location.contains_key(key):
        raise reject
    return key


def choose_manifest_keys(
    manifests: Iterable[tuple[ObjectInfo, KeyInfo]],
) -> dict[tuple[str, dt.date], ObjectInfo]:
    """Pick, per (report, period), the manifest that names the current version.

    The period-level manifest wins (legacy CUR rewrites it on every delivery; assembly
    folders keep stale copies); otherwise the most recently modified one.
    """
    chosen: dict[tuple[str, dt.date], tuple[tuple[int, dt.datetime], ObjectInfo]] = {}
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    for obj, info in manifests:
        rank = (0 if info.version_folder else 1, obj.last_modified or epoch)
        slot = (info.report_name, info.billing_period)
        if slot not in chosen or rank > chosen[slot][0]:
            chosen[slot] = (rank, obj)
    return {slot: obj for slot, (_, obj) in chosen.items()}


def _format_for(info: KeyInfo, manifest: Manifest | None) -> SourceFormat:
    if info.layout is Layout.LEGACY:
        return SourceFormat.LEGACY_PARQUET if info.is_parquet else SourceFormat.LEGACY_CSV
    if info.layout is Layout.LEGACY_PARQUET:
        return SourceFormat.LEGACY_PARQUET
    focus = manifest is not None and manifest.is_focus
    if info.is_parquet:
        return SourceFormat.FOCUS_PARQUET if focus else SourceFormat.CUR2_PARQUET
    return SourceFormat.FOCUS_CSV if focus else SourceFormat.CUR2_CSV


def plan_discovery(
    data_files: Iterable[tuple[ObjectInfo, KeyInfo]],
    manifests: dict[tuple[str, dt.date], Manifest],
) -> DiscoveryPlan:
    """Decide, for every listed data file, its version and whether it is current.

    With a manifest for (report, period), exactly the files it names are current and carry
    its version id; other files of that (report, period) belong to older versions. Without
    one (data-only folders), every present file is current and unversioned.
    """
    plan = DiscoveryPlan(
        versions=[
            CurrentVersion(m.report_name, m.billing_period, m.version_id, m.key)
            for m in manifests.values()
        ]
    )
    named: dict[str, Manifest] = {k: m for m in manifests.values() for k in m.data_keys}
    seen: set[str] = set()
    for obj, info in data_files:
        seen.add(obj.key)
        manifest = manifests.get((info.report_name, info.billing_period))
        if manifest is None:
            current, version_id = True, None
        elif named.get(obj.key) is manifest:
            current, version_id = True, manifest.version_id
        else:
            current, version_id = False, info.version_folder or "unknown"
        plan.files.append(
            DiscoveredFile(
                key=obj.key,
                size=obj.size,
                etag=obj.etag,
                last_modified=obj.last_modified,
                report_name=info.report_name,
                billing_period=info.billing_period,
                format=_format_for(info, manifest),
                version_id=version_id,
                current=current,
            )
        )
    plan.missing_keys = sorted(set(named) - seen)
    return plan
