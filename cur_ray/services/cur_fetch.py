"""Batch A ("cur-fetch"): discover every project's CUR files into ``finops_billing_files``."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from cur_ray.adapters.db.billing_files import (
    RegistrationCounts,
    record_versions,
    register_files,
)
from cur_ray.adapters.db.costs import recompute_period_summaries
from cur_ray.adapters.db.engine import lock_period_summaries
from cur_ray.adapters.storage import FileSystemSpec, ObjectStore, object_store_from_spec
from cur_ray.domain.discovery import (
    DiscoveryPlan,
    KeyInfo,
    Manifest,
    ObjectInfo,
    choose_manifest_keys,
    classify_key,
    parse_manifest,
    plan_discovery,
)
from cur_ray.errors import ConfigurationError, CurRayError, DatabaseError
from cur_ray.logs import log_context
from cur_ray.services.context import AppContext, default_context
from cur_ray.services.projects import ConnectionSnapshot, open_object_store, target_connections

log = logging.getLogger(__name__)


@dataclass
class ProjectFetchResult:
    """What Batch A did for one project (SPEC §1 Batch A.6)."""

    projectId: str
    listed: int = 0
    registered: int = 0
    requeued: int = 0
    superseded: int = 0
    missing: int = 0
    error: str | None = None
    errorType: str | None = None


@dataclass
class FetchResult:
    """The result of one Batch A run."""

    projects: list[ProjectFetchResult] = field(default_factory=list)
    durationSeconds: float = 0.0

    @property
    def failed_projects(self) -> list[ProjectFetchResult]:
        """Projects whose discovery failed."""
        return [p for p in self.projects if p.error is not None]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored as the job result)."""
        return {
            "projects": [asdict(p) for p in self.projects],
            "durationSeconds": round(self.durationSeconds, 3),
            "failedProjects": len(self.failed_projects),
        }


@dataclass
class ProjectListing:
    """What listing one project's storage found: object count and the discovery plan."""

    listed: int
    plan: DiscoveryPlan


def list_and_plan(store: ObjectStore) -> ProjectListing:
    """List a location page by page, read the current manifests and plan the file set.

    Storage I/O and pure logic only (no database): it runs in-process or in a Ray task.
    """
    location = store.location
    listed = 0
    data_files: list[tuple[ObjectInfo, KeyInfo]] = []
    manifest_objects: list[tuple[ObjectInfo, KeyInfo]] = []
    for obj in store.list_objects():
        listed += 1
        info = classify_key(obj.key, location)
        if info is not None:
            (manifest_objects if info.is_manifest else data_files).append((obj, info))
    manifests: dict[tuple[str, dt.date], Manifest] = {}
    infos = {obj.key: info for obj, info in manifest_objects}
    for slot, obj in choose_manifest_keys(manifest_objects).items():
        raw = store.read_small(obj.key)
        manifests[slot] = parse_manifest(raw, obj.key, infos[obj.key], location)
    return ProjectListing(listed, plan_discovery(data_files, manifests))


PlanRequest = tuple[ConnectionSnapshot, FileSystemSpec]
Planner = Callable[[Sequence[PlanRequest]], Iterable[tuple[str, ProjectListing | BaseException]]]


def plan_in_process(
    requests: Sequence[PlanRequest],
) -> Iterator[tuple[str, ProjectListing | BaseException]]:
    """The simplest planner: list the projects one after another in this process."""
    for connection, spec in requests:
        with log_context(projectId=connection.project_id):
            try:
                listing = list_and_plan(object_store_from_spec(connection.location, spec))
            except Exception as exc:
                yield connection.project_id, exc
            else:
                yield connection.project_id, listing


def run_cur_fetch_batch(
    project_id: str | None = None,
    *,
    ctx: AppContext | None = None,
    planner: Planner | None = None,
) -> FetchResult:
    """Discover CUR files of one project, or of every enabled project.

    An unknown project raises NotFoundError, a disabled one ConflictError. A failure inside
    one project (access denied, missing bucket, bad manifest) is recorded on its result and
    the others continue; only fatal errors (database, settings) raise. ``planner`` lists
    the projects (in this process by default; the Ray runtime lists them as tasks).
    """
    ctx = ctx or default_context()
    started = time.monotonic()
    with ctx.db.transaction() as session:
        targets = [ConnectionSnapshot.of(row) for row in target_connections(session, project_id)]
    log.info("cur-fetch started", extra={"projects": len(targets)})
    outcomes = {t.project_id: ProjectFetchResult(projectId=t.project_id) for t in targets}
    by_id = {t.project_id: t for t in targets}
    requests: list[PlanRequest] = []
    for connection in targets:
        with log_context(projectId=connection.project_id):
            log.info("project discovery started", extra={"storage": connection.location.url})
            try:
                store = open_object_store(connection, ctx.settings, ctx.credentials)
            except Exception as exc:
                _record_failure(outcomes[connection.project_id], exc)
            else:
                requests.append((connection, store.filesystem_spec()))
    for pid, listing in (planner or plan_in_process)(requests):
        with log_context(projectId=pid):
            outcome = outcomes[pid]
            if isinstance(listing, BaseException):
                _record_failure(outcome, listing)
                continue
            try:
                _register(ctx, by_id[pid], listing, outcome)
            except Exception as exc:
                _record_failure(outcome, exc)
            else:
                log.info("project discovery finished", extra=_counts(outcome))
    result = FetchResult(projects=list(outcomes.values()))
    result.durationSeconds = time.monotonic() - started
    log.info(
        "cur-fetch finished",
        extra={"projects": len(targets), "failed": len(result.failed_projects)},
    )
    return result


def _record_failure(outcome: ProjectFetchResult, exc: BaseException) -> None:
    """Record a project's failure; fatal errors (database, settings) stop the whole job."""
    if isinstance(exc, DatabaseError | ConfigurationError):
        raise exc
    if isinstance(exc, CurRayError):
        outcome.error, outcome.errorType = exc.message, exc.code
        log.warning("project discovery failed", extra={"error": exc.message})
    elif isinstance(exc, Exception):  # a bug must not stop the other projects
        outcome.error, outcome.errorType = f"internal error: {type(exc).__name__}", "internal"
        log.error("project discovery crashed", exc_info=exc)
    else:
        raise exc


def _counts(outcome: ProjectFetchResult) -> dict[str, int]:
    return {
        "listed": outcome.listed,
        "registered": outcome.registered,
        "requeued": outcome.requeued,
        "superseded": outcome.superseded,
        "missing": outcome.missing,
    }


def _register(
    ctx: AppContext,
    connection: ConnectionSnapshot,
    listing: ProjectListing,
    outcome: ProjectFetchResult,
) -> None:
    plan = listing.plan
    outcome.listed = listing.listed
    outcome.missing = len(plan.missing_keys)
    if plan.missing_keys:
        log.warning(
            "manifest names files that are not in the bucket",
            extra={"missing": len(plan.missing_keys), "example": plan.missing_keys[0]},
        )

    def register(session: Session) -> RegistrationCounts:
        record_versions(session, connection.project_id, plan.versions)
        counts = register_files(
            session, connection.project_id, connection.location.bucket, plan.files
        )
        for period in sorted(counts.affected_periods or ()):
            # Batch B may be committing files of this period: include them.
            lock_period_summaries(session, connection.project_id, period)
            recompute_period_summaries(session, connection.project_id, period)
        return counts

    # Run again if PostgreSQL breaks a deadlock with a Batch B write by rolling this back.
    counts = ctx.db.run_transaction(register)
    outcome.registered = counts.registered
    outcome.requeued = counts.requeued
    outcome.superseded = counts.superseded
