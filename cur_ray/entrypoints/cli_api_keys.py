"""``cur-ray api-keys``: create, list and revoke keys of the HTTP API.

``create`` prints the new key on stdout and nothing else (everything else goes to stderr), so
that ``KEY=$(cur-ray api-keys create --project p)`` works; the key is never shown again.

Exit codes: 0 success; 2 bad usage (invalid argument, unknown project or key); 1 otherwise.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cur_ray.entrypoints.cli_support import JsonFlag, print_json, run_in_session
from cur_ray.services import api_keys as api_keys_service

api_keys_app = typer.Typer(
    no_args_is_help=True,
    help="API keys of the HTTP API (stored hashed; scoped to one project or admin).",
)


@api_keys_app.command("create")
def create(
    project: Annotated[
        str | None,
        typer.Option("--project", help="Scope the key to this project; admin key if omitted."),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Free text, e.g. who uses the key.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it once on stdout (only its hash is stored)."""
    key, view = run_in_session(
        as_json,
        lambda s: api_keys_service.create_api_key(s, project_id=project, description=description),
    )
    if as_json:
        print_json({"key": key, **view.as_dict()})
        return
    scope = f"project {view.project_id}" if view.project_id else "admin (all projects)"
    typer.echo(
        f"created API key {view.key_id} for {scope}; it is shown once, store it now", err=True
    )
    typer.echo(key)


@api_keys_app.command("list")
def list_keys(as_json: JsonFlag = False) -> None:
    """List keys (ids, scopes, descriptions; never the keys)."""
    views = run_in_session(as_json, api_keys_service.list_api_keys)
    if as_json:
        print_json([v.as_dict() for v in views])
        return
    table = Table("key id", "scope", "description", "created", "revoked")
    for v in views:
        table.add_row(
            v.key_id,
            v.project_id or "admin",
            v.description or "",
            v.created_at.isoformat(timespec="seconds") if v.created_at else "-",
            v.revoked_at.isoformat(timespec="seconds") if v.revoked_at else "-",
        )
    Console().print(table)


@api_keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `api-keys list`.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key; requests with it are refused from now on."""
    view = run_in_session(as_json, lambda s: api_keys_service.revoke_api_key(s, key_id))
    if as_json:
        print_json(view.as_dict())
    else:
        typer.echo(f"revoked API key {view.key_id}")
