"""Reading real CUR files (CSV, gzip, zip, Parquet) through pyarrow filesystems."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cur_ray.adapters.readers import (
    UnitResult,
    WorkUnit,
    aggregate_work_unit,
    plan_work_units,
)
from cur_ray.domain.aggregation import PARTIAL_SCHEMA, merge_partials
from cur_ray.domain.billing import SourceFormat
from cur_ray.domain.columns import normalise_column_name
from cur_ray.errors import FileFormatError, StorageAccessError, TransientStorageError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
LEGACY_SAMPLE = DATA / "aws-cur-legacy-sample.csv"
FOCUS_SAMPLE = DATA / "focus-1.0-sample.csv"
TOLERANCE = Decimal("1e-8")
LOCAL = pafs.LocalFileSystem()

# Expected figures: shared/data/README.md.
LEGACY_BY_SERVICE = {
    "AmazonS3": Decimal("1.44056535650"),
    "awskms": Decimal("0.2405555574"),
    "AmazonEFS": Decimal("0.0009452835"),
    "AWSCloudTrail": Decimal("0.000240"),
    "AWSIoT": Decimal("0.00000250"),
}
LEGACY_TOTAL = Decimal("1.68230869740")
LEGACY_BY_CATEGORY = {"Usage": Decimal("1.60230869740"), "Tax": Decimal("0.08")}
LEGACY_DAYS = {
    "2023-11-01": Decimal("0.0830106084"),
    "2023-11-02": Decimal("0.0345302971"),
    "2023-11-03": Decimal("0.0321473750"),
}
FOCUS_TOTAL = Decimal("18.00663861840")
FOCUS_BY_CATEGORY = {"Usage": Decimal("20.62033861840"), "Credit": Decimal("-2.61370000000")}
FOCUS_TOP_SERVICES = {
    "Amazon Elastic Compute Cloud": Decimal("16.04169305050"),
    "Amazon Relational Database Service": Decimal("0.75322708520"),
    "Red Hat OpenShift Service on AWS": Decimal("0.34200000000"),
    "Elastic Load Balancing": Decimal("0.31368424450"),
    "AmazonCloudWatch": Decimal("0.22016958380"),
    "Amazon Virtual Private Cloud": Decimal("0.16554031430"),
}


def assert_close(actual: Decimal | None, expected: Decimal, what: str = "") -> None:
    assert actual is not None, what
    assert abs(actual - expected) < TOLERANCE, f"{what}: {actual} != {expected}"


def _sums(partials: pa.Table, grain: str, key: str) -> dict[Any, Decimal]:
    rows = partials.filter(pc.equal(partials["grain"], pa.scalar(grain)))
    out: dict[Any, Decimal] = {}
    for row in rows.select([key, "unblended_cost"]).to_pylist():
        out[row[key]] = out.get(row[key], Decimal(0)) + row["unblended_cost"]
    return out


@pytest.fixture(scope="module")
def legacy_bytes() -> bytes:
    if not LEGACY_SAMPLE.exists():
        pytest.skip(f"reference data {LEGACY_SAMPLE} is missing (see shared/data/README.md)")
    return LEGACY_SAMPLE.read_bytes()


@pytest.fixture(scope="module")
def focus_aws() -> pa.Table:
    """The 942 AWS rows of the FOCUS sample, every column a string ("NULL" kept)."""
    if not FOCUS_SAMPLE.exists():
        pytest.skip(f"reference data {FOCUS_SAMPLE} is missing (see shared/data/README.md)")
    names = FOCUS_SAMPLE.open(encoding="utf-8").readline().strip().replace('"', "").split(",")
    table = pacsv.read_csv(
        FOCUS_SAMPLE,
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
        ),
    )
    aws = table.filter(pc.equal(table["ProviderName"], pa.scalar("AWS")))
    assert aws.num_rows == 942
    return aws


def write_gzip(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def write_zip(path: Path, data: bytes, member: str = "report-1.csv") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return path


def read_whole(path: Path, key: str | None = None, fs: pafs.FileSystem = LOCAL) -> UnitResult:
    units = plan_work_units(fs, str(path), key or path.name)
    assert len(units) == 1
    return aggregate_work_unit(fs, units[0])


def check_legacy_figures(result: UnitResult) -> None:
    assert result.source_format is SourceFormat.LEGACY_CSV
    assert result.rows_read == 1281
    partials = result.partials
    assert partials.schema == PARTIAL_SCHEMA
    by_service = _sums(partials, "monthly", "service_code")
    assert len(by_service) == 14
    for code, expected in LEGACY_BY_SERVICE.items():
        assert_close(by_service[code], expected, code)
    for code, value in by_service.items():
        if code not in LEGACY_BY_SERVICE:
            assert value == 0, code
    assert_close(sum(by_service.values(), Decimal(0)), LEGACY_TOTAL, "total")
    by_category = _sums(partials, "monthly", "charge_category")
    assert set(by_category) == set(LEGACY_BY_CATEGORY)
    for category, expected in LEGACY_BY_CATEGORY.items():
        assert_close(by_category[category], expected, category)
    by_day = {str(k): v for k, v in _sums(partials, "daily", "usage_date").items()}
    assert len(by_day) == 14
    for day, expected in LEGACY_DAYS.items():
        assert_close(by_day[day], expected, day)
    assert_close(sum(by_day.values(), Decimal(0)), LEGACY_TOTAL, "daily total")
    assert set(partials["usage_account_id"].to_pylist()) == {"123412340534"}
    assert set(partials["currency"].to_pylist()) == {"USD"}
    assert {str(d) for d in partials["billing_period"].to_pylist()} == {"2023-11-01"}
    daily_rows = partials.filter(pc.equal(partials["grain"], pa.scalar("daily")))
    assert pc.sum(daily_rows["line_items"]).as_py() == 1281


# ------------------------------------------------------------------------------ real files


def test_legacy_sample_as_csv_gz(tmp_path: Path, legacy_bytes: bytes) -> None:
    path = write_gzip(tmp_path / "report-00001.csv.gz", legacy_bytes)
    result = read_whole(path, "cur/report/20231101-20231201/report-00001.csv.gz")
    check_legacy_figures(result)
    assert result.bytes_read == path.stat().st_size


def test_legacy_sample_as_zip(tmp_path: Path, legacy_bytes: bytes) -> None:
    check_legacy_figures(read_whole(write_zip(tmp_path / "report-1.csv.zip", legacy_bytes)))


def test_legacy_sample_as_plain_csv(tmp_path: Path, legacy_bytes: bytes) -> None:
    path = tmp_path / "report-1.csv"
    path.write_bytes(b"\xef\xbb\xbf" + legacy_bytes.replace(b"\n", b"\r\n"))  # BOM + CRLF
    check_legacy_figures(read_whole(path))


def check_focus_figures(partials: pa.Table) -> None:
    assert partials.schema == PARTIAL_SCHEMA
    by_service = _sums(partials, "monthly", "service_code")
    assert_close(sum(by_service.values(), Decimal(0)), FOCUS_TOTAL, "total")
    top = sorted(by_service.items(), key=lambda item: item[1], reverse=True)[:6]
    assert [name for name, _ in top] == list(FOCUS_TOP_SERVICES)
    for name, expected in FOCUS_TOP_SERVICES.items():
        assert_close(by_service[name], expected, name)
    by_category = _sums(partials, "monthly", "charge_category")
    assert set(by_category) == set(FOCUS_BY_CATEGORY)
    for category, expected in FOCUS_BY_CATEGORY.items():
        assert_close(by_category[category], expected, category)
    assert_close(sum(_sums(partials, "daily", "usage_date").values(), Decimal(0)), FOCUS_TOTAL)
    assert {str(d) for d in partials["billing_period"].to_pylist()} == {"2024-09-01"}
    assert len(set(partials["usage_account_id"].to_pylist())) == 66
    assert partials.filter(pc.is_valid(partials["blended_cost"])).num_rows == 0


def test_focus_sample_as_csv_gz(tmp_path: Path, focus_aws: pa.Table) -> None:
    buffer = io.BytesIO()
    pacsv.write_csv(focus_aws, buffer)  # quoted header, literal NULL strings
    path = write_gzip(tmp_path / "focus-00001.csv.gz", buffer.getvalue())
    result = read_whole(path, "exports/focus/data/BILLING_PERIOD=2024-09/focus-00001.csv.gz")
    assert result.source_format is SourceFormat.FOCUS_CSV
    assert result.rows_read == 942
    check_focus_figures(result.partials)


def _typed_focus(focus_aws: pa.Table) -> pa.Table:
    costs = {"BilledCost", "EffectiveCost", "ListCost"}
    stamps = {"BillingPeriodStart", "ChargePeriodStart"}
    columns: list[Any] = []
    for name in focus_aws.column_names:
        column: Any = focus_aws[name]
        column = pc.if_else(
            pc.equal(column, pa.scalar("NULL")), pa.scalar(None, pa.string()), column
        )
        if name in stamps:
            column = pc.assume_timezone(pc.strptime(column, "%Y-%m-%d %H:%M:%S", "s"), "UTC")
        elif name in costs:
            column = column.cast(pa.float64())
        columns.append(column)
    return pa.table(columns, names=focus_aws.column_names)


def test_focus_sample_as_typed_parquet_in_units(tmp_path: Path, focus_aws: pa.Table) -> None:
    path = tmp_path / "focus-00001.snappy.parquet"
    pq.write_table(_typed_focus(focus_aws), path, row_group_size=200)
    units = plan_work_units(LOCAL, str(path), path.name, target_rows=400)
    assert [u.row_groups for u in units] == [(0, 1), (2, 3), (4,)]
    assert [u.rows for u in units] == [400, 400, 142]
    results = [aggregate_work_unit(LOCAL, u) for u in units]
    assert {r.source_format for r in results} == {SourceFormat.FOCUS_PARQUET}
    assert sum(r.rows_read for r in results) == 942
    merged = merge_partials([r.partials for r in results])
    check_focus_figures(merged)
    assert merged.equals(aggregate_work_unit(LOCAL, WorkUnit(str(path), path.name)).partials)


def _legacy_parquet(legacy_bytes: bytes) -> pa.Table:
    """The legacy sample as Athena-style Parquet: snake names, strings, zoned timestamps."""
    header = legacy_bytes.split(b"\n", 1)[0].decode().split(",")
    table = pacsv.read_csv(
        io.BytesIO(legacy_bytes),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
    )
    table = table.rename_columns([normalise_column_name(n) for n in table.column_names])
    index = table.schema.get_field_index("line_item_usage_start_date")
    stamps = table["line_item_usage_start_date"].cast(pa.timestamp("ms", "UTC"))
    return table.set_column(index, "line_item_usage_start_date", stamps)


def test_parquet_row_groups_are_planned_in_units_and_merge_to_the_file(
    tmp_path: Path, legacy_bytes: bytes
) -> None:
    path = tmp_path / "report-1.snappy.parquet"
    pq.write_table(_legacy_parquet(legacy_bytes), path, row_group_size=100)
    units = plan_work_units(
        LOCAL, str(path), "cur/report/report/year=2023/month=11/x.parquet", target_rows=250
    )
    assert len(units) == 7
    assert [g for u in units for g in u.row_groups or ()] == list(range(13))
    assert all(u.rows <= 250 for u in units)
    assert sum(u.rows for u in units) == 1281
    results = [aggregate_work_unit(LOCAL, u) for u in units]
    assert {r.source_format for r in results} == {SourceFormat.LEGACY_PARQUET}
    merged = merge_partials([r.partials for r in results])
    whole = aggregate_work_unit(LOCAL, WorkUnit(str(path), path.name))
    assert merged.equals(whole.partials)
    check_legacy_figures(
        UnitResult(merged, sum(r.rows_read for r in results), 0, SourceFormat.LEGACY_CSV)
    )
    assert 0 < whole.bytes_read < path.stat().st_size  # only the needed columns


def test_cur2_parquet_with_product_map(tmp_path: Path) -> None:
    table = pa.table(
        {
            "bill_billing_period_start_date": pa.array(
                ["2024-05-01T00:00:00Z"] * 2, pa.string()
            ).cast(pa.timestamp("us", "UTC")),
            "bill_payer_account_name": ["payer", "payer"],
            "line_item_usage_start_date": pa.array(
                ["2024-05-03T01:00:00Z", "2024-05-04T01:00:00Z"]
            ).cast(pa.timestamp("us", "UTC")),
            "line_item_usage_account_id": ["012345678901", "012345678901"],
            "line_item_line_item_type": ["Usage", "EdpDiscount"],
            "line_item_product_code": ["AmazonEC2", "AmazonEC2"],
            "line_item_currency_code": ["USD", "USD"],
            "line_item_unblended_cost": [1.25, -0.125],
            "line_item_net_unblended_cost": [1.0, -0.1],
            "product": pa.array(
                [[("product_name", "Amazon Elastic Compute Cloud")], []],
                pa.map_(pa.string(), pa.string()),
            ),
        }
    )
    path = tmp_path / "x-00001.snappy.parquet"
    pq.write_table(table, path)
    result = read_whole(path)
    assert result.source_format is SourceFormat.CUR2_PARQUET
    partials = result.partials
    months = partials.filter(pc.equal(partials["grain"], pa.scalar("monthly"))).to_pylist()
    assert len(months) == 1
    assert months[0]["service_name"] == "Amazon Elastic Compute Cloud"
    assert months[0]["unblended_cost"] == Decimal("1.125")
    assert months[0]["net_unblended_cost"] == Decimal("0.9")
    assert months[0]["net_amortized_cost"] == Decimal("0.9")


# ----------------------------------------------------------------------------------- errors


def test_random_bytes_parquet_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(os.urandom(4096))
    key = "cur/report/year=2024/month=1/broken.parquet"
    with pytest.raises(FileFormatError, match=rf"^{key}: not a Parquet file \(") as caught:
        aggregate_work_unit(LOCAL, WorkUnit(str(path), key))
    assert isinstance(caught.value.__cause__, Exception)
    with pytest.raises(FileFormatError, match=key):
        plan_work_units(LOCAL, str(path), key)


def test_truncated_gzip_is_a_format_error(tmp_path: Path, legacy_bytes: bytes) -> None:
    whole = gzip.compress(legacy_bytes)
    path = tmp_path / "report-1.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FileFormatError, match=r"report-1\.csv\.gz: .*[Tt]runcated"):
        read_whole(path, "cur/report-1.csv.gz")


def test_unrelated_csv_header_is_a_format_error(tmp_path: Path) -> None:
    path = write_gzip(tmp_path / "people.csv.gz", b"name,email,amount\nann,a@b.c,3\n")
    with pytest.raises(FileFormatError, match=r"^cur/people\.csv\.gz: unrecognised CUR CSV"):
        read_whole(path, "cur/people.csv.gz")


def test_malformed_csv_row_is_a_format_error(tmp_path: Path, legacy_bytes: bytes) -> None:
    lines = legacy_bytes.split(b"\n")
    lines.insert(5, b"a,b,c")
    path = write_gzip(tmp_path / "bad.csv.gz", b"\n".join(lines))
    with pytest.raises(FileFormatError, match=r"^bad\.csv\.gz: .*CSV parse error"):
        read_whole(path)


def test_header_only_csv_is_empty_not_an_error(tmp_path: Path, legacy_bytes: bytes) -> None:
    header = legacy_bytes.split(b"\n", 1)[0] + b"\n"
    result = read_whole(write_gzip(tmp_path / "empty.csv.gz", header))
    assert result.rows_read == 0
    assert result.partials.num_rows == 0
    assert result.partials.schema == PARTIAL_SCHEMA
    assert result.source_format is SourceFormat.LEGACY_CSV


def test_empty_file_and_bad_archives(tmp_path: Path) -> None:
    (tmp_path / "nothing.csv").write_bytes(b"")
    with pytest.raises(FileFormatError, match=r"nothing\.csv: empty file"):
        read_whole(tmp_path / "nothing.csv")
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(FileFormatError, match=r"fake\.zip: "):
        read_whole(tmp_path / "fake.zip")
    no_csv = write_zip(tmp_path / "no-csv.zip", b"x", member="readme.txt")
    with pytest.raises(FileFormatError, match=r"holds no \.csv file"):
        read_whole(no_csv)
    with pytest.raises(FileFormatError, match="unsupported file type"):
        plan_work_units(LOCAL, str(tmp_path / "x.json"), "x.json")


def test_missing_object_is_an_access_error(tmp_path: Path) -> None:
    with pytest.raises(StorageAccessError, match=r"gone\.csv\.gz"):
        aggregate_work_unit(LOCAL, WorkUnit(str(tmp_path / "gone.csv.gz"), "gone.csv.gz"))
    with pytest.raises(StorageAccessError, match=r"gone\.parquet"):
        plan_work_units(LOCAL, str(tmp_path / "gone.parquet"), "gone.parquet")


class _FailingFile(io.RawIOBase):
    """A stream that fails after ``limit`` bytes, like a connection reset mid-body."""

    def __init__(self, data: bytes, limit: int, error: OSError) -> None:
        self._data = io.BytesIO(data)
        self._left = limit
        self._error = error

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise self._error
        chunk = self._data.read(min(self._left, size if size >= 0 else self._left))
        self._left -= len(chunk)
        return chunk


class _FaultyHandler(pafs.FileSystemHandler):
    """A real pyarrow filesystem over local files whose reads fail as configured."""

    def __init__(self, make_stream: Callable[[str], Any]) -> None:
        self._local = LOCAL
        self._make_stream = make_stream

    def get_type_name(self) -> str:
        return "faulty"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: str | list[str]) -> list[pafs.FileInfo]:
        return self._local.get_file_info(paths if isinstance(paths, list) else [paths])

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._local.get_file_info(selector)

    def open_input_stream(self, path: str) -> Any:
        return self._make_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self._make_stream(path)

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _unsupported
    delete_file = move = copy_file = _unsupported
    open_output_stream = open_append_stream = _unsupported


def _raising(error: OSError) -> Callable[[str], Any]:
    def make(path: str) -> Any:
        raise error

    return make


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), TransientStorageError),
        (TimeoutError("read timed out"), TransientStorageError),
        (
            OSError(
                "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, "
                "Failure when receiving data from the peer"
            ),
            TransientStorageError,
        ),
        (
            OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce"),
            TransientStorageError,
        ),
        (
            OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"),
            StorageAccessError,
        ),
        (PermissionError(13, "Permission denied"), StorageAccessError),
    ],
)
def test_storage_errors_on_open_are_classified(
    tmp_path: Path, error: OSError, expected: type[Exception]
) -> None:
    fs = pafs.PyFileSystem(_FaultyHandler(_raising(error)))
    unit = WorkUnit(str(tmp_path / "r.csv.gz"), "cur/r.csv.gz")
    with pytest.raises(expected, match=r"^cur/r\.csv\.gz: ") as caught:
        aggregate_work_unit(fs, unit)
    assert caught.value.__cause__ is not None


def test_connection_reset_mid_stream_is_transient(tmp_path: Path, legacy_bytes: bytes) -> None:
    data = gzip.compress(legacy_bytes * 4)
    reset = ConnectionResetError(104, "Connection reset by peer")
    fs = pafs.PyFileSystem(
        _FaultyHandler(lambda _: pa.PythonFile(_FailingFile(data, len(data) // 2, reset), mode="r"))
    )
    with pytest.raises(TransientStorageError, match="reset by peer"):
        aggregate_work_unit(fs, WorkUnit(str(tmp_path / "r.csv.gz"), "r.csv.gz"))


# ------------------------------------------------------------------------- bounded memory

_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    from cur_ray.adapters.readers import WorkUnit, aggregate_work_unit

    big, small = sys.argv[1], sys.argv[2]
    fs = pafs.LocalFileSystem()
    aggregate_work_unit(fs, WorkUnit(small, small))  # warm up imports and memory pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = aggregate_work_unit(fs, WorkUnit(big, big))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    daily = result.partials.filter(pc.equal(result.partials["grain"], pa.scalar("daily")))
    print(json.dumps({
        "growth_bytes": (after - before) * 1024,
        "rows_read": result.rows_read,
        "line_items": sum(daily["line_items"].to_pylist()),
        "total": str(sum(daily["unblended_cost"].to_pylist())),
    }))
    """
)

_BIG_HEADER = (
    "identity/LineItemId,bill/BillingPeriodStartDate,lineItem/UsageAccountId,"
    "lineItem/LineItemType,lineItem/UsageStartDate,lineItem/UsageEndDate,lineItem/ProductCode,"
    "lineItem/Operation,lineItem/CurrencyCode,lineItem/UnblendedCost,lineItem/BlendedCost,"
    "lineItem/LineItemDescription,product/ProductName,pricing/publicOnDemandCost\n"
)


def _big_chunk(rows: int) -> tuple[bytes, Decimal]:
    services = [
        ("AmazonEC2", "Amazon Elastic Compute Cloud"),
        ("AmazonS3", "Amazon Simple Storage Service"),
        ("awskms", "AWS Key Management Service"),
    ]
    description = "$0.0116 per On Demand Linux t3.micro Instance Hour " * 3
    lines = []
    total = Decimal(0)
    for i in range(rows):
        day, hour = 1 + i % 30, i % 24
        code, name = services[i % 3]
        cost = f"0.{(i * 7919) % 10**9:09d}"
        total += Decimal(cost)
        lines.append(
            f"id{i},2023-11-01T00:00:00.000Z,{100000000000 + i % 40},Usage,"
            f"2023-11-{day:02d}T{hour:02d}:00:00.000Z,2023-11-{day:02d}T{hour:02d}:59:59.000Z,"
            f'{code},RunInstances,USD,{cost},{cost},"{description}",{name},{cost}\n'
        )
    return "".join(lines).encode(), total


@pytest.mark.slow
def test_streaming_a_large_csv_gz_keeps_memory_bounded(tmp_path: Path) -> None:
    chunk, chunk_total = _big_chunk(100_000)
    repeats = 20
    big = tmp_path / "big.csv.gz"
    with gzip.open(big, "wb", compresslevel=1) as out:
        out.write(_BIG_HEADER.encode())
        for _ in range(repeats):
            out.write(chunk)
    uncompressed = len(_BIG_HEADER) + len(chunk) * repeats
    small = write_gzip(
        tmp_path / "small.csv.gz",
        _BIG_HEADER.encode() + b"".join(chunk.splitlines(keepends=True)[:10]),
    )

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(big), str(small)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    probe = json.loads(run.stdout)
    assert probe["rows_read"] == 2_000_000
    assert probe["line_items"] == 2_000_000
    assert Decimal(probe["total"]) == chunk_total * repeats
    # Streaming: peak RSS growth is a fraction of the ~700 MB of CSV text.
    assert uncompressed > 600 * 2**20
    assert probe["growth_bytes"] < uncompressed * 0.4, (probe, uncompressed)
