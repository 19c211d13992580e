"""``cur-ray scheduler`` (start the cluster's scheduler) and ``cur-ray schedules`` (show them).

``scheduler`` checks the cron settings first (exit 2 naming the variable when one is
invalid), joins the cluster at ``RAY_ADDRESS`` (a local Ray when unset), makes sure the
coordinator and the scheduler actors run, and prints the schedules. With a local Ray it stays
in the foreground until Ctrl-C, since the local cluster ends with this process; on a remote
cluster the detached scheduler keeps running after the command returns (``--foreground`` to
stay and follow its ticks).

``schedules`` reads the database directly (no Ray).

Exit codes: 0 success; 2 invalid settings (e.g. a bad cron expression); 1 otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cur_ray.entrypoints.cli_support import EXIT_FAILED, EXIT_USAGE, JsonFlag, fail
from cur_ray.errors import ConfigurationError, CurRayError
from cur_ray.logs import configure_logging
from cur_ray.services.context import AppContext
from cur_ray.services.scheduler import list_schedules, schedules_from_settings
from cur_ray.settings import Settings, load_settings

POLL_SECONDS = 5.0


def _print_schedules(schedules: list[dict[str, Any]]) -> None:
    if not schedules:
        typer.echo("no schedules yet: start the scheduler with `cur-ray scheduler`")
        return
    zones = ", ".join(sorted({s["timezone"] for s in schedules}))
    # Fits 80 columns: ids and times are never cut or wrapped.
    table = Table(
        title=f"cron in {zones}; ticks in UTC",
        box=box.SIMPLE,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in ("schedule", "cron", "enabled", "last tick", "next tick"):
        table.add_column(header, no_wrap=True)
    for s in schedules:
        table.add_row(
            s["scheduleId"],
            s["cron"],
            "yes" if s["enabled"] else "no",
            _when(s["lastTickAt"]),
            _when(s["nextTickAt"]),
        )
    Console().print(table)


def _when(iso: str | None) -> str:
    """``2026-11-28 14:00`` in UTC (cron has no seconds)."""
    if iso is None:
        return "-"
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def _checked_settings(as_json: bool) -> Settings:
    """Settings whose schedules are valid; a bad cron or time zone exits 2 naming it."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        schedules_from_settings(settings)
    except ConfigurationError as exc:
        fail(exc, as_json, EXIT_USAGE)
    except CurRayError as exc:
        fail(exc, as_json, EXIT_FAILED)
    return settings


def _follow(handle: Any, as_json: bool) -> None:
    """Print the jobs the scheduler creates (JSON lines with ``--json``) until Ctrl-C."""
    import ray

    seen: set[str] = set()
    typer.echo("scheduler running; Ctrl-C to stop", err=True)
    try:
        while True:
            status = ray.get(handle.status.remote())
            for job in status["recentJobs"]:
                if job["jobId"] not in seen:
                    seen.add(job["jobId"])
                    line = json.dumps({"enqueued": job["jobId"]}) if as_json else None
                    typer.echo(line or f"enqueued {job['jobId']}")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
        # Disconnect (stopping a local Ray) here rather than in Ray's atexit hook, where the
        # terminal's Ctrl-C, which reaches Ray's own processes too, ends in a traceback.
        with contextlib.suppress(KeyboardInterrupt):
            ray.shutdown()


def scheduler_command(
    foreground: Annotated[
        bool,
        typer.Option(
            "--foreground",
            help="Stay in the foreground and print each enqueued tick (always, on a local Ray).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start the cluster's scheduler (one per cluster) and show the schedules."""
    settings = _checked_settings(as_json)
    import ray  # only when it is used

    from cur_ray.entrypoints import cluster
    from cur_ray.entrypoints.coordinator import get_coordinator
    from cur_ray.entrypoints.scheduler_actor import get_scheduler

    local = not settings.ray_address
    try:
        cluster.connect(settings)
        get_coordinator()
        handle = get_scheduler()
        status = ray.get(handle.status.remote())
    except ConfigurationError as exc:  # the cluster's own settings are invalid
        fail(exc, as_json, EXIT_USAGE)
    except CurRayError as exc:
        fail(exc, as_json, EXIT_FAILED)
    if as_json:
        print(
            json.dumps({"enabled": status["enabled"], "schedules": status["schedules"]}, indent=2)
        )
    else:
        _print_schedules(status["schedules"])
    if not status["enabled"]:
        typer.echo(
            "the scheduler is disabled (CUR_BATCH_SCHEDULER_ENABLED is not true): "
            "both schedules are disabled",
            err=True,
        )
        return
    if local or foreground:
        _follow(handle, as_json)


def schedules_command(as_json: JsonFlag = False) -> None:
    """Show the schedules: cron, enabled, last and next tick (reads the database)."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        ctx = AppContext.from_settings(settings)
    except CurRayError as exc:
        fail(exc, as_json, EXIT_FAILED)
    try:
        with ctx.db.transaction() as session:
            rows = [view.as_dict() for view in list_schedules(session)]
    except CurRayError as exc:
        fail(exc, as_json, EXIT_FAILED)
    finally:
        ctx.close()
    if as_json:
        print(json.dumps({"schedules": rows}, indent=2))
    else:
        _print_schedules(rows)
