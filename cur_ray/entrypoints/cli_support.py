"""What every ``cur-ray`` command shares: settings, the database, errors → exit codes.

Exit codes: 0 success; 1 a job, a project or the command failed; 2 bad usage (invalid
argument, unknown or disabled project, unknown key, invalid settings such as a bad cron).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session

from cur_ray.errors import ConflictError, CurRayError, InvalidInputError, NotFoundError
from cur_ray.logs import configure_logging
from cur_ray.services.context import AppContext
from cur_ray.settings import load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE_ERRORS = (InvalidInputError, NotFoundError, ConflictError)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
T = TypeVar("T")


def fail(error: CurRayError, as_json: bool, code: int | None = None) -> NoReturn:
    """Print ``error`` (one line on stderr, or a JSON error on stdout) and exit."""
    if code is None:
        code = EXIT_USAGE if isinstance(error, USAGE_ERRORS) else EXIT_FAILED
    if as_json:
        print(json.dumps({"error": {"code": error.code, "message": error.message}}))
    else:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]error:[/red] {escape(error.message)}", highlight=False
        )
    raise typer.Exit(code)


@contextmanager
def app_context(as_json: bool = False) -> Iterator[AppContext]:
    """Settings, logging and this process's database; CurRayError → message and exit code."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        ctx = AppContext.from_settings(settings)
    except CurRayError as exc:
        fail(exc, as_json)
    try:
        yield ctx
    except CurRayError as exc:
        fail(exc, as_json)
    finally:
        ctx.close()


def in_transaction(ctx: AppContext, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one committed transaction."""
    with ctx.db.transaction() as session:
        return work(session)


def run_in_session(as_json: bool, work: Callable[[Session], T]) -> T:
    """Build the context, run ``work`` in one transaction, close everything."""
    with app_context(as_json) as ctx:
        return in_transaction(ctx, work)


def print_json(value: Any) -> None:
    """Pretty JSON on stdout (decimals and dates as strings)."""
    print(json.dumps(value, indent=2, default=str))
