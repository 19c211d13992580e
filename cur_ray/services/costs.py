"""Reading the cost tables: monthly by service and daily, as JSON-ready rows."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from cur_ray.adapters.db import costs as costs_repo
from cur_ray.adapters.db.models import MEASURE_COLUMNS
from cur_ray.errors import InvalidInputError
from cur_ray.services.projects import get_connection

_MONTH_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")  # ASCII only: \d also matches other digits


def parse_month(value: str | None, name: str) -> dt.date | None:
    """``YYYY-MM`` → the first day of that month; InvalidInputError otherwise."""
    if value is None or value == "":
        return None
    match = _MONTH_RE.fullmatch(value.strip())
    if not match or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1900:
        raise InvalidInputError(f"{name} must be a month written YYYY-MM, got {value[:40]!r}")
    return dt.date(int(match[1]), int(match[2]), 1)


def _decimal_text(value: Decimal | None) -> str | None:
    """Exact decimal string without exponent or trailing zeros (``0`` stays ``"0"``)."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _measures(row: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for m in MEASURE_COLUMNS:
        value = getattr(row, m)
        values[m] = int(value or 0) if m == "line_items" else _decimal_text(value)
    return values


def _range(start: str | None, end: str | None) -> tuple[dt.date | None, dt.date | None]:
    first, last = parse_month(start, "from"), parse_month(end, "to")
    if first and last and first > last:
        raise InvalidInputError("from must not be after to")
    return first, last


def monthly_costs(
    session: Session, project_id: str, start: str | None = None, end: str | None = None
) -> list[dict[str, Any]]:
    """Monthly costs by account, service, charge category and currency; measures as strings."""
    get_connection(session, project_id)
    first, last = _range(start, end)
    return [
        {
            "billing_period": row.billing_period.strftime("%Y-%m"),
            "usage_account_id": row.usage_account_id,
            "service_code": row.service_code,
            "service_name": row.service_name,
            "charge_category": row.charge_category,
            "currency": row.currency,
            **_measures(row),
        }
        for row in costs_repo.monthly_costs(session, project_id, first, last)
    ]


def daily_costs(
    session: Session, project_id: str, start: str | None = None, end: str | None = None
) -> list[dict[str, Any]]:
    """Daily costs by account and currency; measures as decimal strings."""
    get_connection(session, project_id)
    first, last = _range(start, end)
    return [
        {
            "billing_period": row.billing_period.strftime("%Y-%m"),
            "usage_date": row.usage_date.isoformat(),
            "usage_account_id": row.usage_account_id,
            "currency": row.currency,
            **_measures(row),
        }
        for row in costs_repo.daily_costs(session, project_id, first, last)
    ]
