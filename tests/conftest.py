"""Shared pytest fixtures.

Server logic lives in tests/servers.py (a plain module; tests/ is on sys.path because it has
no __init__.py and pytest imports this conftest in its default 'prepend' mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import servers
from sqlalchemy.engine import make_url

# ---------------------------------------------------------------------------------------------
# Hermetic environment


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Nothing from the developer's shell or ~/.aws leaks into the tests, nothing leaves the box."""
    no_aws_files = tmp_path_factory.mktemp("no-aws") / "absent"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        for name in (
            "DATABASE_URL",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
        ):
            mp.delenv(name, raising=False)
        for name in list(os.environ):
            if name.startswith("AWS_ENDPOINT_URL_"):
                mp.delenv(name)
        mp.setenv("AWS_CONFIG_FILE", str(no_aws_files))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_aws_files))
        # botocore would otherwise probe the EC2 metadata address when it finds no credentials.
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.chdir(Path(__file__).resolve().parent.parent)  # the repository root
        yield


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _postgres_unavailable(reason: str) -> NoReturn:
    # On CI a missing database must fail the run, not quietly skip half the suite.
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"PostgreSQL unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg://) of an admin database on a test server.

    $CUR_RAY_TEST_DATABASE_URL if set, else a throwaway embedded server for this session.
    """
    given = os.environ.get(servers.DATABASE_URL_ENV)
    if given:
        try:
            url = servers.sqlalchemy_url(given)
            servers.check_postgres(url)
        except (ValueError, servers.ServerUnavailable) as exc:
            _postgres_unavailable(f"{servers.DATABASE_URL_ENV}: {exc}")
        yield url
        return
    server = servers.EmbeddedPostgres()
    try:
        server.start()
    except servers.ServerUnavailable as exc:
        _postgres_unavailable(f"could not start the throwaway server: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fresh_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a new empty database, dropped (connections terminated) after the test."""
    url = servers.create_database(postgres_server_url)
    try:
        yield url
    finally:
        name = make_url(url).database
        assert name is not None
        servers.drop_database(postgres_server_url, name)


# ---------------------------------------------------------------------------------------------
# moto (S3, STS, ... over real HTTP on 127.0.0.1; boto3 is never mocked)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[servers.MotoServer]:
    server = servers.start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(moto_server: servers.MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Endpoint URL of a freshly reset moto server; AWS_* env points boto3 at it for the test."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_server.endpoint_url
