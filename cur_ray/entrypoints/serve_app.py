"""The Ray Serve deployment of the HTTP API: ``cur_ray.entrypoints.serve_app:app``.

``serve run cur_ray.entrypoints.serve_app:app`` (dev) or ``serve deploy serve_config.yaml``.
Each replica builds its own AppContext (one database engine) from the environment in
``__init__``; routes run their database work in a threadpool, so the event loop never blocks.

``@serve.ingress`` freezes a pickled copy of :data:`fastapi_app`, so the routes cannot see the
replica object. They reach the replica's context and notifier through module-level functions
instead (pickled by reference, so they resolve to this module inside the replica process),
which ``CurRayApi.__init__`` fills with :func:`_install_replica`.
"""

from __future__ import annotations

import logging
from typing import cast

from ray import serve
from ray.serve import Deployment

from cur_ray.entrypoints.coordinator import CoordinatorNotifier, get_coordinator
from cur_ray.entrypoints.http_api import JobNotifier, NoopNotifier, create_app
from cur_ray.entrypoints.scheduler_actor import get_scheduler
from cur_ray.errors import ConfigurationError
from cur_ray.logs import configure_logging
from cur_ray.services.context import AppContext
from cur_ray.settings import load_settings

log = logging.getLogger(__name__)

_replica_context: AppContext | None = None
_replica_notifier: JobNotifier = NoopNotifier()


def _install_replica(ctx: AppContext, notifier: JobNotifier) -> None:
    """Make ``ctx`` and ``notifier`` the ones the routes of this process use."""
    global _replica_context, _replica_notifier
    _replica_context = ctx
    _replica_notifier = notifier


def replica_context() -> AppContext:
    """The AppContext of this replica (set by ``CurRayApi.__init__``)."""
    if _replica_context is None:
        raise ConfigurationError("the CurRayApi replica has not been initialised")
    return _replica_context


class ReplicaNotifier:
    """Forwards to the notifier of this replica (set by ``CurRayApi.__init__``)."""

    async def notify(self) -> None:
        """Wake the coordinator through the replica's notifier."""
        await _replica_notifier.notify()


fastapi_app = create_app(replica_context, notifier=ReplicaNotifier())


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(fastapi_app)
class CurRayApi:
    """One Serve replica of the HTTP API (one AppContext, one engine, per replica)."""

    def __init__(self) -> None:
        settings = load_settings()
        configure_logging(settings.log_level)
        self._ctx = AppContext.from_settings(settings)
        self._notifier = self._make_notifier()
        _install_replica(self._ctx, self._notifier)
        log.info("CurRayApi replica ready")

    def _make_notifier(self) -> JobNotifier:
        """The coordinator (and, when enabled, the scheduler), started now if absent."""
        get_coordinator()
        if load_settings().cur_batch_scheduler_enabled:
            get_scheduler()  # an invalid cron stops the replica with a clear message
        return CoordinatorNotifier()

    def __del__(self) -> None:
        # Serve calls this on graceful replica shutdown: release pooled connections.
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            try:
                ctx.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.debug("closing the database engine failed", exc_info=True)


# mypy keeps the undecorated class type through class decorators; it is a Deployment.
app = cast(Deployment, CurRayApi).bind()
