"""Read CUR data files through a ``pyarrow.fs.FileSystem`` and aggregate them.

A file is split into :class:`WorkUnit` s (Parquet: groups of row groups; CSV: the whole
file, streamed). :func:`aggregate_work_unit` reads only the needed columns of one unit,
batch by batch, so memory stays bounded whatever the file size, and returns its partial
aggregates (:data:`cur_ray.domain.aggregation.PARTIAL_SCHEMA`).

Errors are translated: unreadable content -> :class:`FileFormatError`; missing object or
denied access -> :class:`StorageAccessError`; other I/O failures (resets, throttling,
timeouts) -> :class:`TransientStorageError`. There are no retries here; the caller retries
transient errors.

Compressed CSV (``.gz``, ``.zip``) is untrusted: it is decompressed as a stream (never
whole in memory) and the stream is capped by :class:`DecompressionLimits`, so that a
decompression bomb becomes a :class:`FileFormatError` of its file instead of minutes of
CPU or an exhausted disk or memory.
"""

from __future__ import annotations

import csv
import io
import re
import time
import weakref
import zipfile
import zlib
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import IO, Any, Literal, cast

import numpy as np
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
    "DEFAULT_DECOMPRESSION_LIMITS",
    "DecompressionLimits",
    "UnitResult",
    "WorkUnit",
    "aggregate_work_unit",
    "plan_work_units",
]

CSV_BLOCK_SIZE = 2 * 1024 * 1024
PARQUET_BATCH_ROWS = 256 * 1024
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


@dataclass(frozen=True)
class DecompressionLimits:
    """How far a compressed CSV (``.gz``, ``.zip``) may expand while it is streamed.

    A file may always expand to ``floor_bytes``; beyond that, to ``max_ratio`` times its
    compressed size; and never beyond ``max_bytes`` (``None``: no absolute limit). Reading
    past the limit raises :class:`FileFormatError` for that file only.

    The defaults leave an order of magnitude of headroom for real exports: CUR CSV.gz files
    expand about 7-20x (the AWS legacy sample 19x, the FOCUS sample 7x, generated exports
    9x), while a gzip bomb (a long run of one byte) expands about 1000x. The floor keeps
    tiny, very repetitive files (test fixtures, a header and a few rows) from ever being
    refused on their ratio.
    """

    max_ratio: float = 200.0
    floor_bytes: int = 4 * 2**20
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_ratio < 1 or self.floor_bytes < 0:
            raise ValueError("max_ratio must be at least 1 and floor_bytes not negative")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("max_bytes must be positive (or None)")

    def allowed(self, compressed_size: int) -> int:
        """The most decompressed bytes a file of ``compressed_size`` bytes may produce."""
        limit = max(self.floor_bytes, int(self.max_ratio * max(compressed_size, 0)))
        return limit if self.max_bytes is None else min(limit, self.max_bytes)


DEFAULT_DECOMPRESSION_LIMITS = DecompressionLimits()
"""200x the compressed size, at least 4 MiB, no absolute cap."""


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
    r"[Cc]orrupt|thrift|[Pp]arquet|[Uu]nexpected end|[Mm]agic|[Ii]nvalid|deserializ|"
    # Parquet pages whose header or data were damaged (seen with scrambled files):
    r"[Nn]ot yet implemented|[Uu]nsupported|[Ee]ncoding|[Dd]ictionary|[Pp]age (header|was)|"
    r"[Oo]ut of (range|bounds)"
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
        raise type(exc)(f"{key}: {exc.message}") from exc
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
        if "straddl" in str(exc):  # Arrow's words for a row that outgrows a CSV block
            raise FileFormatError(
                f"{key}: not a valid {what}: a row longer than {CSV_BLOCK_SIZE:,} bytes, or a "
                f"quote that is never closed ({exc})"
            ) from exc
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


def _dictionary_columns(
    schema: pa.Schema, leaves: Sequence[str], mapping: Mapping[str, str]
) -> list[str]:
    """Column paths worth reading dictionary-encoded: repetitive strings and map entries.

    CUR 2.0's ``product`` map holds a dozen attributes per row; read with dictionary keys
    and values it costs a fraction of materialising every string, and the aggregation looks
    ``product_name`` up on the dictionary indices.
    """
    paths = []
    for canonical, src in mapping.items():
        field_type = schema.field(src).type
        if canonical in _DICTIONARY_COLUMNS and pa.types.is_string(field_type):
            paths.append(src)
        elif (
            canonical == "product"
            and pa.types.is_map(field_type)
            and pa.types.is_string(field_type.key_type)
            and pa.types.is_string(field_type.item_type)
        ):
            # The map's leaf columns (``product.key_value.key`` / ``.value``; older writers
            # name the group ``map``).
            paths.extend(leaf for leaf in leaves if leaf.startswith(f"{src}."))
    return paths


def _row_group_batches(
    parquet: pq.ParquetFile, row_groups: Sequence[int], columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """Batches of the given row groups, never spanning two of them.

    Dictionaries may change between row groups; a batch spanning two would need chunked
    nested columns, which Arrow cannot produce for the dictionary-encoded ``product`` map.
    Pre-buffering then also holds one row group's column chunks at a time.
    """
    for index in row_groups:
        yield from parquet.iter_batches(
            batch_size=PARQUET_BATCH_ROWS, row_groups=[index], columns=columns, use_threads=True
        )


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
        leaves = [metadata.schema.column(i).path for i in range(len(metadata.schema))]
        dictionary = _dictionary_columns(schema, leaves, mapping)
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
        columns = list(mapping.values())
        if not row_groups:
            partials = PARTIAL_SCHEMA.empty_table()
        else:
            try:
                batches = _row_group_batches(parquet, row_groups, columns)
                partials = aggregate_batches(counter.renamed(batches, mapping), fmt)
            except pa.ArrowNotImplementedError as exc:
                # A dictionary-encoded map whose writer fell back to plain encoding inside
                # a row group cannot be read as dictionaries: read the unit again with the
                # map's strings materialised (slower, same result).
                plain = [c for c in dictionary if c in mapping.values()]
                if "Nested data" not in str(exc) or plain == dictionary:
                    raise
                counter.rows = 0
                parquet = pq.ParquetFile(
                    source, metadata=metadata, read_dictionary=plain, pre_buffer=True
                )
                batches = _row_group_batches(parquet, row_groups, columns)
                partials = aggregate_batches(counter.renamed(batches, mapping), fmt)
    wanted = set(mapping.values())
    bytes_read = 8 + metadata.serialized_size
    for index in row_groups:
        group = metadata.row_group(index)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".")[0] in wanted:
                bytes_read += chunk.total_compressed_size
    return UnitResult(partials, counter.rows, bytes_read, fmt)


class _BoundedStream(io.RawIOBase):
    """A read-only view of a decompressed stream that refuses to expand past its limit.

    The Arrow CSV reader pulls from it (through a :class:`_Feed`) in blocks of
    :data:`CSV_BLOCK_SIZE` bytes, one Python call per block; the :class:`FileFormatError`
    raised here reaches the caller unchanged.
    """

    def __init__(
        self, inner: IO[bytes], key: str, compressed_size: int, limits: DecompressionLimits
    ) -> None:
        super().__init__()
        self._inner = inner
        self._key = key
        self._compressed_size = compressed_size
        self._limits = limits
        self._limit = limits.allowed(compressed_size)
        self.produced = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes; everything left (block by block, bounded) when negative."""
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(CSV_BLOCK_SIZE):
                chunks.append(chunk)
            return b"".join(chunks)
        room = self._limit - self.produced + 1  # one byte more than allowed shows the excess
        data = self._inner.read(min(size, room))
        self.produced += len(data)
        if self.produced > self._limit:
            raise FileFormatError(_bomb_message(self._key, self._compressed_size, self._limits))
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from :meth:`read`."""
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


@dataclass
class _FeedState:
    """What a :class:`_Feed` shares with its :func:`_csv_batches`: blocks out, first error."""

    blocks: list[weakref.ref[np.ndarray]]
    error: BaseException | None = None


class _Feed(io.RawIOBase):
    """What the Arrow CSV reader pulls a Python stream from; see :func:`_csv_batches`.

    Blocks are handed over as read-only numpy views of the bytes read (zero copy) because,
    unlike ``bytes``, they can be weakly referenced: the state tells which ones Arrow still
    holds. An error of the source never propagates into Arrow: it is kept (without its
    traceback, which would keep this feed alive) and the stream ends there.
    """

    def __init__(self, source: IO[bytes], state: _FeedState) -> None:
        super().__init__()
        self._source = source
        self._state = state

    def readable(self) -> bool:
        """Always readable."""
        return True

    def read(self, size: int | None = -1) -> Any:
        """Up to ``size`` bytes of the source as a uint8 array; empty at the end or on error."""
        data = b""
        if self._state.error is None:
            try:
                data = self._source.read(-1 if size is None else size)
            except Exception as exc:
                self._state.error = exc.with_traceback(None)
        block = np.frombuffer(data, dtype=np.uint8)
        blocks = self._state.blocks
        if len(blocks) >= 64:
            blocks[:] = [ref for ref in blocks if ref() is not None]
        blocks.append(weakref.ref(block))
        return block


_RELEASE_TIMEOUT_SECONDS = 5.0


def _csv_batches(
    stream: IO[bytes],
    read: pacsv.ReadOptions,
    parse: pacsv.ParseOptions,
    convert: pacsv.ConvertOptions,
) -> Generator[pa.RecordBatch, None, None]:
    """The record batches of a CSV stream; once closed, Arrow holds nothing of Python's.

    A Python stream (a bounded, decompressed one) is read by Arrow's I/O threads, which
    take the GIL to call it and again to release each block it returned or error it
    raised. If that happens while the interpreter shuts down, the process aborts
    ("terminate called without an active exception", apache/arrow#34314). So no Python
    exception is raised into Arrow (the stream's error is raised here instead, after
    Arrow saw the stream end), and closing this generator closes the reader and waits,
    without the GIL, until Arrow has dropped the stream and every block (normally within
    a millisecond; at most :data:`_RELEASE_TIMEOUT_SECONDS`). A native stream is handed
    over as is.
    """
    if isinstance(stream, pa.NativeFile):
        with pacsv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        ) as native:
            yield from native
        return
    state = _FeedState(blocks=[])
    feed = _Feed(stream, state)
    feed_held = weakref.ref(feed)
    try:
        try:
            reader = pacsv.open_csv(
                cast(IO[bytes], feed),
                read_options=read,
                parse_options=parse,
                convert_options=convert,
            )
        finally:
            del feed  # from here on, only Arrow references it
        try:
            yield from reader
        finally:
            reader.close()
            del reader
    except Exception:
        if state.error is None:
            raise
        # Arrow failed on the early end of the stream: the stream's own error explains it.
    finally:
        deadline = time.monotonic() + _RELEASE_TIMEOUT_SECONDS
        while feed_held() is not None or any(ref() is not None for ref in state.blocks):
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
    if state.error is not None:
        raise state.error


def _bomb_message(key: str, compressed_size: int, limits: DecompressionLimits) -> str:
    cap = "" if limits.max_bytes is None else f", at most {limits.max_bytes:,}"
    return (
        f"{key}: decompresses to more than {limits.allowed(compressed_size):,} bytes from "
        f"{compressed_size:,} compressed bytes (the limit is {limits.max_ratio:g}x the "
        f"compressed size, at least {limits.floor_bytes:,}{cap}): refused as a possible "
        "decompression bomb"
    )


@contextmanager
def _open_csv_stream(
    fs: pafs.FileSystem,
    unit: WorkUnit,
    kind: _FileKind,
    limits: DecompressionLimits,
    gzip_size: int = 0,
) -> Iterator[tuple[IO[bytes], int]]:
    """Yield a (decompressed, bounded) byte stream of the CSV and its compressed size.

    ``gzip_size`` is the size of a ``.gz`` object (the caller looks it up once). The
    compressed size is 0 for a plain ``.csv`` (nothing to decompress, nothing to bound).
    """
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
            chosen = members[0]
            if chosen.file_size > limits.allowed(chosen.compress_size):
                # Declared sizes can lie; the stream below is bounded all the same.
                raise FileFormatError(_bomb_message(unit.key, chosen.compress_size, limits))
            with archive.open(chosen) as member:
                bounded = _BoundedStream(member, unit.key, chosen.compress_size, limits)
                yield cast(IO[bytes], bounded), chosen.compress_size
        return
    if kind == "csv":
        with fs.open_input_stream(unit.path) as stream:
            # NativeFile implements the binary file protocol; the stubs do not say so.
            yield cast(IO[bytes], stream), 0
        return
    with fs.open_input_stream(unit.path, compression="gzip") as stream:
        bounded = _BoundedStream(cast(IO[bytes], stream), unit.key, gzip_size, limits)
        yield cast(IO[bytes], bounded), gzip_size


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


def _aggregate_csv(
    fs: pafs.FileSystem, unit: WorkUnit, kind: _FileKind, limits: DecompressionLimits
) -> UnitResult:
    counter = _Counter()
    with _translated_errors(unit.key, "CSV file"):
        # Sniff the header on a first stream, then re-open: one more request, but the Arrow
        # reader then pulls from a fresh stream at offset 0.
        gzip_size = (fs.get_file_info(unit.path).size or 0) if kind == "gzip" else 0
        with _open_csv_stream(fs, unit, kind, limits, gzip_size) as (stream, _):
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
        with (
            _open_csv_stream(fs, unit, kind, limits, gzip_size) as (stream, compressed_size),
            closing(_csv_batches(stream, read, parse, convert)) as batches,
        ):
            partials = aggregate_batches(counter.renamed(batches, mapping), fmt)
        bytes_read = compressed_size or fs.get_file_info(unit.path).size or 0
    return UnitResult(partials, counter.rows, bytes_read, fmt)


def aggregate_work_unit(
    fs: pafs.FileSystem,
    unit: WorkUnit,
    *,
    limits: DecompressionLimits = DEFAULT_DECOMPRESSION_LIMITS,
) -> UnitResult:
    """Read one work unit and return its partial aggregates.

    Only the columns needed by the detected format are read; CSV (``.csv``, gzip, zip) is
    streamed in blocks of :data:`CSV_BLOCK_SIZE` bytes, Parquet row groups in batches of
    :data:`PARQUET_BATCH_ROWS` rows. A header-only CSV gives an empty result. Compressed
    CSV may expand only as far as ``limits`` allow.

    Raises :class:`FileFormatError` (corrupt, truncated, unsupported, wrong header, over the
    decompression limits), :class:`StorageAccessError` (missing object, access denied) or
    :class:`TransientStorageError` (other I/O failures, worth a retry).
    """
    kind = _file_kind(unit.key)
    # Translated here too: a damaged footer can fail while the read is being accounted for.
    with _translated_errors(unit.key, "Parquet file" if kind == "parquet" else "CSV file"):
        if kind == "parquet":
            result = _aggregate_parquet(fs, unit)
        else:
            result = _aggregate_csv(fs, unit, kind, limits)
    return result
