"""Hostile CUR data files through Batch B end to end, on real SQLite and PostgreSQL (issue 8).

Each test puts good files and hostile ones side by side in one project's export folder, runs
cur-fetch and cur-aggregate, and checks that every hostile file ends ``ERROR`` with a
readable message naming it (or ``DONE`` where it is legitimately empty), while the good
files are ``DONE`` and the cost tables hold exactly their totals. Decompression bombs are
refused by the readers' :class:`~cur_ray.adapters.readers.DecompressionLimits`; a
subprocess measures that reading a ~1 GiB bomb keeps peak memory bounded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections.abc import Iterator
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from cur_ray.adapters.readers import (
    DEFAULT_DECOMPRESSION_LIMITS,
    DecompressionLimits,
    aggregate_work_unit,
    plan_work_units,
)
from cur_ray.errors import FileFormatError
from cur_ray.samples.expected import expected_monthly
from cur_ray.samples.line_items import LineItem, generate_line_items
from cur_ray.samples.writers import write_data_export, write_legacy_csv_export
from cur_ray.services.context import AppContext
from cur_ray.services.costs import daily_costs, monthly_costs
from cur_ray.services.cur_aggregate import run_cur_aggregate_batch
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.files import list_files
from cur_ray.services.projects import add_project

pytestmark = pytest.mark.hostile

MARCH = dt.date(2024, 3, 1)
PROJECT = "acme"
REPO = Path(__file__).resolve().parents[2]
FOLDER = Path("x") / "data" / "BILLING_PERIOD=2024-03"
HEADER = (
    "bill_billing_period_start_date,line_item_usage_account_id,line_item_line_item_type,"
    "line_item_usage_start_date,line_item_product_code,line_item_currency_code,"
    "line_item_unblended_cost\n"
)
ACCOUNT = "999999999999"  # the hostile files' rows; the good files use other accounts
COLUMN = "line_item_unblended_cost"
MiB = 2**20


@pytest.fixture(autouse=True)
def exact_decimals() -> Iterator[None]:
    """Exact Decimal arithmetic in these tests: 28 digits would round figures near 1e20."""
    with localcontext(prec=80):
        yield


def row(cost: str, day: int = 5) -> str:
    """One CUR 2.0 CSV line item of ``cost`` (a raw string, written as given)."""
    return (
        f"2024-03-01T00:00:00Z,{ACCOUNT},Usage,2024-03-{day:02d}T00:00:00Z,AmazonEC2,USD,{cost}\n"
    )


# ------------------------------------------------------------------------------ the harness


def good_export(root: Path, seed: int) -> Decimal:
    """Two good Parquet files and one good CSV.gz; returns their exact unblended total."""
    items = generate_line_items(period=MARCH, seed=seed, rows=300, accounts=2)
    common: dict[str, Any] = {
        "prefix": "",
        "export": "x",
        "period": MARCH,
        "write_manifest": False,
    }
    write_data_export(
        root, execution_id="e", items=items[:200], file_format="parquet", files=2, **common
    )
    write_data_export(root, execution_id="e", items=items[200:], file_format="csv", **common)
    total = sum((f["unblended_cost"] for f in expected_monthly(items).values()), start=Decimal(0))
    return Decimal(total)


def run_batches(ctx: AppContext, root: Path) -> dict[str, dict[str, Any]]:
    """Add the project, run both batches in this process, return its files by name."""
    with ctx.db.transaction() as session:
        add_project(session, ctx.settings, project_id=PROJECT, storage_url=f"file://{root}")
    fetched = run_cur_fetch_batch(PROJECT, ctx=ctx).projects[0]
    assert fetched.error is None, fetched.error
    result = run_cur_aggregate_batch(PROJECT, ctx=ctx, limit=1000)
    assert result.projectErrors == []
    with ctx.db.transaction() as session:
        rows = list_files(session, PROJECT)
    by_name = {Path(r["object_key"]).name: r for r in rows}
    failed = {Path(f.objectKey).name: f.error for f in result.failed}
    assert failed == {n: r["error_message"] for n, r in by_name.items() if r["status"] == "ERROR"}
    return by_name


def unblended_total(ctx: AppContext, account: str | None = None) -> Decimal:
    """The project's monthly and daily unblended totals, which must agree."""
    with ctx.db.transaction() as session:
        months = monthly_costs(session, PROJECT)
        days = daily_costs(session, PROJECT)
    pick = [r for r in months if account is None or r["usage_account_id"] == account]
    picked_days = [r for r in days if account is None or r["usage_account_id"] == account]
    monthly = sum((Decimal(r["unblended_cost"]) for r in pick), start=Decimal(0))
    daily = sum((Decimal(r["unblended_cost"]) for r in picked_days), start=Decimal(0))
    assert monthly == daily
    return monthly


def assert_outcomes(
    files: dict[str, dict[str, Any]], errors: dict[str, str], done: set[str]
) -> None:
    """``errors``: name → a pattern its message must match; ``done``: names that must be DONE.

    Every message names its file, says what is wrong in words (never a stack trace, never
    "storage read failed": a corrupt file is no reason to retry) and stays short.
    """
    assert set(files) == set(errors) | done, sorted(set(files) ^ (set(errors) | done))
    for name, pattern in errors.items():
        status, message = files[name]["status"], files[name]["error_message"] or ""
        assert status == "ERROR", (name, status, message)
        assert name in message, (name, message)
        assert re.search(pattern, message, re.IGNORECASE), (name, pattern, message)
        for noise in ("Traceback", 'File "', "storage read failed", "internal error"):
            assert noise not in message, (name, message)
        assert len(message) < 2000, (name, len(message))
    for name in done:
        assert files[name]["status"] == "DONE", (name, files[name]["error_message"])


def folder(root: Path) -> Path:
    """The export's data folder for March 2024 (created)."""
    path = root / FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def good_names(files: dict[str, dict[str, Any]], hostile: set[str]) -> set[str]:
    """The good files of :func:`good_export` (three of them)."""
    names = set(files) - hostile
    assert len(names) == 3, names
    return names


# ------------------------------------------------------------------------------- Parquet


def test_corrupt_parquet_footers_error_alone(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    want = good_export(root, seed=41)
    data = folder(root)
    sample = next(data.glob("*.parquet")).read_bytes()
    footer_length = struct.unpack("<I", sample[-8:-4])[0]
    hostile = {
        # name → (content, a word of the expected message)
        "truncated.snappy.parquet": (sample[: len(sample) // 2], "magic bytes not found"),
        "no-footer.snappy.parquet": (sample[:-8], "magic bytes not found"),
        "garbage-after-magic.snappy.parquet": (
            b"PAR1" + b"\xff" * 4096 + b"PAR1",  # the "footer length" is 4 GiB
            "smaller than the size reported by footer",
        ),
        "footer-length-huge.snappy.parquet": (
            sample[:-8] + struct.pack("<I", 2**31 - 1) + b"PAR1",
            "smaller than the size reported by footer",
        ),
        "footer-length-zero.snappy.parquet": (
            sample[:-8] + struct.pack("<I", 0) + b"PAR1",
            "thrift",
        ),
        "footer-scrambled.snappy.parquet": (
            sample[: -8 - footer_length]
            + bytes(b ^ 0x5A for b in sample[-8 - footer_length : -8])
            + sample[-8:],
            "thrift",
        ),
        "only-magic.snappy.parquet": (b"PAR1PAR1", "smaller than the size reported by footer"),
        "empty.snappy.parquet": (b"", "size is 0 bytes"),
    }
    for name, (content, _) in hostile.items():
        (data / name).write_bytes(content)

    files = run_batches(ctx, root)

    assert_outcomes(files, {n: w for n, (_, w) in hostile.items()}, good_names(files, set(hostile)))
    assert unblended_total(ctx) == want


def test_damaged_parquet_pages_are_format_errors_never_transient(tmp_path: Path) -> None:
    """Bytes changed anywhere in a Parquet file: a format error of that file, or a read.

    Never a storage error (which would be retried as transient, or reported as access
    denied) and never an unexpected exception. Without page checksums some damage is
    undetectable (a flipped digit inside a value): that is Parquet's limit, not checked here.
    """
    root = tmp_path / "bucket"
    good_export(root, seed=45)
    sample = next(folder(root).glob("*.parquet")).read_bytes()
    damaged = tmp_path / "damaged.snappy.parquet"
    fs = pafs.LocalFileSystem()
    outcomes: dict[str, int] = {}
    messages: list[str] = []
    for seed in range(80):
        rnd = random.Random(seed)
        content = bytearray(sample)
        for _ in range(rnd.choice((1, 3, 10))):
            content[rnd.randrange(4, len(content) - 8)] = rnd.randrange(256)
        damaged.write_bytes(bytes(content))
        try:
            for unit in plan_work_units(fs, str(damaged), damaged.name):
                aggregate_work_unit(fs, unit)
            kind = "read"
        except FileFormatError as exc:
            messages.append(exc.message)
            kind = "format error"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("format error", 0) >= 10, outcomes
    assert sum(outcomes.values()) == 80
    assert all(m.startswith(f"{damaged.name}: ") for m in messages), messages


# ------------------------------------------------------------------------------ bombs


def write_streamed_gzip_bomb(path: Path, head: bytes, expanded: int, fill: bytes = b"\n") -> int:
    """A gzip of ``head`` then ``expanded`` bytes of ``fill``, never holding or writing them.

    Each 1 MiB run of ``fill`` is deflated once after a full flush (which resets the
    compressor's history), so its compressed block is the same every time and is simply
    repeated; the CRC-32 is computed over the runs as they would be decompressed. Returns
    the compressed size (about 1/1000 of ``expanded``).
    """
    chunk = fill * MiB
    assert expanded % MiB == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    with path.open("wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header, no name
        out.write(first)
        for _ in range(expanded // MiB):
            out.write(block)
            crc = zlib.crc32(chunk, crc)
        out.write(deflate.flush())
        out.write(struct.pack("<II", crc, (len(head) + expanded) & 0xFFFFFFFF))
    return path.stat().st_size


def zip_of(member: str, content: bytes) -> bytes:
    """A deflated zip archive holding one member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr(member, content)
    return buffer.getvalue()


def test_decompression_bombs_error_alone(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    want = good_export(root, seed=42)
    data = folder(root)
    head = HEADER.encode()
    ten = 10 * MiB
    (data / "zeros-10mib.csv.gz").write_bytes(gzip.compress(b"\0" * ten, 9))
    (data / "header-then-zeros.csv.gz").write_bytes(gzip.compress(head + b"\0" * ten, 9))
    (data / "newlines-10mib.csv.gz").write_bytes(gzip.compress(head + b"\n" * ten, 9))
    repeated = head + row("0.01").encode() * (ten // len(row("0.01")))
    (data / "repeated-rows.csv.gz").write_bytes(gzip.compress(repeated, 9))
    (data / "newlines-10mib.zip").write_bytes(zip_of("bomb.csv", head + b"\n" * ten))
    size = write_streamed_gzip_bomb(data / "newlines-1gib.csv.gz", head, 1024 * MiB)
    assert size < 2 * MiB  # ~1000x

    files = run_batches(ctx, root)

    bomb = "decompression bomb"
    errors = {
        "zeros-10mib.csv.gz": "no CSV header line",  # gave up after 1 MiB
        # Gave up after two CSV blocks, or at the 4 MiB floor: whichever comes first.
        "header-then-zeros.csv.gz": "row longer than|decompression bomb",
        "newlines-10mib.csv.gz": bomb,
        "repeated-rows.csv.gz": bomb,  # valid rows, but 1000x: never summed
        "newlines-10mib.zip": bomb,
        "newlines-1gib.csv.gz": bomb,
    }
    assert_outcomes(files, errors, good_names(files, set(errors)))
    assert "200x" in files["newlines-1gib.csv.gz"]["error_message"]
    assert unblended_total(ctx) == want
    assert unblended_total(ctx, ACCOUNT) == 0  # not one row of the repeated-rows bomb


_BOMB_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    import pyarrow.fs as pafs
    from cur_ray.adapters.readers import DecompressionLimits, WorkUnit, aggregate_work_unit
    from cur_ray.errors import DatabaseError, FileFormatError

    small, bomb, ratio = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fs = pafs.LocalFileSystem()
    aggregate_work_unit(fs, WorkUnit(small, small))  # warm up imports and memory pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        result = aggregate_work_unit(
            fs, WorkUnit(bomb, bomb), limits=DecompressionLimits(max_ratio=ratio)
        )
        outcome = f"read {result.rows_read} rows"
    except FileFormatError as exc:
        outcome = exc.message
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "growth_bytes": (after - before) * 1024,
        "seconds": time.monotonic() - started,
        "outcome": outcome,
    }))
    """
)


def probe_bomb(small: Path, bomb: Path, ratio: float) -> dict[str, Any]:
    """Read ``bomb`` in a fresh interpreter; its peak RSS growth, duration and outcome."""
    run = subprocess.run(
        [sys.executable, "-c", _BOMB_PROBE, str(small), str(bomb), str(ratio)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    probe: dict[str, Any] = json.loads(run.stdout)
    return probe


def test_decompression_limits_arithmetic() -> None:
    limits = DEFAULT_DECOMPRESSION_LIMITS
    assert (limits.max_ratio, limits.floor_bytes, limits.max_bytes) == (200.0, 4 * MiB, None)
    assert limits.allowed(0) == 4 * MiB  # the floor: tiny files are never refused
    assert limits.allowed(10 * 1024) == 4 * MiB
    assert limits.allowed(MiB) == 200 * MiB  # a real CUR expands 7-20x
    capped = DecompressionLimits(max_ratio=1000, floor_bytes=0, max_bytes=50 * MiB)
    assert capped.allowed(MiB) == 50 * MiB
    assert capped.allowed(1000) == 1_000_000
    for bad in ({"max_ratio": 0.5}, {"floor_bytes": -1}, {"max_bytes": 0}):
        with pytest.raises(ValueError, match="must be"):
            DecompressionLimits(**bad)  # type: ignore[arg-type]


def test_gzip_bomb_memory_stays_bounded(tmp_path: Path) -> None:
    head = HEADER.encode()
    small = tmp_path / "small.csv.gz"
    small.write_bytes(gzip.compress(head + row("1").encode()))
    bomb = tmp_path / "bomb.csv.gz"
    write_streamed_gzip_bomb(bomb, head, 1024 * MiB)

    refused = probe_bomb(small, bomb, DEFAULT_DECOMPRESSION_LIMITS.max_ratio)
    assert "decompression bomb" in refused["outcome"], refused
    assert refused["growth_bytes"] < 128 * MiB, refused  # ~30 MiB measured

    # Even allowed to expand fully, the stream never sits in memory: 256 MiB of blank lines
    # (a smaller bomb, to stay fast) read with about the same memory.
    smaller = tmp_path / "smaller-bomb.csv.gz"
    write_streamed_gzip_bomb(smaller, head, 256 * MiB)
    allowed = probe_bomb(small, smaller, 1e6)
    assert allowed["outcome"] == "read 0 rows", allowed
    assert allowed["growth_bytes"] < 128 * MiB, allowed


# ------------------------------------------------------------------------- CSV content

# Amounts no exact sum can hold: each file errors, naming the column.
ABSURD = (
    "1e400",
    "-1e400",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "1234567890123456789012345678901234567890",
    "-1234567890123456789012345678901234567890",
    "0x10",
    "1_000",
    "\u0661\u0662",  # Arabic-Indic digits
)
# Amounts with one exact meaning: summed exactly (to decimal(38, 18)).
EXACT = {
    "1E+2": Decimal(100),
    "+4": Decimal(4),
    " 3 ": Decimal(3),
    "-0.000000000000000001": Decimal("-1e-18"),
    "12345678901234567890.123456789012345678": Decimal("12345678901234567890.123456789012345678"),
}


def test_hostile_csv_content_errors_alone(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    want = good_export(root, seed=43)
    data = folder(root)
    errors: dict[str, str] = {}

    def put(name: str, content: bytes, word: str | None = None) -> None:
        (data / name).write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
        if word is not None:
            errors[name] = word

    for index, value in enumerate(ABSURD):
        # The message names the column; what else it says is the aggregation's business.
        put(f"absurd-{index:02d}.csv", (HEADER + row("1") + row(value)).encode(), COLUMN)
    for index, value in enumerate(EXACT):
        put(f"exact-{index:02d}.csv", (HEADER + row(value)).encode())
    # Two amounts that each fit but whose sum does not.
    put(
        "sum-overflows.csv",
        (HEADER + row("99999999999999999999") + row("99999999999999999999", 6)).encode(),
        "1e20",
    )
    mismatched = HEADER + row("1") + row("2").rstrip("\n") + ",extra\n"
    put("more-columns.csv.gz", mismatched.encode(), "Expected 7 columns, got 8")
    fewer = HEADER + row("1") + f"2024-03-01T00:00:00Z,{ACCOUNT}\n"
    put("fewer-columns.csv", fewer.encode(), "Expected 7 columns, got 2")
    latin1 = (HEADER + row("1")).encode().replace(b"AmazonEC2", b"Amazon\xff\xfeEC2")
    put("not-utf8-service.csv.gz", latin1, "UTF8")
    bad_account = (HEADER + row("1")).encode().replace(ACCOUNT.encode(), b"9999\xc3\x28")
    put("not-utf8-account.csv", bad_account, "UTF8")
    put("empty.csv", b"", "empty file")
    (data / "empty-bytes.csv.gz").write_bytes(b"")  # not even a gzip header
    errors["empty-bytes.csv.gz"] = "empty file"
    put("empty-gzip.csv.gz", b"", "empty file")  # a valid gzip of nothing
    put("header-only.csv.gz", HEADER.encode())  # a legitimately empty file: DONE
    put("header-only-crlf.csv", HEADER.replace("\n", "\r\n").encode())
    put("huge-header.csv.gz", b"a," * (5 * MiB // 2) + b"\n" + row("1").encode(), "1 MiB")
    huge_row = HEADER + row("1").replace("AmazonEC2", "A" * 5 * MiB) + row("2")
    put("huge-row.csv", huge_row.encode(), "row longer than")
    put("unclosed-quote.csv", (HEADER + row('"1') + row("2") * 80_000).encode(), "quote")
    put("no-such-columns.csv", b"name,colour\nbob,blue\n", "unrecognised CUR CSV header")

    files = run_batches(ctx, root)

    exact = {n for n in files if n.startswith("exact-")} | {
        "header-only.csv.gz",
        "header-only-crlf.csv",
    }
    assert_outcomes(files, errors, exact | good_names(files, set(errors) | exact))
    for name in ("header-only.csv.gz", "header-only-crlf.csv"):
        assert files[name]["rows_read"] == 0
    assert unblended_total(ctx, ACCOUNT) == sum(EXACT.values())
    assert unblended_total(ctx) == want + sum(EXACT.values())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # reader only
def test_amounts_whose_sum_wraps_around_are_refused(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    want = good_export(root, seed=44)
    data = folder(root)
    amounts = HEADER + "".join(row("90000000000000000000", day) for day in (5, 6, 7, 8))
    (data / "wraps.csv").write_bytes(amounts.encode())

    files = run_batches(ctx, root)

    assert unblended_total(ctx) == want  # the wrong total is never stored…
    assert_outcomes(files, {"wraps.csv": "1e20"}, good_names(files, {"wraps.csv"}))


def test_amounts_whose_period_total_overflows_error_alone(ctx: AppContext, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    want = good_export(root, seed=46)
    data = folder(root)
    big = Decimal("60000000000000000000")
    for name in ("big-1.csv", "big-2.csv"):
        (data / name).write_bytes((HEADER + row(str(big))).encode())

    files = run_batches(ctx, root)  # must not raise

    done_big = [n for n in ("big-1.csv", "big-2.csv") if files[n]["status"] == "DONE"]
    # The first (by id) fits and is kept; the second would take the total to 1.2e20.
    assert done_big == ["big-1.csv"], "an out-of-range period total was stored"
    assert unblended_total(ctx) == want + big
    assert_outcomes(
        files,
        {n: "1e20" for n in ("big-1.csv", "big-2.csv") if n not in done_big},
        good_names(files, {"big-1.csv", "big-2.csv"}) | set(done_big),
    )


def test_a_new_version_whose_total_overflows_keeps_the_previous_version_shown(
    ctx: AppContext, tmp_path: Path
) -> None:
    """Refusals follow the version rule: the previous complete version keeps showing."""
    root = tmp_path / "bucket"
    common: dict[str, Any] = {"prefix": "", "report": "r", "period": MARCH, "compression": "none"}

    def huge(seed: int, files: int) -> list[LineItem]:
        """Items whose file parts each hold one amount of 6e19, on the same summary rows."""
        items = generate_line_items(period=MARCH, seed=seed, rows=80, accounts=2)
        size = len(items) // files  # the writer's parts, when it divides evenly
        for part in range(files):
            at = next(
                i
                for i in range(part * size, (part + 1) * size)
                if items[i].line_item_line_item_type == "Usage"
                and not items[i].line_item_operation.endswith("-EC2")
            )
            items[at] = dataclasses.replace(  # same summary keys in every part
                items[at],
                line_item_unblended_cost="60000000000000000000",
                line_item_usage_account_id=items[0].line_item_usage_account_id,
                line_item_usage_start_date="2024-03-05T00:00:00Z",
                line_item_product_code="AmazonEC2",
            )
        return items

    first = huge(51, files=1)
    write_legacy_csv_export(root, assembly_id="a1", items=first, **common)
    shown = sum((f["unblended_cost"] for f in expected_monthly(first).values()), Decimal(0))
    files = run_batches(ctx, root)
    assert [f["status"] for f in files.values()] == ["DONE"]
    assert unblended_total(ctx) == shown

    # The next delivery's two files fit alone, but together take the month to 1.2e20.
    write_legacy_csv_export(root, assembly_id="a2", items=huge(52, files=2), files=2, **common)
    run_cur_fetch_batch(PROJECT, ctx=ctx)
    result = run_cur_aggregate_batch(PROJECT, ctx=ctx)

    assert (result.done, [f.objectKey for f in result.failed]) == (
        1,
        ["r/20240301-20240401/a2/r-2.csv"],
    )
    assert "1e20" in result.failed[0].error
    assert "2024-03" in result.failed[0].error
    with ctx.db.transaction() as session:
        statuses = {f["object_key"]: f["status"] for f in list_files(session)}
    assert statuses == {
        "r/20240301-20240401/a1/r-1.csv": "SUPERSEDED",  # yet still shown
        "r/20240301-20240401/a2/r-1.csv": "DONE",
        "r/20240301-20240401/a2/r-2.csv": "ERROR",
    }
    assert unblended_total(ctx) == shown  # the incomplete new version is not shown
