"""Persistence of ``finops_billing_files`` and ``finops_report_versions`` for Batch A."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cur_ray.adapters.db.models import BillingFile, ReportVersion, utcnow
from cur_ray.domain.billing import FileStatus
from cur_ray.domain.discovery import CurrentVersion, DiscoveredFile

_CHUNK = 1000  # rows per UPDATE batch and ids per IN (...) list


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT supporting ``on_conflict_do_nothing``/``do_update`` for the session's backend."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass
class RegistrationCounts:
    """What one project's registration changed."""

    registered: int = 0
    requeued: int = 0
    superseded: int = 0
    affected_periods: set[dt.date] | None = None


@dataclass(frozen=True)
class _Known:
    id: int
    etag: str
    status: str
    version_id: str | None
    costs_etag: str | None
    billing_period: dt.date


def record_versions(session: Session, project_id: str, versions: Iterable[CurrentVersion]) -> None:
    """Remember every version a manifest named current (idempotent, keeps first-seen order)."""
    rows = [
        {
            "project_id": project_id,
            "report_name": v.report_name,
            "billing_period": v.billing_period,
            "version_id": v.version_id,
            "manifest_key": v.manifest_key,
            "first_seen_at": utcnow(),
        }
        for v in versions
    ]
    if rows:
        stmt = dialect_insert(session, ReportVersion.__table__).on_conflict_do_nothing()
        session.execute(stmt, rows)


def register_files(
    session: Session, project_id: str, bucket: str, files: Sequence[DiscoveredFile]
) -> RegistrationCounts:
    """Apply a discovery plan: insert new files, requeue changed ones, supersede old/vanished.

    New rows go in with ``INSERT … ON CONFLICT DO NOTHING`` on the unique
    (project, bucket, key), so concurrent runs never create duplicates. The insert is one
    bulk statement per status (see :func:`bulk_insert`); its row count says how many rows a
    concurrent run had not already inserted.
    """
    counts = RegistrationCounts(affected_periods=set())
    known = _known_files(session, project_id, bucket)
    now = utcnow()

    new_files = [f for f in files if f.key not in known]
    connection = session.connection()
    row = _row_builder(connection, project_id, bucket, now)
    for current in (True, False):
        rows = [row(f) for f in new_files if f.current is current]
        inserted = bulk_insert(
            connection,
            BillingFile.__tablename__,
            _NEW_FILE_COLUMNS,
            rows,
            conflict=["project_id", "bucket_name", "object_key"],
        )
        if current:
            counts.registered += inserted
        else:
            counts.superseded += inserted

    listed: set[str] = set()
    changes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for f in files:
        listed.add(f.key)
        known_row = known.get(f.key)
        if known_row is None:
            continue
        values = _changes(known_row, f)
        if values:
            if values.get("status") == FileStatus.PENDING:
                counts.requeued += 1
            if values.get("status") == FileStatus.SUPERSEDED:
                counts.superseded += 1
                counts.affected_periods.add(known_row.billing_period)  # type: ignore[union-attr]
            values["updated_at"] = now
            # Rows changing the same columns are updated together (executemany by id).
            changes.setdefault(tuple(sorted(values)), []).append({"id": known_row.id, **values})
    vanished = sorted(
        (
            row
            for key, row in known.items()
            if key not in listed and row.status != FileStatus.SUPERSEDED
        ),
        key=lambda row: row.id,
    )
    _lock_in_id_order(
        session, [r["id"] for rows in changes.values() for r in rows] + [r.id for r in vanished]
    )
    for rows_of_kind in changes.values():
        for start in range(0, len(rows_of_kind), _CHUNK):
            session.execute(update(BillingFile), rows_of_kind[start : start + _CHUNK])

    for start in range(0, len(vanished), _CHUNK):
        gone = vanished[start : start + _CHUNK]
        session.execute(
            update(BillingFile)
            .where(BillingFile.id.in_([row.id for row in gone]))
            .values(
                status=FileStatus.SUPERSEDED, claimed_by=None, lease_expires_at=None, updated_at=now
            )
        )
        counts.superseded += len(gone)
        counts.affected_periods.update(row.billing_period for row in gone)  # type: ignore[union-attr]
    return counts


def _lock_in_id_order(session: Session, ids: list[int]) -> None:
    """Lock the rows about to change in ascending id order, as Batch B's write does.

    Two transactions that lock rows of one table in the same order cannot deadlock on them;
    without this, Batch A's updates (grouped by kind) locked rows in listing order. SQLite
    has no row locks (its write transactions run one at a time): nothing to do there.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        session.execute(
            select(BillingFile.id)
            .where(BillingFile.id.in_(chunk))
            .order_by(BillingFile.id)
            .with_for_update()
        ).all()


def _known_files(session: Session, project_id: str, bucket: str) -> dict[str, _Known]:
    query = select(
        BillingFile.object_key,
        BillingFile.id,
        BillingFile.etag,
        BillingFile.status,
        BillingFile.version_id,
        BillingFile.costs_etag,
        BillingFile.billing_period,
    ).where(BillingFile.project_id == project_id, BillingFile.bucket_name == bucket)
    return {r[0]: _Known(*r[1:]) for r in session.execute(query)}


_NEW_FILE_COLUMNS = (
    "project_id",
    "bucket_name",
    "object_key",
    "etag",
    "size_bytes",
    "last_modified",
    "report_name",
    "billing_period",
    "format",
    "version_id",
    "status",
    "attempts",
    "created_at",
    "updated_at",
)


def _row_builder(
    connection: Connection, project_id: str, bucket: str, now: dt.datetime
) -> Callable[[DiscoveredFile], tuple[Any, ...]]:
    """A function giving the driver values of a new file's row (:data:`_NEW_FILE_COLUMNS`).

    Values are converted exactly as the model's column types would (the dialect's own bind
    processors: datetimes and dates are text on SQLite).
    """
    table = BillingFile.__table__
    stamp = driver_value(table.c.updated_at, connection)
    day = driver_value(table.c.billing_period, connection)
    created = stamp(now)

    def row(f: DiscoveredFile) -> tuple[Any, ...]:
        return (
            project_id,
            bucket,
            f.key,
            f.etag,
            f.size,
            None if f.last_modified is None else stamp(f.last_modified),
            f.report_name,
            day(f.billing_period),
            f.format.value,
            f.version_id,
            _PENDING if f.current else _SUPERSEDED,
            0,
            created,
            created,
        )

    return row


_PENDING = FileStatus.PENDING.value
_SUPERSEDED = FileStatus.SUPERSEDED.value


def driver_value(column: ColumnElement[Any], connection: Connection) -> Callable[[Any], Any]:
    """How ``column``'s type turns a Python value into what the driver takes.

    The dialect's own bind processor (dates and datetimes are text on SQLite), for bulk
    statements that bypass the ORM but must store exactly what it would.
    """
    dialect = connection.dialect
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process or _unchanged


def _unchanged(value: Any) -> Any:
    return value


def bulk_insert(
    connection: Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    conflict: Sequence[str] = (),
    update: Sequence[str] = (),
) -> int:
    """Insert many rows in bulk inside the caller's transaction; returns the rows inserted.

    ``rows`` hold driver values in ``columns`` order (numbers of ``NUMERIC`` columns may be
    exact decimal text). With ``conflict`` (the columns of a unique constraint) rows already
    present are left alone (``ON CONFLICT DO NOTHING``), or, with ``update``, overwritten in
    those columns (an upsert; the count then includes updated rows).

    SQLite: one prepared ``INSERT`` run by the driver's ``executemany``. PostgreSQL:
    ``COPY … FROM STDIN`` straight into the table, or, with ``conflict``, into a temporary
    staging table followed by one ``INSERT … SELECT … ON CONFLICT`` statement.
    """
    if not rows:
        return 0
    clause = ""
    if conflict:
        clause = f" ON CONFLICT ({', '.join(conflict)}) DO "
        if update:
            clause += "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
        else:
            clause += "NOTHING"
    names = ", ".join(columns)
    if connection.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table} ({names}) VALUES ({marks}){clause}"
        return int(connection.exec_driver_sql(sql, list(rows)).rowcount)
    if not conflict:
        _copy(connection, table, names, rows)
        return len(rows)
    stage = f"cur_ray_stage_{uuid.uuid4().hex[:16]}"
    # Column types without constraints or defaults; dropped at the latest with the commit.
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
    )
    _copy(connection, stage, names, rows)
    result = connection.exec_driver_sql(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage}{clause}"
    )
    connection.exec_driver_sql(f"DROP TABLE {stage}")
    return int(result.rowcount)


def _copy(connection: Connection, table: str, names: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """PostgreSQL ``COPY FROM STDIN`` of ``rows`` on the connection's psycopg connection.

    Driver errors come out as SQLAlchemy's (``DBAPIError`` subclasses), like those of every
    other statement, so callers translate them the same way.
    """
    statement = f"COPY {table} ({names}) FROM STDIN"
    driver: Any = connection.connection.driver_connection
    dbapi_error = connection.dialect.loaded_dbapi.Error
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi_error as exc:
        raise DBAPIError.instance(
            statement, None, exc, dbapi_error, hide_parameters=True, dialect=connection.dialect
        ) from exc


def _changes(row: _Known, f: DiscoveredFile) -> dict[str, Any]:
    """The column updates that bring a known row in line with what was just discovered."""
    values: dict[str, Any] = {}
    if not f.current:
        if row.status != FileStatus.SUPERSEDED:
            values.update(status=FileStatus.SUPERSEDED, claimed_by=None, lease_expires_at=None)
        return values
    if row.version_id != f.version_id:
        values["version_id"] = f.version_id
    if row.etag != f.etag:
        # Overwrite-mode re-delivery: same key, new content.
        values.update(
            etag=f.etag,
            size_bytes=f.size,
            last_modified=f.last_modified,
            format=f.format.value,
            status=FileStatus.PENDING,
            error_message=None,
            claimed_by=None,
            lease_expires_at=None,
        )
    elif row.status == FileStatus.SUPERSEDED:
        # Current again (a manifest named it back, or it reappeared).
        status = FileStatus.DONE if row.costs_etag == f.etag else FileStatus.PENDING
        values.update(status=status, error_message=None)
    return values
