"""The one exception tree of cur_ray.

Every error the project raises on purpose derives from :class:`CurRayError`. Adapters
translate driver errors (botocore, SQLAlchemy, pyarrow) into these with ``raise … from exc``
so that entrypoints (CLI, HTTP) map them to exit codes and JSON errors in one place.

    CurRayError
    ├── ConfigurationError        bad settings, missing encryption key        (fatal)
    ├── InvalidInputError         a request or argument that cannot be valid (422 / exit 2)
    ├── NotFoundError             unknown project, job, file                  (404 / exit 2)
    ├── ConflictError             e.g. a disabled project, duplicate project  (409 / exit 2)
    ├── AuthenticationError       no API key, or an unknown or revoked one    (401 / exit 1)
    ├── PermissionDeniedError     a valid key used outside its project scope  (403 / exit 1)
    ├── StorageError              listing or reading an object store
    │   ├── StorageAccessError      AccessDenied, missing bucket, bad credentials
    │   └── TransientStorageError   throttling, resets, timeouts: worth a retry
    ├── ManifestError             an untrusted manifest that cannot be used
    ├── FileFormatError           a CUR data file that cannot be read or understood
    │   └── AmountOutOfRangeError   amounts or sums of 1e20 or more: refused, never stored
    └── DatabaseError             the database is unreachable or refused a statement
"""

from __future__ import annotations


class CurRayError(Exception):
    """Root of every error cur_ray raises on purpose.

    ``code`` is a stable machine-readable name used in JSON error bodies.
    """

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(CurRayError):
    """Settings are missing or invalid; nothing can run until they are fixed."""

    code = "configuration_error"


class InvalidInputError(CurRayError):
    """An argument or request body that can never be valid."""

    code = "invalid_input"


class NotFoundError(CurRayError):
    """A named project, job or file does not exist."""

    code = "not_found"


class ConflictError(CurRayError):
    """The request is valid but the current state refuses it (disabled project, duplicate)."""

    code = "conflict"


class AuthenticationError(CurRayError):
    """No API key was presented, or it is malformed, unknown or revoked."""

    code = "unauthorized"


class PermissionDeniedError(CurRayError):
    """A valid API key asked for something outside its scope (another project, admin only)."""

    code = "forbidden"


class StorageError(CurRayError):
    """Listing or reading the object store failed."""

    code = "storage_error"


class StorageAccessError(StorageError):
    """Access denied, missing bucket, or credentials that do not work."""

    code = "storage_access_denied"


class TransientStorageError(StorageError):
    """A failure worth retrying: throttling, connection reset, timeout, truncated body."""

    code = "storage_transient"


class ManifestError(CurRayError):
    """A CUR manifest is malformed or names keys outside the connection's bucket/prefix."""

    code = "manifest_error"


class FileFormatError(CurRayError):
    """A CUR data file is corrupt, truncated or not in a supported format."""

    code = "file_format_error"


class AmountOutOfRangeError(FileFormatError):
    """Amounts, or sums of them, of 1e20 or more in absolute value.

    They do not fit the ``decimal(38, 18)`` money columns, so they are refused (the file
    that brings them ends in ``ERROR``) rather than wrapped, rounded or half-stored.
    """

    code = "amount_out_of_range"


class DatabaseError(CurRayError):
    """The database could not be reached or refused a statement."""

    code = "database_error"
