"""Batch A's pure logic: key layouts, manifest validation, the current file set."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cur_ray.domain.billing import SourceFormat
from cur_ray.domain.discovery import (
    Layout,
    ObjectInfo,
    choose_manifest_keys,
    classify_key,
    parse_manifest,
    plan_discovery,
)
from cur_ray.domain.projects import StorageLocation, parse_storage_url
from cur_ray.errors import InvalidInputError, ManifestError

S3 = StorageLocation("s3", "tenant", "cur")
NOV = dt.date(2023, 11, 1)


@pytest.mark.parametrize(
    ("key", "layout", "report", "period", "manifest", "folder"),
    [
        ("cur/rep/20231101-20231201/rep-Manifest.json", Layout.LEGACY, "rep", NOV, True, None),
        ("cur/rep/20231101-20231201/abc/rep-1.csv.gz", Layout.LEGACY, "rep", NOV, False, "abc"),
        ("cur/rep/20231101-20231201/rep-1.csv.zip", Layout.LEGACY, "rep", NOV, False, None),
        (
            "cur/rep/rep/year=2023/month=11/rep-00001.snappy.parquet",
            Layout.LEGACY_PARQUET,
            "rep",
            NOV,
            False,
            None,
        ),
        (
            "cur/exp/data/BILLING_PERIOD=2023-11/exp-00001.snappy.parquet",
            Layout.EXPORT,
            "exp",
            NOV,
            False,
            None,
        ),
        (
            "cur/exp/data/BILLING_PERIOD=2023-11/20231105T0102Z-e1/exp-00001.csv.gz",
            Layout.EXPORT,
            "exp",
            NOV,
            False,
            "20231105T0102Z-e1",
        ),
        (
            "cur/exp/metadata/BILLING_PERIOD=2023-11/exp-Manifest.json",
            Layout.EXPORT,
            "exp",
            NOV,
            True,
            None,
        ),
    ],
)
def test_classify_known_layouts(
    key: str, layout: Layout, report: str, period: dt.date, manifest: bool, folder: str | None
) -> None:
    info = classify_key(key, S3)
    assert info is not None
    assert (info.layout, info.report_name, info.billing_period, info.is_manifest) == (
        layout,
        report,
        period,
        manifest,
    )
    assert info.version_folder == folder


@pytest.mark.parametrize(
    "key",
    [
        "other/rep/20231101-20231201/rep-1.csv.gz",  # outside the prefix
        "cur/rep/20231101-20231201/a/b/rep-1.csv.gz",  # too deep for legacy
        "cur/rep/20231301-20240101/rep-1.csv.gz",  # month 13
        "cur/rep/20231101-20231201/rep-1.txt",
        "cur/x/data/BILLING_PERIOD=2023-11/../../secret.csv",
        "cur/aws-programmatic-access-test-object",
    ],
)
def test_classify_ignores_everything_else(key: str) -> None:
    assert classify_key(key, S3) is None


def _manifest_info(key: str):  # type: ignore[no-untyped-def]
    info = classify_key(key, S3)
    assert info is not None
    return info


def test_parse_legacy_and_export_manifests() -> None:
    key = "cur/rep/20231101-20231201/rep-Manifest.json"
    raw = json.dumps({"assemblyId": "a1", "reportKeys": ["cur/rep/20231101-20231201/a1/r.csv"]})
    manifest = parse_manifest(raw.encode(), key, _manifest_info(key), S3)
    assert (manifest.version_id, manifest.data_keys) == (
        "a1",
        ("cur/rep/20231101-20231201/a1/r.csv",),
    )

    key2 = "cur/exp/metadata/BILLING_PERIOD=2023-11/exp-Manifest.json"
    uri = "s3://tenant/cur/exp/data/BILLING_PERIOD=2023-11/exp-1.parquet"
    raw2 = json.dumps(
        {"executionId": "e1", "dataFiles": [uri], "columns": [{"name": "BilledCost"}]}
    )
    manifest2 = parse_manifest(raw2.encode(), key2, _manifest_info(key2), S3)
    assert manifest2.data_keys == ("cur/exp/data/BILLING_PERIOD=2023-11/exp-1.parquet",)
    assert manifest2.is_focus


@pytest.mark.parametrize(
    "entry",
    [
        "s3://other-bucket/cur/exp/data/BILLING_PERIOD=2023-11/x.parquet",
        "cur/../etc/passwd",
        "curious/x.csv",
        "file:///etc/passwd",
        "https://example.invalid/x.csv",
        "/cur/x.csv",
    ],
)
def test_manifest_keys_outside_location_are_rejected(entry: str) -> None:
    key = "cur/exp/metadata/BILLING_PERIOD=2023-11/exp-Manifest.json"
    raw = json.dumps({"executionId": "e", "dataFiles": [entry]}).encode()
    with pytest.raises(ManifestError, match="outside"):
        parse_manifest(raw, key, _manifest_info(key), S3)


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"reportKeys": "x"}', b"\xff\xfe"])
def test_malformed_manifests_are_rejected(raw: bytes) -> None:
    key = "cur/rep/20231101-20231201/rep-Manifest.json"
    with pytest.raises(ManifestError):
        parse_manifest(raw, key, _manifest_info(key), S3)


def test_period_level_manifest_wins_over_newer_assembly_copy() -> None:
    period_level = "cur/rep/20231101-20231201/rep-Manifest.json"
    copy = "cur/rep/20231101-20231201/a1/rep-Manifest.json"
    old = dt.datetime(2023, 11, 2, tzinfo=dt.UTC)
    new = dt.datetime(2023, 11, 3, tzinfo=dt.UTC)
    chosen = choose_manifest_keys(
        [
            (ObjectInfo(copy, 1, "e", new), _manifest_info(copy)),
            (ObjectInfo(period_level, 1, "e", old), _manifest_info(period_level)),
        ]
    )
    assert chosen[("rep", NOV)].key == period_level


def test_plan_marks_manifest_files_current_and_others_old() -> None:
    location = StorageLocation("s3", "tenant", "")
    mkey = "rep/20231101-20231201/rep-Manifest.json"
    raw = json.dumps(
        {
            "assemblyId": "a2",
            "reportKeys": [
                "rep/20231101-20231201/a2/r-1.csv.gz",
                "rep/20231101-20231201/a2/r-2.csv.gz",
            ],
        }
    )
    info = classify_key(mkey, location)
    assert info is not None
    manifest = parse_manifest(raw.encode(), mkey, info, location)
    objects = [
        ObjectInfo("rep/20231101-20231201/a1/r-1.csv.gz", 1, "e1"),
        ObjectInfo("rep/20231101-20231201/a2/r-1.csv.gz", 1, "e2"),
    ]
    data = [(o, classify_key(o.key, location)) for o in objects]
    plan = plan_discovery(data, {("rep", NOV): manifest})  # type: ignore[arg-type]
    by_key = {f.key: f for f in plan.files}
    assert by_key[objects[0].key].current is False
    assert by_key[objects[0].key].version_id == "a1"
    assert by_key[objects[1].key].current is True
    assert by_key[objects[1].key].version_id == "a2"
    assert by_key[objects[1].key].format is SourceFormat.LEGACY_CSV
    assert plan.missing_keys == ["rep/20231101-20231201/a2/r-2.csv.gz"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://my-bucket/some/prefix/", StorageLocation("s3", "my-bucket", "some/prefix")),
        ("s3://my-bucket", StorageLocation("s3", "my-bucket", "")),
        ("file:///data/cur", StorageLocation("file", "/data/cur", "")),
    ],
)
def test_parse_storage_url(url: str, expected: StorageLocation) -> None:
    assert parse_storage_url(url) == expected


@pytest.mark.parametrize(
    "url", ["s3://Bad_Bucket/x", "file://relative/x", "file:///a/../b", "http://x/y", "s3://b/../x"]
)
def test_parse_storage_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_storage_url(url)
