"""One logger setup: JSON lines carrying ``jobId``, ``projectId`` and ``objectKey`` context.

Use :func:`log_context` around a unit of work; every record logged inside carries its fields.
Fields whose names look secret are redacted, whatever a caller passes in ``extra``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "cur_ray_log_context", default=None
)
_SECRET_NAME = re.compile(r"secret|token|password|external_?id|credential|api_?key", re.I)
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
REDACTED = "***"


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (e.g. ``projectId=…``) to every record logged inside the block."""
    merged = {**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, Any]:
    """The context fields in force (to hand to a Ray task, for instance)."""
    return dict(_CONTEXT.get() or {})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_CONTEXT.get() or {})
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        for key in list(payload):
            if _SECRET_NAME.search(key):
                payload[key] = REDACTED
        if record.exc_info and record.exc_info[0] is not None:
            payload["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(payload, default=str)


_HANDLER_NAME = "cur_ray_json"


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Install the JSON handler on the ``cur_ray`` logger (idempotent)."""
    logger = logging.getLogger("cur_ray")
    logger.setLevel(level.upper())
    for handler in logger.handlers:
        if handler.get_name() == _HANDLER_NAME:
            return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
