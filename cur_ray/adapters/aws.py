"""AWS access per project: STS AssumeRole with ExternalId, cached credentials, error mapping.

Endpoints follow the standard ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL_STS`` variables (that is how tests reach moto on loopback).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from cur_ray.errors import (
    ConfigurationError,
    StorageAccessError,
    StorageError,
    TransientStorageError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from cur_ray.settings import Settings

_ACCESS_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "AllAccessDisabled",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidClientTokenId",
    "InvalidBucketName",
    "NoSuchKey",
    "404",
    "403",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_SESSION_NAME_BAD_CHARS = re.compile(r"[^\w+=,.@-]")


@dataclass(frozen=True)
class AwsCredentials:
    """Temporary or static AWS credentials. ``repr`` never shows the secret parts."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: dt.datetime | None = None


@dataclass(frozen=True)
class AwsTarget:
    """What is needed to reach one project's bucket."""

    project_id: str
    role_arn: str | None
    external_id: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None


def role_session_name(project_id: str) -> str:
    """The AssumeRole session name for a project (STS allows 2-64 of ``[\\w+=,.@-]``)."""
    return _SESSION_NAME_BAD_CHARS.sub("-", f"cur-ray-{project_id}")[:64]


def translate_client_error(exc: Exception, what: str) -> StorageError:
    """Map a botocore error to the project's exception tree (never leaking credentials)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            return TransientStorageError(f"{what}: {code} {message}".strip())
        if code in _ACCESS_CODES or status in (401, 403, 404):
            return StorageAccessError(f"{what}: {code}: {message}")
        return StorageError(f"{what}: {code}: {message}")
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return TransientStorageError(f"{what}: {type(exc).__name__}")
    if isinstance(exc, NoCredentialsError):
        return StorageAccessError(f"{what}: no AWS credentials available")
    if isinstance(exc, BotoCoreError):
        return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}")


class CredentialProvider:
    """Gets credentials per project: AssumeRole (cached until shortly before expiry), or
    the transitional static key pair from the environment when explicitly enabled."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cache: dict[tuple[str, str, str | None], AwsCredentials] = {}
        self._lock = threading.Lock()

    def credentials_for(self, target: AwsTarget) -> AwsCredentials:
        """Credentials for ``target``; AssumeRole results are reused until near expiry."""
        if target.role_arn:
            key = (target.project_id, target.role_arn, target.external_id)
            with self._lock:
                cached = self._cache.get(key)
                if cached and not self._expiring(cached):
                    return cached
            fresh = self._assume_role(target)
            with self._lock:
                self._cache[key] = fresh
            return fresh
        return self._static_credentials(target)

    def _expiring(self, credentials: AwsCredentials) -> bool:
        if credentials.expiration is None:
            return False
        margin = dt.timedelta(seconds=self._settings.cur_credentials_refresh_margin_seconds)
        return dt.datetime.now(dt.UTC) + margin >= credentials.expiration

    def _static_credentials(self, target: AwsTarget) -> AwsCredentials:
        settings = self._settings
        if not settings.cur_allow_static_credentials:
            raise StorageAccessError(
                f"project {target.project_id} has no role ARN; set one with "
                "`cur-ray projects add … --role-arn`, or enable the transitional static-key "
                "fallback with CUR_ALLOW_STATIC_CREDENTIALS=true"
            )
        if not (settings.aws_access_key_id and settings.aws_secret_access_key):
            raise ConfigurationError(
                "CUR_ALLOW_STATIC_CREDENTIALS=true but AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY are not set"
            )
        token = settings.aws_session_token
        return AwsCredentials(
            access_key_id=settings.aws_access_key_id.get_secret_value(),
            secret_access_key=settings.aws_secret_access_key.get_secret_value(),
            session_token=token.get_secret_value() if token else None,
        )

    def _assume_role(self, target: AwsTarget) -> AwsCredentials:
        settings = self._settings
        sts = boto3.client(
            "sts",
            region_name=target.region or settings.aws_region,
            endpoint_url=settings.sts_endpoint_url,
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}),
        )
        kwargs: dict[str, Any] = {
            "RoleArn": target.role_arn,
            "RoleSessionName": role_session_name(target.project_id),
            "DurationSeconds": settings.cur_assume_role_duration_seconds,
        }
        if target.external_id:
            kwargs["ExternalId"] = target.external_id
        try:
            response = sts.assume_role(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(
                exc, f"AssumeRole for project {target.project_id}"
            ) from exc
        creds = response["Credentials"]
        return AwsCredentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=creds["Expiration"],
        )


def make_s3_client(
    credentials: AwsCredentials, *, region: str, endpoint_url: str | None
) -> S3Client:
    """A boto3 S3 client with the given credentials and AWS's standard retry mode."""
    return boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}),
    )
