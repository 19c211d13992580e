"""File costs, derived summaries and cost queries.

Summaries of a (project, period) are exactly the sum of the ``finops_file_costs`` of that
period's contributing files (:mod:`cur_ray.domain.versions`). They are rewritten by upsert on
their unique keys plus removal of rows that no longer have a source, inside the caller's
transaction.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy.orm import Session

from cur_ray.adapters.db.billing_files import dialect_insert
from cur_ray.adapters.db.engine import exact_sum
from cur_ray.adapters.db.models import (
    MEASURE_COLUMNS,
    BillingFile,
    CostServiceMonthly,
    CostSummaryDaily,
    FileCost,
    Money,
    ReportVersion,
    utcnow,
)
from cur_ray.domain.versions import FileState, contributing_file_ids

MONEY_MEASURES = tuple(m for m in MEASURE_COLUMNS if m != "line_items")
_DAILY_KEY = ("usage_date", "usage_account_id", "currency")
_MONTHLY_KEY = ("usage_account_id", "service_code", "charge_category", "currency")
_CHUNK = 2000


def replace_file_costs(session: Session, file_id: int, project_id: str, partials: pa.Table) -> None:
    """Replace the stored partial aggregates of one file with ``partials``."""
    session.execute(delete(FileCost).where(FileCost.file_id == file_id))
    rows = partials.to_pylist()
    for row in rows:
        row["file_id"] = file_id
        row["project_id"] = project_id
    for start in range(0, len(rows), _CHUNK):
        session.execute(insert(FileCost), rows[start : start + _CHUNK])


def _measure_sums(model: Any) -> list[ColumnElement[Any]]:
    sums: list[ColumnElement[Any]] = [
        exact_sum(getattr(model, m), type_=Money).label(m) for m in MONEY_MEASURES
    ]
    sums.append(func.coalesce(func.sum(model.line_items), 0).label("line_items"))
    return sums


def period_file_states(session: Session, project_id: str, period: dt.date) -> list[FileState]:
    """The version-rule view of every file of one (project, period)."""
    query = select(
        BillingFile.id,
        BillingFile.report_name,
        BillingFile.version_id,
        BillingFile.status,
        BillingFile.etag,
        BillingFile.costs_etag,
    ).where(BillingFile.project_id == project_id, BillingFile.billing_period == period)
    return [FileState(*row) for row in session.execute(query)]


def _version_order(
    session: Session, project_id: str, period: dt.date
) -> dict[tuple[str, str], int]:
    query = select(ReportVersion.report_name, ReportVersion.version_id, ReportVersion.id).where(
        ReportVersion.project_id == project_id, ReportVersion.billing_period == period
    )
    return {(r, v): i for r, v, i in session.execute(query)}


def recompute_period_summaries(session: Session, project_id: str, period: dt.date) -> None:
    """Rewrite the daily and monthly summaries of one (project, period) from file costs."""
    ids = sorted(
        contributing_file_ids(
            period_file_states(session, project_id, period),
            _version_order(session, project_id, period),
        )
    )
    now = utcnow()
    daily_rows = _grouped(session, ids, "daily") if ids else []
    monthly_rows = _grouped(session, ids, "monthly") if ids else []
    _write(session, CostSummaryDaily, project_id, period, daily_rows, _DAILY_KEY, now)
    _write(session, CostServiceMonthly, project_id, period, monthly_rows, _MONTHLY_KEY, now)


def _grouped(session: Session, file_ids: list[int], grain: str) -> list[dict[str, Any]]:
    keys = _DAILY_KEY if grain == "daily" else _MONTHLY_KEY
    columns: list[Any] = [getattr(FileCost, k) for k in keys]
    if grain == "monthly":
        columns.append(func.max(FileCost.service_name).label("service_name"))
    query = (
        select(*columns, *_measure_sums(FileCost))
        .where(FileCost.file_id.in_(file_ids), FileCost.grain == grain)
        .group_by(*[getattr(FileCost, k) for k in keys])
    )
    return [dict(row._mapping) for row in session.execute(query)]


def _write(
    session: Session,
    model: Any,
    project_id: str,
    period: dt.date,
    rows: list[dict[str, Any]],
    keys: tuple[str, ...],
    now: dt.datetime,
) -> None:
    kept: list[int] = []
    for row in rows:
        row.update(project_id=project_id, billing_period=period, updated_at=now)
        for m in MONEY_MEASURES:
            if row[m] is not None:
                row[m] = Decimal(row[m])
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        stmt = dialect_insert(session, model.__table__)
        update_columns = [*MEASURE_COLUMNS, "updated_at"]
        if model is CostServiceMonthly:
            update_columns.append("service_name")
        stmt = stmt.on_conflict_do_update(
            index_elements=["project_id", "billing_period", *keys],
            set_={c: getattr(stmt.excluded, c) for c in update_columns},
        ).returning(model.__table__.c.id)
        kept.extend(session.execute(stmt, chunk).scalars().all())
    stale = delete(model).where(model.project_id == project_id, model.billing_period == period)
    if kept:
        stale = stale.where(model.id.not_in(kept))
    session.execute(stale)


def monthly_costs(
    session: Session, project_id: str, start: dt.date | None, end: dt.date | None
) -> list[CostServiceMonthly]:
    """Monthly rows of a project between two billing periods (inclusive)."""
    query = select(CostServiceMonthly).where(CostServiceMonthly.project_id == project_id)
    if start:
        query = query.where(CostServiceMonthly.billing_period >= start)
    if end:
        query = query.where(CostServiceMonthly.billing_period <= end)
    query = query.order_by(
        CostServiceMonthly.billing_period,
        CostServiceMonthly.usage_account_id,
        CostServiceMonthly.service_code,
        CostServiceMonthly.charge_category,
        CostServiceMonthly.currency,
    )
    return list(session.scalars(query))


def daily_costs(
    session: Session, project_id: str, start: dt.date | None, end: dt.date | None
) -> list[CostSummaryDaily]:
    """Daily rows of a project between two billing periods (inclusive)."""
    query = select(CostSummaryDaily).where(CostSummaryDaily.project_id == project_id)
    if start:
        query = query.where(CostSummaryDaily.billing_period >= start)
    if end:
        query = query.where(CostSummaryDaily.billing_period <= end)
    query = query.order_by(
        CostSummaryDaily.usage_date,
        CostSummaryDaily.usage_account_id,
        CostSummaryDaily.currency,
    )
    return list(session.scalars(query))
