"""API keys of the HTTP API: create (shown once), list, revoke, authenticate.

A key reads ``cur_<key_id>_<secret>``: ``key_id`` (16 hex digits) is public and names the
row; ``secret`` is ``secrets.token_urlsafe(32)`` (256 bits). Only a SHA-256 hash of the whole
key is stored (``sha256:<hex>``); with that much entropy a slow password hash adds nothing.
Hashes are compared in constant time. A key is scoped to one project or, with no project,
to all of them (admin).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cur_ray.adapters.db.models import ApiKey, utcnow
from cur_ray.errors import InvalidInputError, NotFoundError
from cur_ray.services.projects import get_connection

KEY_PREFIX = "cur_"
SECRET_BYTES = 32
MAX_KEY_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 256
_HASH_SCHEME = "sha256:"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43,100}$")
# Compared against when the key id is unknown, so that both paths do the same work.
_DUMMY_HASH = _HASH_SCHEME + hashlib.sha256(b"cur_ray unknown key").hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who an authenticated request acts for: one project's key, or an admin key."""

    key_id: str
    project_id: str | None

    @property
    def is_admin(self) -> bool:
        """True for a key scoped to every project."""
        return self.project_id is None

    def can_access(self, project_id: str | None) -> bool:
        """True when this key may act on ``project_id`` (``None``: all projects, admin only)."""
        return self.is_admin or (project_id is not None and project_id == self.project_id)


@dataclass(frozen=True)
class ApiKeyView:
    """An API key as shown to users: never the key itself nor its hash."""

    key_id: str
    project_id: str | None
    description: str | None
    created_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked."""
        return self.revoked_at is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (camelCase, ISO timestamps)."""
        return {
            "keyId": self.key_id,
            "projectId": self.project_id,
            "scope": "admin" if self.project_id is None else "project",
            "description": self.description,
            "createdAt": _iso(self.created_at),
            "revokedAt": _iso(self.revoked_at),
            "revoked": self.revoked,
        }


def _iso(value: dt.datetime | None) -> str | None:
    # SQLite hands back naive datetimes; everything the application writes is UTC.
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _view(row: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        key_id=row.key_id,
        project_id=row.project_id,
        description=row.description,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def hash_key(key: str) -> str:
    """The stored form of a plaintext key: ``sha256:<hex digest>``."""
    return _HASH_SCHEME + hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, ``None`` for anything else."""
    if len(presented) > MAX_KEY_LENGTH or not presented.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not sep or not _KEY_ID_RE.fullmatch(key_id) or not _SECRET_RE.fullmatch(secret):
        return None
    return key_id, secret


def _clean_description(description: str | None) -> str | None:
    if description is None:
        return None
    description = description.strip()
    if not description:
        return None
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInputError(
            f"description is too long: at most {MAX_DESCRIPTION_LENGTH} characters"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in description):
        raise InvalidInputError("description must be one line of printable text")
    return description


def create_api_key(
    session: Session, *, project_id: str | None, description: str | None
) -> tuple[str, ApiKeyView]:
    """Create a key for ``project_id`` (``None``: admin); returns the plaintext key once.

    The project must exist (NotFoundError). Only the key's hash is stored.
    """
    if project_id is not None:
        get_connection(session, project_id)  # validates the id, NotFoundError when unknown
    clean = _clean_description(description)
    while True:
        key_id = secrets.token_hex(8)
        if session.get(ApiKey, key_id) is None:
            break
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(
        key_id=key_id,
        key_hash=hash_key(key),
        project_id=project_id,
        description=clean,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return key, _view(row)


def list_api_keys(session: Session) -> list[ApiKeyView]:
    """Every key, oldest first, revoked ones included (never a key or a hash)."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_id))
    return [_view(row) for row in rows]


def revoke_api_key(session: Session, key_id: str) -> ApiKeyView:
    """Revoke a key by its id (the full key is accepted too); revoking twice is a no-op.

    NotFoundError when no such key exists.
    """
    parsed = parse_key(key_id)
    if parsed is not None:
        key_id = parsed[0]
    if not _KEY_ID_RE.fullmatch(key_id):
        raise NotFoundError("unknown API key id: key ids are 16 hex digits")
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"unknown API key id: {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return _view(row)


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal of a presented key, or ``None`` if malformed, unknown or revoked."""
    parsed = parse_key(presented.strip())
    if parsed is None:
        return None
    row = session.get(ApiKey, parsed[0])
    stored = row.key_hash if row is not None else _DUMMY_HASH
    matches = hmac.compare_digest(
        stored.encode("utf-8"), hash_key(presented.strip()).encode("utf-8")
    )
    if row is None or not matches or row.revoked_at is not None:
        return None
    return Principal(key_id=row.key_id, project_id=row.project_id)
