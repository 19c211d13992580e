"""Batch A ("cur-fetch"): discover every project's CUR files into ``finops_billing_files``."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cur_ray.adapters.db.billing_files import record_versions, register_files
from cur_ray.adapters.db.costs import recompute_period_summaries
from cur_ray.domain.discovery import (
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


def run_cur_fetch_batch(
    project_id: str | None = None, *, ctx: AppContext | None = None
) -> FetchResult:
    """Discover CUR files of one project, or of every enabled project.

    An unknown project raises NotFoundError, a disabled one ConflictError. A failure inside
    one project (access denied, missing bucket, bad manifest) is recorded on its result and
    the others continue; only fatal errors (database, settings) raise.
    """
    ctx = ctx or default_context()
    started = time.monotonic()
    with ctx.db.transaction() as session:
        targets = [ConnectionSnapshot.of(row) for row in target_connections(session, project_id)]
    result = FetchResult()
    log.info("cur-fetch started", extra={"projects": len(targets)})
    for connection in targets:
        result.projects.append(_fetch_project(ctx, connection))
    result.durationSeconds = time.monotonic() - started
    log.info(
        "cur-fetch finished",
        extra={"projects": len(targets), "failed": len(result.failed_projects)},
    )
    return result


def _fetch_project(ctx: AppContext, connection: ConnectionSnapshot) -> ProjectFetchResult:
    outcome = ProjectFetchResult(projectId=connection.project_id)
    with log_context(projectId=connection.project_id):
        log.info("project discovery started", extra={"storage": connection.location.url})
        try:
            _discover(ctx, connection, outcome)
        except (DatabaseError, ConfigurationError):
            raise
        except CurRayError as exc:
            outcome.error, outcome.errorType = exc.message, exc.code
            log.warning("project discovery failed", extra={"error": exc.message})
        except Exception as exc:  # a bug must not stop the other projects
            outcome.error, outcome.errorType = f"internal error: {type(exc).__name__}", "internal"
            log.exception("project discovery crashed")
        else:
            log.info("project discovery finished", extra=_counts(outcome))
    return outcome


def _counts(outcome: ProjectFetchResult) -> dict[str, int]:
    return {
        "listed": outcome.listed,
        "registered": outcome.registered,
        "requeued": outcome.requeued,
        "superseded": outcome.superseded,
        "missing": outcome.missing,
    }


def _discover(ctx: AppContext, connection: ConnectionSnapshot, outcome: ProjectFetchResult) -> None:
    store = open_object_store(connection, ctx.settings, ctx.credentials)
    location = connection.location
    data_files: list[tuple[ObjectInfo, KeyInfo]] = []
    manifest_objects: list[tuple[ObjectInfo, KeyInfo]] = []
    for obj in store.list_objects():
        outcome.listed += 1
        info = classify_key(obj.key, location)
        if info is None:
            continue
        (manifest_objects if info.is_manifest else data_files).append((obj, info))

    manifests: dict[Any, Manifest] = {}
    infos = {obj.key: info for obj, info in manifest_objects}
    for slot, obj in choose_manifest_keys(manifest_objects).items():
        raw = store.read_small(obj.key)
        with log_context(objectKey=obj.key):
            manifests[slot] = parse_manifest(raw, obj.key, infos[obj.key], location)

    plan = plan_discovery(data_files, manifests)
    outcome.missing = len(plan.missing_keys)
    if plan.missing_keys:
        log.warning(
            "manifest names files that are not in the bucket",
            extra={"missing": len(plan.missing_keys), "example": plan.missing_keys[0]},
        )
    with ctx.db.transaction() as session:
        record_versions(session, connection.project_id, plan.versions)
        counts = register_files(session, connection.project_id, location.bucket, plan.files)
        for period in sorted(counts.affected_periods or ()):
            recompute_period_summaries(session, connection.project_id, period)
    outcome.registered = counts.registered
    outcome.requeued = counts.requeued
    outcome.superseded = counts.superseded
