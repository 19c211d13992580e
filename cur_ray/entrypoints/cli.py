"""The ``cur-ray`` command line. It only parses arguments and dispatches to services.

Exit codes: 0 success; 1 a job or one of its projects failed; 2 bad usage (invalid
argument, unknown or disabled project).
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cur_ray.adapters.crypto import generate_key
from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.entrypoints.cli_api_keys import api_keys_app
from cur_ray.entrypoints.cli_scheduler import scheduler_command, schedules_command
from cur_ray.entrypoints.cli_support import (
    EXIT_FAILED,
    JsonFlag,
    app_context,
    fail,
    in_transaction,
    print_json,
)
from cur_ray.errors import CurRayError
from cur_ray.logs import configure_logging
from cur_ray.services import costs as costs_service
from cur_ray.services import files as files_service
from cur_ray.services import jobs as jobs_service
from cur_ray.services import projects as projects_service
from cur_ray.services.context import AppContext
from cur_ray.services.demo import run_demo, run_in_process
from cur_ray.settings import load_settings

# Tracebacks never show local variables: they may hold secrets.
app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_show_locals=False
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
projects_app = typer.Typer(no_args_is_help=True, help="Project connections.")
secrets_app = typer.Typer(no_args_is_help=True, help="Encryption of stored secrets.")
costs_app = typer.Typer(no_args_is_help=True, help="Read the cost tables.")
app.add_typer(db_app, name="db")
app.add_typer(projects_app, name="projects")
app.add_typer(secrets_app, name="secrets")
app.add_typer(costs_app, name="costs")
app.add_typer(api_keys_app, name="api-keys", help="HTTP API keys (stored hashed).")
app.command("scheduler")(scheduler_command)
app.command("schedules")(schedules_command)


# --------------------------------------------------------------------------- db
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate DATABASE_URL to the newest schema."""
    settings = load_settings()
    try:
        upgrade_database(settings.database_url)
    except CurRayError as exc:
        fail(exc, False)
    typer.echo("database is up to date")


# --------------------------------------------------------------------- projects
@projects_app.command("add")
def projects_add(
    project_id: Annotated[str, typer.Argument(help="Project id: [A-Za-z0-9][A-Za-z0-9_-]{0,63}")],
    storage_url: Annotated[
        str, typer.Option("--storage-url", help="s3://bucket/prefix or file:///absolute/folder")
    ],
    role_arn: Annotated[str | None, typer.Option("--role-arn")] = None,
    external_id: Annotated[
        str | None, typer.Option("--external-id", help="Stored encrypted (CUR_SECRETS_KEY).")
    ] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a project connection."""
    with app_context(as_json) as ctx:
        view = in_transaction(
            ctx,
            lambda s: projects_service.add_project(
                s,
                ctx.settings,
                project_id=project_id,
                storage_url=storage_url,
                role_arn=role_arn,
                external_id=external_id,
                region=region,
                endpoint_url=endpoint_url,
            ),
        )
    print_json(view.as_dict()) if as_json else typer.echo(f"added project {view.project_id}")


@projects_app.command("list")
def projects_list(as_json: JsonFlag = False) -> None:
    """List project connections."""
    with app_context(as_json) as ctx:
        views = in_transaction(ctx, projects_service.list_projects)
    if as_json:
        print_json([v.as_dict() for v in views])
        return
    table = Table("project", "enabled", "storage", "role", "external id")
    for v in views:
        table.add_row(
            v.project_id,
            str(v.enabled),
            v.storage_url,
            v.role_arn or "-",
            "set" if v.has_external_id else "-",
        )
    Console().print(table)


def _set_enabled(project_id: str, enabled: bool, as_json: bool) -> None:
    with app_context(as_json) as ctx:
        view = in_transaction(ctx, lambda s: projects_service.set_enabled(s, project_id, enabled))
    state = "enabled" if enabled else "disabled"
    print_json(view.as_dict()) if as_json else typer.echo(f"{state} project {project_id}")


@projects_app.command("enable")
def projects_enable(project_id: str, as_json: JsonFlag = False) -> None:
    """Enable a project."""
    _set_enabled(project_id, True, as_json)


@projects_app.command("disable")
def projects_disable(project_id: str, as_json: JsonFlag = False) -> None:
    """Disable a project (global jobs skip it; targeted jobs are refused)."""
    _set_enabled(project_id, False, as_json)


# ---------------------------------------------------------------------- secrets
@secrets_app.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new key for CUR_SECRETS_KEY."""
    typer.echo(generate_key())


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the first key of CUR_SECRETS_KEY."""
    with app_context() as ctx:
        count = in_transaction(ctx, lambda s: projects_service.rotate_secrets(s, ctx.settings))
    typer.echo(f"re-encrypted {count} secret(s)")


# ---------------------------------------------------------------------- batches
LocalFlag = Annotated[
    bool,
    typer.Option("--local", help="Run in this process instead of on the Ray coordinator."),
]


def _run_batch(
    name: str, project_id: str | None, data: dict[str, Any] | None, local: bool, as_json: bool
) -> None:
    """Run one batch job (on the coordinator, or here with --local), print it, set the exit code."""
    with app_context(as_json) as ctx:
        if local:
            result = jobs_service.run_batch(ctx, name, project_id, (data or {}).get("limit"))
            job: dict[str, Any] = {
                "jobId": None,
                "name": name,
                "projectId": project_id,
                "status": "completed",
                "result": result,
                "error": None,
            }
        else:
            with ctx.db.transaction() as session:
                view, _ = jobs_service.enqueue_job(
                    session, name=name, project_id=project_id, trigger="cli", data=data
                )
            job = _run_on_cluster(ctx, view.job_id, show_progress=not as_json)
    if as_json:
        print_json(job)
    else:
        _print_job(job)
    if job["status"] != "completed" or _has_failures(job.get("result") or {}):
        raise typer.Exit(EXIT_FAILED)


def _run_on_cluster(ctx: AppContext, job_id: str, *, show_progress: bool) -> dict[str, Any]:
    from cur_ray.entrypoints import cluster  # Ray is imported only when it is used

    cluster.connect(ctx.settings)
    cluster.notify_coordinator()
    if not (show_progress and sys.stdout.isatty()):
        return cluster.wait_for_job(job_id)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(f"job {job_id[:8]}: waiting", total=None)

        def update(job: dict[str, Any]) -> None:
            live = job.get("progress") or {}
            progress.update(
                task,
                description=f"job {job_id[:8]}: {job['status']}",
                total=live.get("total"),
                completed=live.get("done", 0),
            )

        return cluster.wait_for_job(job_id, on_update=update)


def _has_failures(result: dict[str, Any]) -> bool:
    return bool(result.get("failedProjects") or result.get("failed") or result.get("projectErrors"))


def _print_job(job: dict[str, Any]) -> None:
    console = Console()
    if job.get("jobId"):
        console.print(f"job {job['jobId']} {job['name']}: [bold]{job['status']}[/bold]")
    if job.get("error"):
        console.print(f"[red]error:[/red] {job['error']}", highlight=False)
    result = job.get("result") or {}
    if job["name"] == "cur-fetch" and "projects" in result:
        table = Table("project", "listed", "registered", "requeued", "superseded", "error")
        for p in result["projects"]:
            table.add_row(
                p["projectId"],
                str(p["listed"]),
                str(p["registered"]),
                str(p["requeued"]),
                str(p["superseded"]),
                p["error"] or "",
            )
        console.print(table)
    elif result:
        console.print(
            f"claimed {result['claimed']}, done {result['done']}, "
            f"failed {len(result['failed'])}, skipped {result['skipped']}, "
            f"rows {result['rowsRead']:,}, {result['durationSeconds']:.2f}s"
        )
        for failure in result["failed"]:
            console.print(
                f"  ERROR {failure['projectId']} {failure['objectKey']}: {failure['error']}",
                highlight=False,
            )


@app.command("fetch")
def fetch(
    project_id: Annotated[
        str | None, typer.Argument(help="One project; all enabled if omitted")
    ] = None,
    local: LocalFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Batch A: discover CUR files into finops_billing_files."""
    _run_batch("cur-fetch", project_id, None, local, as_json)


@app.command("files")
def files(
    project_id: Annotated[str | None, typer.Argument()] = None,
    status: Annotated[str | None, typer.Option("--status", help="PENDING, DONE, ERROR, …")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List billing files."""
    with app_context(as_json) as ctx:
        rows = in_transaction(ctx, lambda s: files_service.list_files(s, project_id, status))
    if as_json:
        print_json(rows)
        return
    table = Table("project", "period", "key", "format", "status", "attempts", "error")
    for r in rows:
        table.add_row(
            r["project_id"],
            r["billing_period"],
            r["object_key"],
            r["format"],
            r["status"],
            str(r["attempts"]),
            r["error_message"] or "",
        )
    Console().print(table)


@app.command("aggregate")
def aggregate(
    project_id: Annotated[
        str | None, typer.Argument(help="One project; all enabled if omitted")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            max=jobs_service.MAX_LIMIT,
            help="At most N files (CUR_AGGREGATE_MAX_FILES)",
        ),
    ] = None,
    local: LocalFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Batch B: aggregate PENDING files into the cost tables."""
    _run_batch("cur-aggregate", project_id, {"limit": limit} if limit else None, local, as_json)


@app.command("jobs")
def jobs(
    project_id: Annotated[str | None, typer.Option("--project")] = None,
    status: Annotated[str | None, typer.Option("--status")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recent jobs, queue length and failure counts."""
    with app_context(as_json) as ctx, ctx.db.transaction() as session:
        rows = [
            j.as_dict()
            for j in jobs_service.list_jobs(
                session, project_id=project_id, status=status, limit=limit
            )
        ]
        stats = jobs_service.queue_stats(session)
    if as_json:
        print_json({"jobs": rows, "queue": stats})
        return
    table = Table("job", "name", "project", "trigger", "status", "attempts", "created", "error")
    for j in rows:
        table.add_row(
            j["jobId"],
            j["name"],
            j["projectId"] or "(all)",
            j["trigger"],
            j["status"],
            str(j["attempts"]),
            j["createdAt"] or "",
            j["error"] or "",
        )
    console = Console()
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in stats.items()))


@app.command("requeue")
def requeue(
    project_id: Annotated[str | None, typer.Argument()] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send ERROR files back to PENDING (attempts kept)."""
    with app_context(as_json) as ctx:
        count = in_transaction(ctx, lambda s: files_service.requeue_errors(s, project_id))
    if as_json:
        print_json({"projectId": project_id, "requeued": count})
    else:
        typer.echo(f"requeued {count} file(s)")


FromOption = Annotated[str | None, typer.Option("--from", help="First billing period, YYYY-MM")]
ToOption = Annotated[str | None, typer.Option("--to", help="Last billing period, YYYY-MM")]


@costs_app.command("monthly")
def costs_monthly(
    project_id: str, start: FromOption = None, end: ToOption = None, as_json: JsonFlag = False
) -> None:
    """Monthly costs by account, service and charge category."""
    with app_context(as_json) as ctx:
        rows = in_transaction(ctx, lambda s: costs_service.monthly_costs(s, project_id, start, end))
    if as_json:
        print_json(rows)
        return
    Console().print(render_monthly_table(rows))


@costs_app.command("daily")
def costs_daily(
    project_id: str, start: FromOption = None, end: ToOption = None, as_json: JsonFlag = False
) -> None:
    """Daily costs by account."""
    with app_context(as_json) as ctx:
        rows = in_transaction(ctx, lambda s: costs_service.daily_costs(s, project_id, start, end))
    if as_json:
        print_json(rows)
        return
    table = Table("date", "account", "currency", "unblended", "amortized", "lines")
    for r in rows:
        table.add_row(
            r["usage_date"],
            r["usage_account_id"],
            r["currency"],
            _money(r["unblended_cost"]),
            _money(r["amortized_cost"]),
            str(r["line_items"]),
        )
    Console().print(table)


def _money(value: str | None) -> str:
    return "-" if value is None else f"{float(value):,.2f}"


def render_monthly_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """A readable table of monthly cost rows."""
    table = Table(
        "period",
        "account",
        "service",
        "category",
        "currency",
        "unblended",
        "amortized",
        "net amortized",
        "list",
        title=title,
    )
    for r in rows:
        table.add_row(
            r["billing_period"],
            r["usage_account_id"],
            r["service_name"] or r["service_code"],
            r["charge_category"],
            r["currency"],
            _money(r["unblended_cost"]),
            _money(r["amortized_cost"]),
            _money(r["net_amortized_cost"]),
            _money(r["list_cost"]),
        )
    return table


@app.command("demo")
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder for the sample exports and the SQLite database")
    ] = Path("cur-ray-demo"),
    local: LocalFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the embedded default end to end: sample CUR exports, SQLite, both batches on Ray."""
    try:
        settings = load_settings()
        configure_logging("WARNING" if not as_json else settings.log_level)
        report = run_demo(
            directory, settings, executor=run_in_process if local else _run_demo_job_on_ray
        )
    except CurRayError as exc:
        fail(exc, as_json)
    fetched, aggregated = report.fetch["result"], report.aggregate["result"]
    if as_json:
        print_json(
            {
                "directory": str(report.directory),
                "databaseUrl": report.database_url,
                "fetch": report.fetch,
                "aggregate": report.aggregate,
                "monthly": report.monthly,
            }
        )
    else:
        console = Console()
        project = fetched["projects"][0]
        console.print(
            f"[bold]cur-ray demo[/bold]: sample exports in {report.tree.root}\n"
            f"Batch A: listed {project['listed']} objects, registered {project['registered']} "
            f"files, {project['superseded']} superseded (an older delivery of a re-delivered "
            f"month)\n"
            f"Batch B: {aggregated['done']} files aggregated, {aggregated['rowsRead']:,} rows, "
            f"{len(aggregated['failed'])} failed, {aggregated['durationSeconds']:.2f}s\n"
        )
        for period, rows in _by_period(report.monthly).items():
            console.print(render_service_table(rows, title=f"Billing period {period}"))
        console.print(f"\nDatabase: {report.database_url}")
        console.print(
            f"Explore: DATABASE_URL={report.database_url} cur-ray costs monthly demo",
            soft_wrap=True,
        )
    if report.aggregate["status"] != "completed" or aggregated["failed"]:
        raise typer.Exit(EXIT_FAILED)


def _run_demo_job_on_ray(ctx: AppContext, name: str, project_id: str) -> dict[str, Any]:
    with ctx.db.transaction() as session:
        view, _ = jobs_service.enqueue_job(session, name=name, project_id=project_id, trigger="cli")
    return _run_on_cluster(ctx, view.job_id, show_progress=False)


def _by_period(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    periods: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        periods.setdefault(row["billing_period"], []).append(row)
    return periods


def render_service_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Monthly rows summed over accounts, by service and charge category, with a total."""
    measures = ("unblended_cost", "amortized_cost", "net_amortized_cost", "list_cost")
    sums: dict[tuple[str, str], dict[str, Decimal | None]] = {}
    for row in rows:
        key = (row["service_name"] or row["service_code"], row["charge_category"])
        into = sums.setdefault(key, dict.fromkeys(measures))
        for m in measures:
            if row[m] is not None:
                into[m] = (into[m] or Decimal(0)) + Decimal(row[m])
    table = Table(
        "service", "category", "unblended", "amortized", "net amortized", "list", title=title
    )
    totals: dict[str, Decimal | None] = dict.fromkeys(measures)
    for (service, category), values in sorted(sums.items()):
        table.add_row(service, category, *(_money_decimal(values[m]) for m in measures))
        for m in measures:
            if values[m] is not None:
                totals[m] = (totals[m] or Decimal(0)) + (values[m] or Decimal(0))
    table.add_row("[bold]total[/bold]", "", *(_money_decimal(totals[m]) for m in measures))
    return table


def _money_decimal(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
) -> None:
    """Run the HTTP API (Ray Serve) and the coordinator in the foreground; Ctrl-C stops."""
    from ray import serve

    from cur_ray.entrypoints import cluster
    from cur_ray.entrypoints.serve_app import app as serve_app

    settings = load_settings()
    configure_logging(settings.log_level)
    cluster.connect(settings)
    serve.start(http_options={"host": host, "port": port})
    typer.echo(f"cur_ray API on http://{host}:{port} (docs at /docs); Ctrl-C to stop")
    serve.run(serve_app, name="cur_ray", route_prefix="/", blocking=True)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
