"""Named, detached, versioned actors: one per cluster (the coordinator, the scheduler).

RAY-NOTES: ``get_if_exists=True`` returns a live actor with its *old* code, so every
singleton reports :func:`code_version` and is replaced when it runs other code. Names live in
the explicit :data:`NAMESPACE` so that Serve replicas (another namespace) find them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from cur_ray.errors import ConfigurationError

log = logging.getLogger(__name__)

NAMESPACE = "cur_ray"
_CONFIG_ERROR = re.compile(r"ConfigurationError: (.+)")


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of this package's source: a singleton running other code gets replaced."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def singleton_options(name: str) -> dict[str, Any]:
    """A named detached actor that Ray restarts (and whose calls it retries), holding no CPU.

    Retried calls after a restart must be idempotent: the singletons' methods are.
    """
    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_task_retries": -1,
    }


def _startup_error(exc: RayActorError) -> ConfigurationError | None:
    """The ConfigurationError that stopped the actor's ``__init__``, if that is what it was."""
    found = _CONFIG_ERROR.search(str(exc))
    return ConfigurationError(found.group(1).strip()) if found else None


def _start(actor: Any, options: dict[str, Any]) -> tuple[Any, str]:
    handle = actor.options(**options).remote()
    try:
        return handle, str(ray.get(handle.version.remote()))
    except RayActorError as exc:
        config_error = _startup_error(exc)
        if config_error is not None:
            raise config_error from exc
        raise


def get_singleton(actor: Any, name: str, env: Mapping[str, str] | None = None) -> Any:
    """The cluster's actor ``name``, created if absent and replaced if it runs other code.

    ``env`` (tests, local runs) sets the environment of a newly created actor; on a deployed
    cluster it inherits the nodes' environment. An actor whose settings are invalid fails to
    start: ConfigurationError with its message.
    """
    options = singleton_options(name)
    if env:
        options["runtime_env"] = {"env_vars": dict(env)}
    handle, running = _start(actor, options)
    if running != code_version():
        log.warning("replacing an actor running other code", extra={"actor": name})
        ray.kill(handle, no_restart=True)
        handle, _ = _start(actor, options)
    return handle
