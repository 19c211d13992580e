"""Fixtures for tests that use a real database (SQLite and PostgreSQL) and real storage."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paths import SHARED_DATA, has_shared_data

from cur_ray.adapters.crypto import generate_key
from cur_ray.adapters.db.engine import upgrade_database
from cur_ray.logs import JsonFormatter
from cur_ray.services.context import AppContext
from cur_ray.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cur_ray.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    upgrade_database(url)
    return url


@pytest.fixture
def postgres_url(fresh_postgres_url: str) -> str:
    """A migrated, empty PostgreSQL database (for tests of PostgreSQL-only behaviour)."""
    upgrade_database(fresh_postgres_url)
    return fresh_postgres_url


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Settings for tests: a secrets key, fast retries; override any field by keyword."""
    key = generate_key()

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "cur_secrets_key": key,
            "cur_read_retries": 2,
            "cur_read_retry_base_seconds": 0.01,
            **overrides,
        }
        return Settings(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture
def make_ctx(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., AppContext]]:
    """Build AppContexts on a database URL; all are closed after the test."""
    built: list[AppContext] = []

    def build(url: str, **overrides: object) -> AppContext:
        ctx = AppContext.from_settings(make_settings(database_url=url, **overrides))
        built.append(ctx)
        return ctx

    yield build
    for ctx in built:
        ctx.close()


@pytest.fixture
def ctx(database_url: str, make_ctx: Callable[..., AppContext]) -> AppContext:
    """An AppContext on the parametrised database (SQLite and PostgreSQL)."""
    return make_ctx(database_url)


@pytest.fixture
def shared_data() -> Path:
    """The real billing files of ../shared/data (skips when the folder is absent)."""
    if not has_shared_data():
        pytest.skip(f"real billing data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_metrics_port() -> int:
    """The port on which the session's Ray exports Prometheus metrics."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def ray_session(ray_metrics_port: int) -> Iterator[None]:
    """One local Ray instance for the whole session (RAY-NOTES: start it once, 2 CPUs)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Without this Ray swaps 127.0.0.1 for the machine's outward address (RAY-NOTES, tests).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace="cur_ray_test",
        object_store_memory=200 * 2**20,
        log_to_driver=False,
        _metrics_export_port=ray_metrics_port,
        _node_ip_address="127.0.0.1",  # tests' servers listen on loopback only
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def coordinator_env(ctx: AppContext) -> Iterator[dict[str, str]]:
    """The environment of a coordinator for this test's database; the actor is killed after."""
    import ray

    from cur_ray.entrypoints.coordinator import COORDINATOR_NAME
    from cur_ray.entrypoints.singletons import NAMESPACE

    settings = ctx.settings
    key = settings.cur_secrets_key
    env = {
        "DATABASE_URL": settings.database_url,
        "CUR_SECRETS_KEY": key.get_secret_value() if key else "",
        "CUR_LEASE_SECONDS": "30",
        "CUR_READ_RETRY_BASE_SECONDS": "0.01",
        "RAY_AUTH_MODE": "disabled",
    }
    yield env
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE), no_restart=True)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every record of the ``cur_ray`` loggers, formatted as the JSON lines production writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cur_ray")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
