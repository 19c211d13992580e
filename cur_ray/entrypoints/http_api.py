"""The HTTP API of SPEC §7: a plain FastAPI app, served by Ray Serve in production.

:func:`create_app` builds it from a context factory (called once, lazily, per process) and a
:class:`JobNotifier` that wakes the coordinator after a job is enqueued; it needs no Ray, so
tests drive it with FastAPI's ``TestClient``. ``cur_ray.entrypoints.serve_app`` wraps it in a
Serve deployment.

* Every route but ``/healthz`` (and the OpenAPI pages) needs ``Authorization: Bearer <key>``
  (``cur-ray api-keys create``). A project key reaches only its project's routes and jobs;
  the global routes need an admin key.
* Database work is synchronous SQLAlchemy, run in Starlette's threadpool so that the event
  loop never blocks (RAY-NOTES: Serve routes must not block).
* Every error has one shape, ``{"error": {"code": …, "message": …}}``: 401 unauthorized,
  403 forbidden, 404 not_found, 409 conflict, 422 invalid_input, 503 database_error, and
  500 internal_error whose details (the traceback) go only to the server log. A request
  without a valid key is 401 even when it is also invalid (FastAPI parses the body before
  the key is checked; the error handlers check the key first).
"""

# No ``from __future__ import annotations``: FastAPI reads the route annotations at runtime.

import asyncio
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cur_ray import __version__
from cur_ray.domain.projects import PROJECT_ID_PATTERN
from cur_ray.errors import (
    AuthenticationError,
    ConflictError,
    CurRayError,
    DatabaseError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from cur_ray.services import costs as costs_service
from cur_ray.services import files as files_service
from cur_ray.services import jobs as jobs_service
from cur_ray.services import scheduler as scheduler_service
from cur_ray.services.api_keys import Principal, authenticate
from cur_ray.services.context import AppContext

log = logging.getLogger(__name__)

T = TypeVar("T")

API_TITLE = "cur_ray API"
TRIGGER = "api"
MAX_AGGREGATE_LIMIT = jobs_service.MAX_LIMIT
MAX_JOB_LIST = jobs_service.MAX_LIST
HEALTH_TIMEOUT_SECONDS = 5.0
_MAX_MESSAGE = 1000
_OPEN_PATHS = frozenset({"/healthz"})  # the only route that needs no API key

# ---------------------------------------------------------------------------------------------
# The coordinator hook


class JobNotifier(Protocol):
    """Wakes whoever runs jobs (the coordinator actor) after a job was enqueued."""

    async def notify(self) -> None:
        """Signal that a new job is waiting; must not block the event loop."""


class NoopNotifier:
    """The default notifier: does nothing (the coordinator finds the job when it polls)."""

    async def notify(self) -> None:
        """Do nothing."""


# ---------------------------------------------------------------------------------------------
# Response and request models (also the OpenAPI schema)


class ErrorDetail(BaseModel):
    """The machine-readable code and a human-readable message of an error."""

    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["unknown project: my-project"])


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class JobAccepted(BaseModel):
    """A job accepted into the queue; follow it with ``GET /jobs/{jobId}``."""

    jobId: str
    name: str = Field(examples=["cur-aggregate"])
    projectId: str | None = Field(description="null for a job over all enabled projects")
    status: str = Field(examples=["waiting"])


class AggregateRequest(BaseModel):
    """Optional body of the cur-aggregate triggers."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_AGGREGATE_LIMIT,
        description="At most this many files (default: CUR_AGGREGATE_MAX_FILES)",
    )


class JobOut(BaseModel):
    """A job of the queue (more fields may be added)."""

    model_config = ConfigDict(extra="allow")

    jobId: str
    name: str
    projectId: str | None
    trigger: str = Field(examples=["api"])
    status: str = Field(examples=["completed"], description="waiting|active|completed|failed")
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None


class JobList(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobOut]


class RequeueResult(BaseModel):
    """How many ERROR files went back to PENDING."""

    projectId: str
    requeued: int


class FileList(BaseModel):
    """Billing files of one project, by billing period and key."""

    projectId: str
    files: list[dict[str, Any]]


class CostRows(BaseModel):
    """Cost rows of one project; measures are exact decimal strings."""

    projectId: str
    rows: list[dict[str, Any]]


class ScheduleOut(BaseModel):
    """One of the two fixed schedules of the batch scheduler."""

    scheduleId: str = Field(examples=["cur-fetch-schedule"])
    jobName: str = Field(examples=["cur-fetch"])
    cron: str = Field(examples=["0 * * * *"])
    timezone: str = Field(examples=["UTC"])
    enabled: bool
    lastTickAt: str | None = Field(description="The last tick enqueued (ISO-8601 UTC)")
    nextTickAt: str | None = Field(description="The next tick (null while disabled)")
    updatedAt: str | None = None


class ScheduleList(BaseModel):
    """The scheduler's schedules, by id."""

    schedules: list[ScheduleOut]


class Health(BaseModel):
    """The service and its database answer."""

    status: str = Field(examples=["ok"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "Missing, invalid or revoked API key",
        403: "The API key does not cover this project (or this route needs an admin key)",
        404: "Unknown project or job",
        409: "The project is disabled, or the Idempotency-Key names a different job",
        422: "Invalid input",
        503: "The database is unavailable",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


# ---------------------------------------------------------------------------------------------
# Errors → responses

_STATUS_BY_ERROR: tuple[tuple[type[CurRayError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (DatabaseError, 503),
)
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


def status_for(error: CurRayError) -> int:
    """The HTTP status of a CurRayError (500 for errors that are not the caller's)."""
    for kind, status in _STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error in the one shape of this API."""
    body = {"error": {"code": code, "message": message[:_MAX_MESSAGE]}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _log_internal(message: str, request_line: str, exc: BaseException) -> None:
    # The JSON log formatter keeps only the exception's type and message; pass the
    # traceback as a field so that it still reaches the server log (and only there).
    trace = "".join(traceback.format_exception(exc))
    log.error(message, exc_info=exc, extra={"request": request_line, "traceback": trace})


async def _on_cur_ray_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CurRayError)
    status = status_for(exc)
    request_line = f"{request.method} {request.url.path}"
    if status == 503:
        log.warning("database unavailable", extra={"request": request_line, "error": exc.message})
        return error_response(503, exc.code, "database unavailable")
    if status == 500:
        _log_internal("request failed", request_line, exc)
        return error_response(500, exc.code, "internal error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, exc.code, exc.message, headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI parses the request body before it runs the route's dependencies, so a
    # malformed body would answer 422 before the key is checked: authenticate first, so
    # that a caller without a valid key always gets 401 and learns nothing of the schema.
    refused = await _authentication_refusal(request)
    if refused is not None:
        return refused
    # Name the bad fields and what is wrong with them; never echo the input itself.
    problems = []
    for error in exc.errors()[:10]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid value')}")
    return error_response(422, "invalid_input", "invalid request: " + "; ".join(problems))


async def _authentication_refusal(request: Request) -> JSONResponse | None:
    """The 401 (or 503) of a request to a keyed route without a valid key, else ``None``."""
    route = request.scope.get("route")
    if getattr(route, "path", None) in _OPEN_PATHS:
        return None
    try:
        await get_principal(get_runtime(request), await _bearer(request))
    except CurRayError as error:
        return await _on_cur_ray_error(request, error)
    return None


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status not in (404, 405):
        # E.g. 400 for a body that cannot be parsed at all: on a keyed route, the key first.
        refused = await _authentication_refusal(request)
        if refused is not None:
            return refused
    if status == 400:
        # FastAPI's answer to a body it cannot even decode (e.g. JSON that is not UTF-8);
        # malformed JSON is already a 422: one status for invalid input, as documented.
        return error_response(422, "invalid_input", f"invalid request: {exc.detail}")
    code = _CODE_BY_STATUS.get(status, "http_error")
    if status == 404:
        message = "no such route"
    elif status == 405:
        message = f"method {request.method} is not allowed on this route"
    else:
        message = str(exc.detail)
    return error_response(status, code, message, dict(exc.headers or {}))


class CatchAllMiddleware:
    """Turns any exception nobody handled into the 500 JSON error (traceback to the log)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; on an unhandled exception answer 500 if nothing was sent yet."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            _log_internal("unhandled error", f"{scope.get('method')} {scope.get('path')}", exc)
            if started:
                raise
            response = error_response(500, "internal_error", "internal error")
            await response(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# Per-process runtime: the lazily built context, the notifier, threadpool database calls


class ApiRuntime:
    """The process's AppContext (built on first use) and the job notifier."""

    def __init__(self, ctx_factory: Callable[[], AppContext], notifier: JobNotifier | None) -> None:
        self._ctx_factory = ctx_factory
        self.notifier: JobNotifier = notifier or NoopNotifier()
        self._ctx: AppContext | None = None
        self._lock = threading.Lock()

    # Ray Serve pickles the app (and so this object): never ship a lock or a live engine.
    def __getstate__(self) -> dict[str, Any]:
        return {"_ctx_factory": self._ctx_factory, "notifier": self.notifier}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._ctx_factory = state["_ctx_factory"]
        self.notifier = state["notifier"]
        self._ctx = None
        self._lock = threading.Lock()

    def context(self) -> AppContext:
        """The AppContext of this process, built by the factory on first use."""
        with self._lock:
            if self._ctx is None:
                self._ctx = self._ctx_factory()
            return self._ctx

    async def db(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction on a worker thread (never on the event loop)."""

        def call() -> T:
            with self.context().db.transaction() as session:
                return work(session)

        return await run_in_threadpool(call)

    async def notify(self) -> None:
        """Wake the coordinator; a failure is logged, never surfaced (the job is stored)."""
        try:
            await self.notifier.notify()
        except Exception:
            log.warning("could not notify the coordinator of a new job", exc_info=True)

    def close(self) -> None:
        """Dispose of the context's database engine, if one was built."""
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
                self._ctx = None


# ---------------------------------------------------------------------------------------------
# Parameters

ProjectIdPath = Annotated[
    str,
    Path(
        alias="projectId",
        pattern=PROJECT_ID_PATTERN,
        description="Project id: 1-64 letters, digits, '-' or '_', starting with a letter or digit",
    ),
]
JobIdPath = Annotated[
    str, Path(alias="jobId", pattern=jobs_service.JOB_ID_PATTERN, description="Job id")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=jobs_service.JOB_ID_PATTERN,
        description="Becomes the job id: repeating the request returns the same job",
    ),
]
AggregateBody = Annotated[AggregateRequest | None, Body()]
MonthFrom = Annotated[
    str | None, Query(alias="from", max_length=16, description="First billing period, YYYY-MM")
]
MonthTo = Annotated[
    str | None, Query(alias="to", max_length=16, description="Last billing period, YYYY-MM")
]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer cur_<keyId>_<secret>`, from `cur-ray api-keys create`",
)

_OPENAPI_TAGS = [
    {"name": "batch", "description": "Trigger the two batches (jobs run on the coordinator)."},
    {"name": "jobs", "description": "The durable job queue."},
    {"name": "files", "description": "Billing files discovered by cur-fetch."},
    {"name": "costs", "description": "The cost tables written by cur-aggregate."},
    {"name": "schedules", "description": "The scheduler's cron schedules (admin key)."},
    {"name": "health", "description": "Liveness and database reachability (no key)."},
]


# ---------------------------------------------------------------------------------------------
# Dependencies


def get_runtime(request: Request) -> ApiRuntime:
    """The runtime of the app serving ``request``."""
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ApiRuntime, Depends(get_runtime)]


async def get_principal(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal of the request's bearer key, or AuthenticationError (401)."""
    if credentials is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    presented = credentials.credentials
    found = await runtime.db(lambda s: authenticate(s, presented))
    if found is None:
        raise AuthenticationError("invalid or revoked API key")
    return found


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def project_scope(project_id: ProjectIdPath, who: PrincipalDep) -> str:
    """The path's project id when the key covers it, else PermissionDeniedError (403)."""
    if not who.can_access(project_id):
        raise PermissionDeniedError(f"this API key cannot access project {project_id}")
    return project_id


async def admin_scope(who: PrincipalDep) -> Principal:
    """The principal when it holds an admin key, else PermissionDeniedError (403)."""
    if not who.is_admin:
        raise PermissionDeniedError("this route needs an admin API key")
    return who


ProjectScope = Annotated[str, Depends(project_scope)]
AdminScope = Annotated[Principal, Depends(admin_scope)]


async def _enqueue(
    runtime: ApiRuntime,
    request: Request,
    response: Response,
    *,
    name: str,
    project_id: str | None,
    data: dict[str, Any] | None,
    job_id: str | None,
) -> JobAccepted:
    view, created = await runtime.db(
        lambda s: jobs_service.enqueue_job(
            s, name=name, project_id=project_id, trigger=TRIGGER, data=data, job_id=job_id
        )
    )
    job = view.as_dict()
    if not created and (job["name"], job["projectId"]) != (name, project_id):
        raise ConflictError("the Idempotency-Key is already used by another job")
    if created:
        await runtime.notify()
    response.headers["Location"] = str(request.url_for("get_job", jobId=job["jobId"]))
    return JobAccepted(
        jobId=job["jobId"], name=job["name"], projectId=job["projectId"], status=job["status"]
    )


def _aggregate_data(body: AggregateRequest | None) -> dict[str, Any] | None:
    return {"limit": body.limit} if body is not None and body.limit is not None else None


# ---------------------------------------------------------------------------------------------
# Routes

router = APIRouter()

_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": JobAccepted, "tags": ["batch"]}


@router.post(
    "/projects/{projectId}/batch/cur-fetch",
    summary="Discover one project's CUR files (Batch A)",
    responses=_errors(401, 403, 404, 409, 422, 503),
    **_ACCEPTED,
)
async def trigger_project_fetch(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    project_id: ProjectScope,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Enqueue a cur-fetch job for one project."""
    return await _enqueue(
        runtime,
        request,
        response,
        name=jobs_service.CUR_FETCH,
        project_id=project_id,
        data=None,
        job_id=idempotency_key,
    )


@router.post(
    "/projects/{projectId}/batch/cur-aggregate",
    summary="Aggregate one project's PENDING files (Batch B)",
    responses=_errors(401, 403, 404, 409, 422, 503),
    **_ACCEPTED,
)
async def trigger_project_aggregate(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    project_id: ProjectScope,
    body: AggregateBody = None,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Enqueue a cur-aggregate job for one project (optional body ``{"limit": N}``)."""
    return await _enqueue(
        runtime,
        request,
        response,
        name=jobs_service.CUR_AGGREGATE,
        project_id=project_id,
        data=_aggregate_data(body),
        job_id=idempotency_key,
    )


@router.post(
    "/batch/cur-fetch",
    summary="Discover the CUR files of every enabled project (admin key)",
    responses=_errors(401, 403, 409, 422, 503),
    **_ACCEPTED,
)
async def trigger_global_fetch(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    _admin: AdminScope,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Enqueue a cur-fetch job over all enabled projects."""
    return await _enqueue(
        runtime,
        request,
        response,
        name=jobs_service.CUR_FETCH,
        project_id=None,
        data=None,
        job_id=idempotency_key,
    )


@router.post(
    "/batch/cur-aggregate",
    summary="Aggregate the PENDING files of every enabled project (admin key)",
    responses=_errors(401, 403, 409, 422, 503),
    **_ACCEPTED,
)
async def trigger_global_aggregate(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    _admin: AdminScope,
    body: AggregateBody = None,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Enqueue a cur-aggregate job over all enabled projects (optional body ``{"limit": N}``)."""
    return await _enqueue(
        runtime,
        request,
        response,
        name=jobs_service.CUR_AGGREGATE,
        project_id=None,
        data=_aggregate_data(body),
        job_id=idempotency_key,
    )


@router.get(
    "/jobs/{jobId}",
    name="get_job",
    summary="One job",
    tags=["jobs"],
    response_model=None,
    responses={200: {"model": JobOut}, **_errors(401, 403, 404, 422, 503)},
)
async def get_job(job_id: JobIdPath, runtime: RuntimeDep, who: PrincipalDep) -> dict[str, Any]:
    """A job with its status, attempts, result and error."""
    view = await runtime.db(lambda s: jobs_service.get_job(s, job_id))
    job = view.as_dict()
    if not who.can_access(job["projectId"]):
        raise PermissionDeniedError("this API key cannot access this job")
    encoded: dict[str, Any] = jsonable_encoder(job)
    return encoded


@router.get(
    "/jobs",
    summary="Jobs, newest first",
    tags=["jobs"],
    response_model=None,
    responses={200: {"model": JobList}, **_errors(401, 403, 422, 503)},
)
async def list_jobs(
    runtime: RuntimeDep,
    who: PrincipalDep,
    project_id: Annotated[
        str | None,
        Query(
            alias="projectId",
            pattern=PROJECT_ID_PATTERN,
            description="Only this project's jobs (a project key sees only its own)",
        ),
    ] = None,
    status: Annotated[
        str | None, Query(max_length=32, description="waiting|active|completed|failed")
    ] = None,
    name: Annotated[str | None, Query(max_length=32, description="cur-fetch|cur-aggregate")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_JOB_LIST)] = 50,
) -> dict[str, Any]:
    """List jobs; a project key sees only its project's jobs."""
    if not who.is_admin:
        if project_id is not None and project_id != who.project_id:
            raise PermissionDeniedError(f"this API key cannot access project {project_id}")
        project_id = who.project_id
    views = await runtime.db(
        lambda s: jobs_service.list_jobs(
            s, project_id=project_id, status=status, name=name, limit=limit
        )
    )
    encoded: dict[str, Any] = jsonable_encoder({"jobs": [v.as_dict() for v in views]})
    return encoded


@router.post(
    "/projects/{projectId}/batch/requeue",
    summary="Send a project's ERROR files back to PENDING",
    tags=["files"],
    response_model=RequeueResult,
    responses=_errors(401, 403, 404, 422, 503),
)
async def requeue(runtime: RuntimeDep, project_id: ProjectScope) -> RequeueResult:
    """Requeue the project's failed files (attempts are kept)."""
    count = await runtime.db(lambda s: files_service.requeue_errors(s, project_id))
    return RequeueResult(projectId=project_id, requeued=count)


@router.get(
    "/projects/{projectId}/files",
    summary="A project's billing files",
    tags=["files"],
    response_model=FileList,
    responses=_errors(401, 403, 404, 422, 503),
)
async def list_files(
    runtime: RuntimeDep,
    project_id: ProjectScope,
    status: Annotated[
        str | None, Query(max_length=32, description="PENDING|PROCESSING|DONE|ERROR|SUPERSEDED")
    ] = None,
) -> FileList:
    """Billing files of the project, optionally of one status."""
    rows = await runtime.db(lambda s: files_service.list_files(s, project_id, status))
    return FileList(projectId=project_id, files=rows)


@router.get(
    "/projects/{projectId}/costs/monthly",
    summary="Monthly costs by account, service and charge category",
    tags=["costs"],
    response_model=CostRows,
    responses=_errors(401, 403, 404, 422, 503),
)
async def monthly_costs(
    runtime: RuntimeDep, project_id: ProjectScope, start: MonthFrom = None, end: MonthTo = None
) -> CostRows:
    """Monthly cost rows between two billing periods (inclusive)."""
    rows = await runtime.db(lambda s: costs_service.monthly_costs(s, project_id, start, end))
    return CostRows(projectId=project_id, rows=rows)


@router.get(
    "/projects/{projectId}/costs/daily",
    summary="Daily costs by account",
    tags=["costs"],
    response_model=CostRows,
    responses=_errors(401, 403, 404, 422, 503),
)
async def daily_costs(
    runtime: RuntimeDep, project_id: ProjectScope, start: MonthFrom = None, end: MonthTo = None
) -> CostRows:
    """Daily cost rows between two billing periods (inclusive)."""
    rows = await runtime.db(lambda s: costs_service.daily_costs(s, project_id, start, end))
    return CostRows(projectId=project_id, rows=rows)


@router.get(
    "/schedules",
    summary="The scheduler's schedules: cron, enabled, last and next tick (admin key)",
    tags=["schedules"],
    response_model=ScheduleList,
    responses=_errors(401, 403, 503),
)
async def list_schedules(runtime: RuntimeDep, _admin: AdminScope) -> ScheduleList:
    """Both schedules as stored (empty until a scheduler has started once)."""
    views = await runtime.db(scheduler_service.list_schedules)
    return ScheduleList(schedules=[ScheduleOut(**view.as_dict()) for view in views])


@router.get(
    "/healthz",
    summary="Liveness and database reachability",
    tags=["health"],
    response_model=Health,
    responses={503: {"model": ErrorBody, "description": "The database is unavailable"}},
)
async def healthz(runtime: RuntimeDep) -> Any:
    """``{"status": "ok"}`` when the database answers ``SELECT 1``; 503 otherwise."""
    try:
        await asyncio.wait_for(
            runtime.db(lambda s: s.execute(text("SELECT 1")).scalar_one()),
            timeout=HEALTH_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        log.warning("health check failed", extra={"error": type(exc).__name__})
        return error_response(503, DatabaseError.code, "database unavailable")
    return Health(status="ok")


# ---------------------------------------------------------------------------------------------
# The app


def create_app(
    ctx_factory: Callable[[], AppContext], notifier: JobNotifier | None = None
) -> FastAPI:
    """The FastAPI app of SPEC §7 over the context ``ctx_factory`` builds (once, lazily).

    ``notifier.notify()`` is awaited after each newly enqueued job (default: no-op).
    ``app.state.runtime`` holds the :class:`ApiRuntime` (``close()`` disposes the engine).
    """
    app = FastAPI(
        title=API_TITLE,
        version=__version__,
        summary="Exact per-project AWS Cost and Usage Report tables",
        description=(
            "Trigger the CUR batches, follow their jobs and read the cost tables. Every route "
            "but `/healthz` needs `Authorization: Bearer <key>` (`cur-ray api-keys create`); "
            "a project key reaches only its project. Errors are "
            '`{"error": {"code": "…", "message": "…"}}`.'
        ),
        openapi_tags=_OPENAPI_TAGS,
    )
    app.state.runtime = ApiRuntime(ctx_factory, notifier)
    app.add_exception_handler(CurRayError, _on_cur_ray_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_middleware(CatchAllMiddleware)
    app.include_router(router)
    return app
