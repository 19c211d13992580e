"""Read CUR data files through a ``pyarrow.fs.FileSystem`` and aggregate them.

A file is split into :class:`WorkUnit` s (Parquet: groups of row groups; CSV: the whole
file, streamed). :func:`aggregate_work_unit` reads only the needed columns of one unit,
batch by batch, so memory stays bounded whatever the file size, and returns its partial
aggregates (:data:`cur_ray.domain.aggregation.PARTIAL_SCHEMA`).

Errors are translated: unreadable content -> :class:`FileFormatError`; missing object or
denied access -> :class:`StorageAccessError`; other I/O failures (resets, throttling,
timeouts) -> :class:`TransientStorageError`. There are no retries here; the caller retries
transient errors.
"""

from __future__ import annotations

import csv
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Literal, cast

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cur_ray.domain.aggregation import PARTIAL_SCHEMA, aggregate_batches
from cur_ray.domain.billing import SourceFormat
from cur_ray.domain.columns import columns_to_read, detect_format
from cur_ray.errors import (
    CurRayError,
    FileFormatError,
    StorageAccessError,
    TransientStorageError,
)

__all__ = [
    "UnitResult",
    "WorkUnit",
    "aggregate_work_unit",
    "plan_work_units",
]

CSV_BLOCK_SIZE = 2 * 1024 * 1024
PARQUET_BATCH_ROWS = 128 * 1024
_MAX_HEADER_BYTES = 1024 * 1024
_NULL_VALUES = ["", "NULL"]

# Canonical columns worth reading dictionary-encoded from Parquet (repetitive strings).
_DICTIONARY_COLUMNS = frozenset(
    {
        "bill_billing_period_start_date",
        "line_item_usage_start_date",
        "line_item_usage_account_id",
        "line_item_line_item_type",
        "line_item_product_code",
        "line_item_currency_code",
        "line_item_operation",
        "product_product_name",
        "BillingPeriodStart",
        "ChargePeriodStart",
        "SubAccountId",
        "ServiceName",
        "x_ServiceCode",
        "x_Operation",
        "ChargeCategory",
        "BillingCurrency",
    }
)

_FileKind = Literal["parquet", "csv", "gzip", "zip"]


@dataclass(frozen=True)
class WorkUnit:
    """One task's share of a file.

    ``path`` is the filesystem path (``bucket/key`` on ``S3FileSystem``, an absolute path
    locally); ``key`` is the object key, used for format detection and messages;
    ``row_groups`` selects Parquet row groups (``None``: the whole file; a CSV is always
    one unit); ``rows`` is an estimate (0 when unknown).
    """

    path: str
    key: str
    row_groups: tuple[int, ...] | None = None
    rows: int = 0


@dataclass
class UnitResult:
    """Partial aggregates of one work unit and what reading it cost."""

    partials: pa.Table
    rows_read: int
    bytes_read: int
    source_format: SourceFormat


# ----------------------------------------------------------------------------------- errors

_ACCESS_PATTERNS = re.compile(
    r"ACCESS_DENIED|AccessDenied|Access Denied|Forbidden|HTTP status 40[13]\b|"
    r"NO_SUCH_BUCKET|NoSuchBucket|NO_SUCH_KEY|NoSuchKey|INVALID_ACCESS_KEY_ID|"
    r"InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|SignatureDoesNotMatch|Path does not exist"
)
_STORAGE_PATTERNS = re.compile(
    r"AWS Error|curl|[Cc]onnection|[Tt]imed? ?out|[Rr]eset by peer|[Tt]hrottl|SlowDown|"
    r"HTTP status 5\d\d|Broken pipe|[Nn]etwork|[Tt]emporar"
)
_FORMAT_PATTERNS = re.compile(
    r"[Tt]runcated|zlib|gzip|inflate|[Dd]ecompress|[Cc]ompressed|snappy|zstd|lz4|brotli|"
    r"[Cc]orrupt|thrift|[Pp]arquet|[Uu]nexpected end|[Mm]agic|[Ii]nvalid|deserializ"
)


def _classify_os_error(key: str, exc: OSError) -> CurRayError:
    message = str(exc) or type(exc).__name__
    if _ACCESS_PATTERNS.search(message):
        return StorageAccessError(f"{key}: access denied or object missing ({message})")
    if _STORAGE_PATTERNS.search(message):
        return TransientStorageError(f"{key}: storage read failed ({message})")
    if _FORMAT_PATTERNS.search(message):
        return FileFormatError(f"{key}: cannot decode file ({message})")
    return TransientStorageError(f"{key}: storage read failed ({message})")


@contextmanager
def _translated_errors(key: str, what: str) -> Iterator[None]:
    """Translate driver errors into the cur_ray tree, always with the key in the message."""
    try:
        yield
    except FileFormatError as exc:
        if exc.message.startswith(f"{key}:"):
            raise
        raise FileFormatError(f"{key}: {exc.message}") from exc
    except CurRayError:
        raise
    except FileNotFoundError as exc:
        raise StorageAccessError(f"{key}: object not found ({exc})") from exc
    except PermissionError as exc:
        raise StorageAccessError(f"{key}: access denied ({exc})") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise FileFormatError(f"{key}: not a valid {what} ({exc})") from exc
    except OSError as exc:
        raise _classify_os_error(key, exc) from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise FileFormatError(f"{key}: not a valid {what} ({exc})") from exc


def _file_kind(key: str) -> _FileKind:
    lower = key.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(".gz"):
        return "gzip"
    if lower.endswith(".csv"):
        return "csv"
    raise FileFormatError(
        f"{key}: unsupported file type (expected .parquet, .csv, .csv.gz, .gz or .zip)"
    )


# --------------------------------------------------------------------------------- planning


def plan_work_units(
    fs: pafs.FileSystem, path: str, key: str, *, target_rows: int = 1_000_000
) -> list[WorkUnit]:
    """Split one file into work units of about ``target_rows`` rows.

    Parquet: reads only the footer and groups consecutive row groups (a unit exceeds
    ``target_rows`` only when a single row group does). CSV (``.csv``, ``.csv.gz``, ``.gz``,
    ``.zip``): one unit, streamed.
    """
    if target_rows <= 0:
        raise ValueError("target_rows must be positive")
    if _file_kind(key) != "parquet":
        return [WorkUnit(path=path, key=key)]
    with _translated_errors(key, "Parquet file"), fs.open_input_file(path) as source:
        metadata = pq.ParquetFile(source).metadata
    units: list[WorkUnit] = []
    group: list[int] = []
    rows = 0
    for index in range(metadata.num_row_groups):
        n = metadata.row_group(index).num_rows
        if group and rows + n > target_rows:
            units.append(WorkUnit(path, key, tuple(group), rows))
            group, rows = [], 0
        group.append(index)
        rows += n
    if group:
        units.append(WorkUnit(path, key, tuple(group), rows))
    return units or [WorkUnit(path=path, key=key)]


# ---------------------------------------------------------------------------------- reading


class _Counter:
    """Counts the rows of the batches passing through."""

    def __init__(self) -> None:
        self.rows = 0

    def renamed(
        self, batches: Iterable[pa.RecordBatch], mapping: Mapping[str, str]
    ) -> Iterator[pa.RecordBatch]:
        sources = list(mapping.values())
        canonical = list(mapping)
        for batch in batches:
            self.rows += batch.num_rows
            yield batch.select(sources).rename_columns(canonical)


def _aggregate_parquet(fs: pafs.FileSystem, unit: WorkUnit) -> UnitResult:
    counter = _Counter()
    with _translated_errors(unit.key, "Parquet file"), fs.open_input_file(unit.path) as source:
        try:
            metadata = pq.ParquetFile(source).metadata
        except pa.ArrowInvalid as exc:
            raise FileFormatError(f"{unit.key}: not a Parquet file ({exc})") from exc
        schema = metadata.schema.to_arrow_schema()
        fmt = detect_format(schema.names, parquet=True)
        mapping = columns_to_read(schema.names, fmt)
        dictionary = [
            src
            for canonical, src in mapping.items()
            if canonical in _DICTIONARY_COLUMNS and pa.types.is_string(schema.field(src).type)
        ]
        parquet = pq.ParquetFile(
            source, metadata=metadata, read_dictionary=dictionary, pre_buffer=True
        )
        row_groups = (
            list(unit.row_groups)
            if unit.row_groups is not None
            else list(range(metadata.num_row_groups))
        )
        for index in row_groups:
            if not 0 <= index < metadata.num_row_groups:
                raise FileFormatError(
                    f"{unit.key}: row group {index} does not exist "
                    f"(the file has {metadata.num_row_groups}; was it replaced?)"
                )
        if row_groups:
            batches = parquet.iter_batches(
                batch_size=PARQUET_BATCH_ROWS,
                row_groups=row_groups,
                columns=list(mapping.values()),
                use_threads=True,
            )
            partials = aggregate_batches(counter.renamed(batches, mapping), fmt)
        else:
            partials = PARTIAL_SCHEMA.empty_table()
    wanted = set(mapping.values())
    bytes_read = 8 + metadata.serialized_size
    for index in row_groups:
        group = metadata.row_group(index)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".")[0] in wanted:
                bytes_read += chunk.total_compressed_size
    return UnitResult(partials, counter.rows, bytes_read, fmt)


@contextmanager
def _open_csv_stream(
    fs: pafs.FileSystem, unit: WorkUnit, kind: _FileKind
) -> Iterator[tuple[IO[bytes], int]]:
    """Yield a (decompressed) byte stream of the CSV and the compressed size read."""
    if kind == "zip":
        with fs.open_input_file(unit.path) as raw, zipfile.ZipFile(raw) as archive:
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir()
                and m.filename.lower().endswith(".csv")
                and not m.filename.startswith("__MACOSX/")
            ]
            if not members:
                raise FileFormatError(f"{unit.key}: the zip archive holds no .csv file")
            with archive.open(members[0]) as member:
                yield member, members[0].compress_size
        return
    compression = "gzip" if kind == "gzip" else None
    with fs.open_input_stream(unit.path, compression=compression) as stream:
        # NativeFile implements the binary file protocol; the stubs do not say so.
        yield cast(IO[bytes], stream), 0


def _read_header(stream: IO[bytes], key: str) -> list[str]:
    head = b""
    while b"\n" not in head and len(head) < _MAX_HEADER_BYTES:
        chunk = stream.read(64 * 1024)
        if not chunk:
            break
        head += chunk
    line, newline, _ = head.partition(b"\n")
    if not line.strip():
        raise FileFormatError(f"{key}: empty file, no CSV header")
    if not newline and len(head) >= _MAX_HEADER_BYTES:
        raise FileFormatError(f"{key}: no CSV header line in the first 1 MiB")
    text = line.decode("utf-8-sig").rstrip("\r")
    return next(csv.reader([text]))


def _aggregate_csv(fs: pafs.FileSystem, unit: WorkUnit, kind: _FileKind) -> UnitResult:
    counter = _Counter()
    with _translated_errors(unit.key, "CSV file"):
        # Sniff the header on a first stream, then re-open: one more request, but the Arrow
        # reader then pulls from a native stream instead of a Python wrapper.
        with _open_csv_stream(fs, unit, kind) as (stream, _):
            header = _read_header(stream, unit.key)
        fmt = detect_format(header, parquet=False)
        mapping = columns_to_read(header, fmt)
        sources = list(dict.fromkeys(mapping.values()))
        convert = pacsv.ConvertOptions(
            include_columns=sources,
            column_types={name: pa.string() for name in sources},
            null_values=_NULL_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        read = pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE, use_threads=True)
        # Quoted values may hold line breaks; measured to cost nothing noticeable here.
        parse = pacsv.ParseOptions(newlines_in_values=True)
        with _open_csv_stream(fs, unit, kind) as (stream, compressed_size):
            reader = pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
            partials = aggregate_batches(counter.renamed(reader, mapping), fmt)
        bytes_read = compressed_size or fs.get_file_info(unit.path).size or 0
    return UnitResult(partials, counter.rows, bytes_read, fmt)


def aggregate_work_unit(fs: pafs.FileSystem, unit: WorkUnit) -> UnitResult:
    """Read one work unit and return its partial aggregates.

    Only the columns needed by the detected format are read; CSV (``.csv``, gzip, zip) is
    streamed in blocks of :data:`CSV_BLOCK_SIZE` bytes, Parquet row groups in batches of
    :data:`PARQUET_BATCH_ROWS` rows. A header-only CSV gives an empty result.

    Raises :class:`FileFormatError` (corrupt, truncated, unsupported, wrong header),
    :class:`StorageAccessError` (missing object, access denied) or
    :class:`TransientStorageError` (other I/O failures, worth a retry).
    """
    kind = _file_kind(unit.key)
    if kind == "parquet":
        return _aggregate_parquet(fs, unit)
    return _aggregate_csv(fs, unit, kind)
