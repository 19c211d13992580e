"""File costs, derived summaries and cost queries.

Summaries of a (project, period) are exactly the sum of the ``finops_file_costs`` of that
period's contributing files (:mod:`cur_ray.domain.versions`). They are rewritten by upsert on
their unique keys plus removal of rows that no longer have a source, inside the caller's
transaction.

Bulk paths (Batch B writes tens of thousands of rows per project in one transaction):

* file costs are inserted straight from the Arrow partials with one ``executemany``
  (SQLite) or multi-row ``INSERT`` statements (PostgreSQL); money goes in as exact decimal
  text, exactly as the :data:`~cur_ray.adapters.db.models.Money` type would store it;
* summaries are summed exactly on 256 bits: from the partials written in this same
  transaction (remembered on the session) and from the stored rows of any other
  contributing file, then written with one bulk upsert per table.

A summary figure must fit ``decimal(38, 18)`` (``|x| < 1e20``), like every money column:
:func:`recompute_period_summaries` raises :class:`AmountOutOfRangeError` before writing
anything when one would not, and :func:`refuse_out_of_range` tells which of the files about
to be written cause it, so that those files alone end in ``ERROR``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.orm import Session

from cur_ray.adapters.db.billing_files import bulk_insert, dialect_insert, driver_value
from cur_ray.adapters.db.models import (
    MEASURE_COLUMNS,
    BillingFile,
    CostServiceMonthly,
    CostSummaryDaily,
    FileCost,
    ReportVersion,
    utcnow,
)
from cur_ray.domain.aggregation import DECIMAL_TYPE, WIDE_DECIMAL_TYPE
from cur_ray.domain.billing import FileStatus
from cur_ray.domain.versions import FileState, contributing_file_ids
from cur_ray.errors import AmountOutOfRangeError

__all__ = [
    "MONEY_MEASURES",
    "daily_costs",
    "dialect_insert",
    "monthly_costs",
    "period_file_states",
    "recompute_period_summaries",
    "refuse_out_of_range",
    "replace_file_costs",
]

MONEY_MEASURES = tuple(m for m in MEASURE_COLUMNS if m != "line_items")
_DAILY_KEY = ("usage_date", "usage_account_id", "currency")
_MONTHLY_KEY = ("usage_account_id", "service_code", "charge_category", "currency")
_ID_CHUNK = 500  # ids per IN (...) list
_WRITTEN = "cur_ray.written_file_costs"  # session.info: file id -> partials written here

_FILE_COST_COLUMNS = (
    "file_id",
    "project_id",
    "grain",
    "billing_period",
    "usage_date",
    "usage_account_id",
    "service_code",
    "service_name",
    "charge_category",
    "currency",
    *MEASURE_COLUMNS,
)
_COST_FIELDS: list[pa.Field] = [
    pa.field("grain", pa.string()),
    pa.field("billing_period", pa.date32()),
    pa.field("usage_date", pa.date32()),
    pa.field("usage_account_id", pa.string()),
    pa.field("service_code", pa.string()),
    pa.field("service_name", pa.string()),
    pa.field("charge_category", pa.string()),
    pa.field("currency", pa.string()),
    *(pa.field(m, DECIMAL_TYPE) for m in MONEY_MEASURES),
    pa.field("line_items", pa.int64()),
]
_COST_SCHEMA = pa.schema(_COST_FIELDS)


# ------------------------------------------------------------------------------ bulk SQL


def _money_texts(column: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """Exact decimal text of a money column, as the ``Money`` type stores it (no exponent)."""
    if not pa.types.is_decimal(column.type):
        column = column.cast(DECIMAL_TYPE)
    texts: list[str | None] = column.cast(pa.string()).to_pylist()
    # Arrow writes small magnitudes with an exponent ("0E-18"); the Money type never does.
    return [t if t is None or "E" not in t else format(Decimal(t), "f") for t in texts]


def _date_values(column: pa.ChunkedArray | pa.Array, dialect: str) -> list[Any]:
    """Dates as the driver takes them: ISO text on SQLite (SQLAlchemy's format), else dates."""
    if dialect == "sqlite":
        texts: list[Any] = column.cast(pa.string()).to_pylist()
        return texts
    dates: list[Any] = column.to_pylist()
    return dates


def _written(session: Session) -> dict[int, pa.Table]:
    written: dict[int, pa.Table] = session.info.setdefault(_WRITTEN, {})
    return written


# ------------------------------------------------------------------------------ file costs


def replace_file_costs(session: Session, file_id: int, project_id: str, partials: pa.Table) -> None:
    """Replace the stored partial aggregates of one file with ``partials`` (one bulk insert).

    The partials are remembered on the session, so the summaries recomputed later in the
    same transaction are summed from them without reading the rows back.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    connection.exec_driver_sql(
        f"DELETE FROM {FileCost.__tablename__} WHERE file_id = "
        f"{'?' if dialect == 'sqlite' else '%s'}",
        (file_id,),
    )
    n = partials.num_rows
    columns: list[list[Any]] = [
        [file_id] * n,
        [project_id] * n,
        partials["grain"].to_pylist(),
        _date_values(partials["billing_period"], dialect),
        _date_values(partials["usage_date"], dialect),
        partials["usage_account_id"].to_pylist(),
        partials["service_code"].to_pylist(),
        partials["service_name"].to_pylist(),
        partials["charge_category"].to_pylist(),
        partials["currency"].to_pylist(),
        *(_money_texts(partials[m]) for m in MONEY_MEASURES),
        partials["line_items"].to_pylist(),
    ]
    bulk_insert(
        connection,
        FileCost.__tablename__,
        _FILE_COST_COLUMNS,
        list(zip(*columns, strict=True)),
    )
    _written(session)[file_id] = _conformed(partials)


def _stored_costs(session: Session, file_ids: Sequence[int]) -> pa.Table:
    """The stored file costs of ``file_ids`` as an Arrow table (exact decimals)."""
    connection = session.connection()
    sqlite = connection.dialect.name == "sqlite"
    names = [f.name for f in _COST_FIELDS]
    rows: list[Any] = []
    for start in range(0, len(file_ids), _ID_CHUNK):
        ids = list(file_ids[start : start + _ID_CHUNK])
        marks = ", ".join(("?" if sqlite else "%s") for _ in ids)
        sql = f"SELECT {', '.join(names)} FROM {FileCost.__tablename__} WHERE file_id IN ({marks})"
        rows.extend(connection.exec_driver_sql(sql, tuple(ids)).fetchall())
    arrays = []
    for index, field in enumerate(_COST_FIELDS):
        values = [row[index] for row in rows]
        textual = pa.types.is_decimal(field.type) or pa.types.is_date(field.type)
        if textual and any(isinstance(v, str) for v in values):  # SQLite keeps text
            arrays.append(pa.array(values, pa.string()).cast(field.type))
        else:
            arrays.append(cast(pa.Array, pa.array(values, field.type)))
    return pa.Table.from_arrays(arrays, schema=_COST_SCHEMA)


def _conformed(partials: pa.Table) -> pa.Table:
    return partials.select(_COST_SCHEMA.names).cast(_COST_SCHEMA)


def _contributing_costs(session: Session, file_ids: Sequence[int]) -> pa.Table:
    written = _written(session)
    tables = [written[i] for i in file_ids if i in written]
    stored = [i for i in file_ids if i not in written]
    if stored:
        tables.append(_stored_costs(session, stored))
    if not tables:
        return _COST_SCHEMA.empty_table()
    return pa.concat_tables(tables)


# ------------------------------------------------------------------------------ summaries


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
    """Rewrite the daily and monthly summaries of one (project, period) from file costs.

    Raises :class:`AmountOutOfRangeError`, having written nothing, when a summary figure
    would reach 1e20 in absolute value.
    """
    ids = sorted(
        contributing_file_ids(
            period_file_states(session, project_id, period),
            _version_order(session, project_id, period),
        )
    )
    daily, monthly = _period_sums(_contributing_costs(session, ids), period)
    now = utcnow()
    _write(session, CostSummaryDaily, project_id, period, daily, _DAILY_KEY, now)
    _write(session, CostServiceMonthly, project_id, period, monthly, _MONTHLY_KEY, now)


def refuse_out_of_range(
    session: Session, project_id: str, period: dt.date, candidates: Mapping[int, pa.Table]
) -> dict[int, str]:
    """Which files about to be written would push a summary of ``period`` to 1e20 or more.

    ``candidates`` maps the ids of claimed files of the period to the partials about to be
    stored for them. They are admitted one by one in id order, each while the summaries of
    the period, with it and the files admitted before it marked ``DONE`` as
    :func:`~cur_ray.adapters.db.claims.mark_done` would, all stay below 1e20; the others are
    returned (id → reason) to end in ``ERROR``, keeping any costs they had before. Call it
    before writing any of the candidates, holding the period's lock. Only needed once
    :func:`recompute_period_summaries` has refused the period: it sums the period once per
    candidate.
    """
    states = period_file_states(session, project_id, period)
    order = _version_order(session, project_id, period)
    stored: dict[int, pa.Table] = {}
    admitted: dict[int, pa.Table] = {}
    refused: dict[int, str] = {}
    for file_id in sorted(candidates):
        trial = {**admitted, file_id: _conformed(candidates[file_id])}
        simulated = [
            dataclasses.replace(s, status=FileStatus.DONE, costs_etag=s.etag)
            if s.file_id in trial
            else s
            for s in states
        ]
        tables = []
        for i in sorted(contributing_file_ids(simulated, order)):
            if i not in trial and i not in stored:
                stored[i] = _contributing_costs(session, [i])
            tables.append(trial[i] if i in trial else stored[i])
        costs = pa.concat_tables(tables) if tables else _COST_SCHEMA.empty_table()
        try:
            _period_sums(costs, period)
        except AmountOutOfRangeError as exc:
            refused[file_id] = f"{exc.message} with this file's costs: refused, not stored"
        else:
            admitted[file_id] = trial[file_id]
    return refused


def _period_sums(costs: pa.Table, period: dt.date) -> tuple[pa.Table, pa.Table]:
    """The daily and monthly sums of a period's costs, refusing figures of 1e20 or more."""
    return _narrowed(_summed(costs, "daily"), period), _narrowed(_summed(costs, "monthly"), period)


def _narrowed(sums: pa.Table, period: dt.date) -> pa.Table:
    """``sums`` with its 256-bit money columns back in ``decimal(38, 18)`` (|x| < 1e20)."""
    for m in MONEY_MEASURES:
        try:
            column = sums[m].cast(DECIMAL_TYPE)  # a checked cast
        except pa.ArrowInvalid as exc:
            raise AmountOutOfRangeError(
                f"{m} of billing period {period:%Y-%m} would total 1e20 or more in "
                "absolute value (beyond decimal(38, 18))"
            ) from exc
        sums = sums.set_column(sums.schema.get_field_index(m), m, column)
    return sums


def _summed(costs: pa.Table, grain: str) -> pa.Table:
    """Exact sums of one grain's rows per summary key (``service_name``: the largest)."""
    keys = list(_DAILY_KEY if grain == "daily" else _MONTHLY_KEY)
    rows = costs.filter(pc.equal(costs["grain"], pa.scalar(grain)))
    # 256-bit sums: a period total beyond decimal(38, 18) must be seen (and refused), not
    # wrap around.
    for m in MONEY_MEASURES:
        index = rows.schema.get_field_index(m)
        rows = rows.set_column(index, m, rows[m].cast(WIDE_DECIMAL_TYPE))
    options = pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)
    aggregations: list[Any] = [(m, "sum", options) for m in MONEY_MEASURES]
    aggregations.append(("line_items", "sum"))
    if grain == "monthly":
        aggregations.append(("service_name", "max"))
    grouped = rows.group_by(keys, use_threads=False).aggregate(aggregations)
    renamed = {f"{m}_sum": m for m in MEASURE_COLUMNS}
    renamed["service_name_max"] = "service_name"
    return grouped.rename_columns([renamed.get(n, n) for n in grouped.column_names])


def _key_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _write(
    session: Session,
    model: Any,
    project_id: str,
    period: dt.date,
    sums: pa.Table,
    keys: tuple[str, ...],
    now: dt.datetime,
) -> None:
    """Upsert the summary rows of one (project, period) and drop rows without a source."""
    connection = session.connection()
    dialect = connection.dialect
    table = model.__table__
    n = sums.num_rows
    # The driver value of ``now`` exactly as the column type writes it (text on SQLite).
    stamp = driver_value(table.c.updated_at, connection)
    period_value = driver_value(table.c.billing_period, connection)(period)
    extra = ["service_name"] if model is CostServiceMonthly else []
    columns = ["project_id", "billing_period", *keys, *extra, *MEASURE_COLUMNS, "updated_at"]
    values: list[list[Any]] = [[project_id] * n, [period_value] * n]
    for key in keys:
        column = sums[key]
        is_date = pa.types.is_date(column.type)
        values.append(_date_values(column, dialect.name) if is_date else column.to_pylist())
    values.extend(sums[name].to_pylist() for name in extra)
    values.extend(_money_texts(sums[m]) for m in MONEY_MEASURES)
    values.append([int(v or 0) for v in sums["line_items"].to_pylist()])
    values.append([stamp(now)] * n)
    bulk_insert(
        connection,
        table.name,
        columns,
        list(zip(*values, strict=True)),
        conflict=["project_id", "billing_period", *keys],
        update=[*extra, *MEASURE_COLUMNS, "updated_at"],
    )
    kept = {
        tuple(_key_text(v) for v in row) for row in zip(*values[2 : 2 + len(keys)], strict=True)
    }
    existing = session.execute(
        select(table.c.id, *(table.c[k] for k in keys)).where(
            table.c.project_id == project_id, table.c.billing_period == period
        )
    ).all()
    stale = [row[0] for row in existing if tuple(_key_text(v) for v in row[1:]) not in kept]
    for start in range(0, len(stale), _ID_CHUNK):
        session.execute(table.delete().where(table.c.id.in_(stale[start : start + _ID_CHUNK])))


# ------------------------------------------------------------------------------ queries


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
