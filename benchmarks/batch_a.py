"""Batch A at scale: register N objects from moto's S3 server vs the bare paginated listing.

    python -m benchmarks.batch_a --objects 100000
    python -m benchmarks.batch_a --smoke

A moto S3/STS server (``moto.server.ThreadedMotoServer``) runs on 127.0.0.1 in a child
process (so it never competes with the measured code for this process's GIL). N tiny
objects are put with boto3 from a thread pool, laid out as a CUR 2.0 export
(``cur/bench/data/BILLING_PERIOD=YYYY-MM/bench-NNNNN.snappy.parquet``, 12 periods).
Then, alternately, ``--repeat`` times:

* the bare listing: boto3's ``list_objects_v2`` paginator over the prefix, nothing else;
* Batch A (``run_cur_fetch_batch``) on a fresh database: AssumeRole through moto's STS, the
  same paginated listing, key classification and planning, and the bulk registration of
  every object as a PENDING file.

The ratio of the two is the cost of everything Batch A adds to the listing (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BUCKET = "bench-cur"
PREFIX = "cur"
ROLE = "arn:aws:iam::123456789012:role/cur-reader"


def _serve(port_queue: Any) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port_queue.put(server.get_host_and_port()[1])
    while True:
        time.sleep(3600)


def start_moto() -> tuple[str, Any]:
    """A moto server in a child process; its endpoint URL and the process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_serve, args=(queue,), daemon=True)
    process.start()
    port = queue.get(timeout=60)
    return f"http://127.0.0.1:{port}", process


def object_keys(count: int, periods: int = 12) -> list[str]:
    """``count`` data file keys of a CUR 2.0 export spread over ``periods`` months."""
    keys = []
    for i in range(count):
        year, month = divmod(i % periods, 12)
        keys.append(
            f"{PREFIX}/bench/data/BILLING_PERIOD={2024 + year}-{month + 1:02d}/"
            f"bench-{i // periods:05d}.snappy.parquet"
        )
    return keys


def upload(client: Any, keys: Sequence[str], threads: int = 32) -> float:
    """Put every key (a few bytes each) from a thread pool; returns the seconds taken."""
    started = time.perf_counter()
    client.create_bucket(Bucket=BUCKET)

    def put(key: str) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"PAR1")

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, keys, chunksize=256):
            pass
    return time.perf_counter() - started


def bare_listing(client: Any) -> int:
    """The paginated listing alone (what Batch A cannot avoid)."""
    count = 0
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        count += len(page.get("Contents", []))
    return count


def batch_a(endpoint: str, work: Path, attempt: int) -> tuple[float, dict[str, Any]]:
    """Batch A on a fresh SQLite database; returns (seconds, the project's result)."""
    from pydantic import SecretStr

    from cur_ray.adapters.crypto import generate_key
    from cur_ray.adapters.db.engine import upgrade_database
    from cur_ray.services.context import AppContext
    from cur_ray.services.cur_fetch import run_cur_fetch_batch
    from cur_ray.services.projects import add_project
    from cur_ray.settings import Settings

    url = f"sqlite:///{work / f'batch-a-{attempt}.db'}"
    upgrade_database(url)
    # aws_endpoint_url is set by its alias (AWS_ENDPOINT_URL) elsewhere: mypy's plugin-free view.
    settings = Settings(  # type: ignore[call-arg]
        database_url=url,
        cur_secrets_key=SecretStr(generate_key()),
        aws_endpoint_url=endpoint,
        log_level="WARNING",
    )
    ctx = AppContext.from_settings(settings)
    try:
        with ctx.db.transaction() as session:
            add_project(
                session,
                settings,
                project_id="bench",
                storage_url=f"s3://{BUCKET}/{PREFIX}",
                role_arn=ROLE,
                external_id="bench-external-id",
            )
        started = time.perf_counter()
        result = run_cur_fetch_batch("bench", ctx=ctx)
        seconds = time.perf_counter() - started
    finally:
        ctx.close()
    return seconds, result.as_dict()["projects"][0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Batch A benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="500 objects, one run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.objects, args.repeat = 500, 1
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ[name] = value
    import boto3
    from botocore.config import Config

    endpoint, server = start_moto()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(max_pool_connections=64, retries={"max_attempts": 10}),
        )
        keys = object_keys(args.objects)
        print(f"putting {len(keys):,} objects into moto at {endpoint}…", flush=True)
        put_seconds = upload(client, keys)
        listing: list[float] = []
        fetching: list[float] = []
        result: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="cur_ray_batch_a_") as work:
            for attempt in range(args.repeat):
                started = time.perf_counter()
                listed = bare_listing(client)
                listing.append(time.perf_counter() - started)
                if listed != len(keys):
                    print(f"listed {listed} objects, expected {len(keys)}", file=sys.stderr)
                    return 1
                seconds, result = batch_a(endpoint, Path(work), attempt)
                fetching.append(seconds)
                if result["error"] or result["registered"] != len(keys):
                    print(f"Batch A did not register every object: {result}", file=sys.stderr)
                    return 1
    finally:
        server.terminate()
    best_ratio = min(fetching) / min(listing)
    median_ratio = statistics.median(fetching) / statistics.median(listing)
    print()
    print(f"Batch A, {len(keys):,} objects in moto S3 (setup: puts took {put_seconds:.1f} s)")
    print(f"  {'':<48} {'best':>9} {'median':>9}")
    print(
        f"  {'bare paginated listing (boto3)':<48} {min(listing):8.2f}s "
        f"{statistics.median(listing):8.2f}s"
    )
    print(
        f"  {'Batch A: list, plan, bulk-register (SQLite)':<48} {min(fetching):8.2f}s "
        f"{statistics.median(fetching):8.2f}s"
    )
    print(
        f"  ratio Batch A / listing: {best_ratio:.2f} best, {median_ratio:.2f} median (goal <= 1.3)"
    )
    print(f"  registered {result['registered']:,} of {result['listed']:,} listed objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
