"""Configuration: one pydantic-settings class, built by :func:`get_settings`, never at import.

Every variable is documented in ``.env.example``.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///cur_ray.db"


class Settings(BaseSettings):
    """All runtime configuration of cur_ray, read from the environment and ``.env``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; sqlite:///file.db (embedded default) or postgresql+psycopg://…",
    )
    ray_address: str | None = Field(default=None, description="Ray cluster; local Ray when unset")

    cur_batch_scheduler_enabled: bool = False
    cur_fetch_cron: str = "0 * * * *"
    cur_aggregate_cron: str = "15 * * * *"
    cur_scheduler_timezone: str = Field(
        default="UTC", description="IANA time zone the two cron expressions are evaluated in"
    )
    cur_aggregate_max_files: int = Field(default=100, ge=1, le=100_000)

    cur_secrets_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s) encrypting secrets at rest; comma-separated, newest first",
    )
    cur_allow_static_credentials: bool = Field(
        default=False,
        description="Transitional: use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY when no role is set",
    )
    cur_assume_role_duration_seconds: int = Field(default=3600, ge=900, le=43200)
    cur_credentials_refresh_margin_seconds: int = Field(default=300, ge=0)
    cur_lease_seconds: int = Field(default=900, ge=10)
    cur_read_retries: int = Field(default=3, ge=0, le=10)
    cur_read_retry_base_seconds: float = Field(default=0.5, ge=0)

    aws_region: str = Field(default="us-east-1", alias="AWS_REGION")
    aws_access_key_id: SecretStr | None = Field(default=None, alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(default=None, alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(default=None, alias="AWS_SESSION_TOKEN")
    aws_endpoint_url: str | None = Field(default=None, alias="AWS_ENDPOINT_URL")
    aws_endpoint_url_s3: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_S3")
    aws_endpoint_url_sts: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_STS")

    log_level: str = "INFO"

    @property
    def s3_endpoint_url(self) -> str | None:
        """The S3 endpoint, following AWS's own precedence (service-specific first)."""
        return self.aws_endpoint_url_s3 or self.aws_endpoint_url

    @property
    def sts_endpoint_url(self) -> str | None:
        """The STS endpoint, following AWS's own precedence (service-specific first)."""
        return self.aws_endpoint_url_sts or self.aws_endpoint_url


def load_settings() -> Settings:
    """Read settings fresh from the environment and ``.env``."""
    return Settings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once on first use (not at import)."""
    return load_settings()
