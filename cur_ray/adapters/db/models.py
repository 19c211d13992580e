"""SQLAlchemy 2 models for every table of SPEC §2.

Money is exact: ``NUMERIC(38, 18)`` on PostgreSQL and decimal *text* on SQLite (whose REAL
would round). Summaries are derived from ``finops_file_costs`` (see
``cur_ray.adapters.db.costs``) and never edited by hand.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class DecimalText(TypeDecorator[Decimal]):
    """A Decimal stored as text: SQLite's only exact representation."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        return None if value is None else format(Decimal(value), "f")

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


Money = Numeric(38, 18, asdecimal=True).with_variant(DecimalText(), "sqlite")


def utcnow() -> dt.datetime:
    """Timezone-aware current time, used for every timestamp the application writes."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention (for migrations)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class ProjectConnection(TimestampMixin, Base):
    """One tenant project and where its CUR files are delivered."""

    __tablename__ = "finops_project_connections"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    storage_type: Mapped[str] = mapped_column(String(8))  # "s3" | "file"
    cur_bucket_name: Mapped[str] = mapped_column(String(1024))  # bucket, or local folder path
    cur_prefix: Mapped[str] = mapped_column(String(1024), default="", server_default="")
    role_arn: Mapped[str | None] = mapped_column(String(2048))
    external_id_encrypted: Mapped[str | None] = mapped_column(Text)
    region: Mapped[str | None] = mapped_column(String(32))
    endpoint_url: Mapped[str | None] = mapped_column(String(2048))


class BillingFile(TimestampMixin, Base):
    """One CUR data file discovered by Batch A and processed by Batch B."""

    __tablename__ = "finops_billing_files"
    __table_args__ = (
        UniqueConstraint("project_id", "bucket_name", "object_key", name="uq_billing_files_object"),
        Index("ix_billing_files_claim", "status", "project_id", "created_at"),
        Index("ix_billing_files_period", "project_id", "billing_period"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("finops_project_connections.project_id", ondelete="CASCADE")
    )
    bucket_name: Mapped[str] = mapped_column(String(1024))
    object_key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    last_modified: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    report_name: Mapped[str] = mapped_column(String(256))
    billing_period: Mapped[dt.date] = mapped_column(Date)
    format: Mapped[str] = mapped_column(String(32))
    version_id: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error_message: Mapped[str | None] = mapped_column(Text)
    rows_read: Mapped[int | None] = mapped_column(BigInteger)
    bytes_read: Mapped[int | None] = mapped_column(BigInteger)
    costs_etag: Mapped[str | None] = mapped_column(String(256))  # ETag that file costs reflect
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ReportVersion(Base):
    """A version (legacy ``assemblyId`` / CUR 2.0 ``executionId``) that a manifest named current.

    ``id`` orders versions of one (project, report, period): a higher id was named later.
    """

    __tablename__ = "finops_report_versions"
    __table_args__ = (
        UniqueConstraint(
            "project_id",
            "report_name",
            "billing_period",
            "version_id",
            name="uq_report_versions_version",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("finops_project_connections.project_id", ondelete="CASCADE")
    )
    report_name: Mapped[str] = mapped_column(String(256))
    billing_period: Mapped[dt.date] = mapped_column(Date)
    version_id: Mapped[str] = mapped_column(String(256))
    manifest_key: Mapped[str] = mapped_column(String(1024))
    first_seen_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class MeasuresMixin:
    unblended_cost: Mapped[Decimal | None] = mapped_column(Money)
    blended_cost: Mapped[Decimal | None] = mapped_column(Money)
    net_unblended_cost: Mapped[Decimal | None] = mapped_column(Money)
    amortized_cost: Mapped[Decimal | None] = mapped_column(Money)
    net_amortized_cost: Mapped[Decimal | None] = mapped_column(Money)
    list_cost: Mapped[Decimal | None] = mapped_column(Money)
    line_items: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


MEASURE_COLUMNS: tuple[str, ...] = (
    "unblended_cost",
    "blended_cost",
    "net_unblended_cost",
    "amortized_cost",
    "net_amortized_cost",
    "list_cost",
    "line_items",
)


class FileCost(MeasuresMixin, Base):
    """Partial aggregates of one file on both summary grains (``grain`` = daily|monthly).

    Daily rows leave ``service_code``/``service_name``/``charge_category`` empty; monthly rows
    leave ``usage_date`` null. Replaced as a whole whenever the file is re-processed.
    """

    __tablename__ = "finops_file_costs"
    __table_args__ = (Index("ix_file_costs_file", "file_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("finops_billing_files.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(64))
    grain: Mapped[str] = mapped_column(String(8))
    billing_period: Mapped[dt.date] = mapped_column(Date)
    usage_date: Mapped[dt.date | None] = mapped_column(Date)
    usage_account_id: Mapped[str] = mapped_column(String(64))
    service_code: Mapped[str] = mapped_column(String(256), default="")
    service_name: Mapped[str] = mapped_column(String(512), default="")
    charge_category: Mapped[str] = mapped_column(String(32), default="")
    currency: Mapped[str] = mapped_column(String(8))


class CostSummaryDaily(MeasuresMixin, Base):
    """Daily costs per (project, billing period, usage date, account, currency)."""

    __tablename__ = "finops_cost_summary"
    __table_args__ = (
        UniqueConstraint(
            "project_id",
            "billing_period",
            "usage_date",
            "usage_account_id",
            "currency",
            name="uq_cost_summary_key",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("finops_project_connections.project_id", ondelete="CASCADE")
    )
    billing_period: Mapped[dt.date] = mapped_column(Date)
    usage_date: Mapped[dt.date] = mapped_column(Date)
    usage_account_id: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(8))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class CostServiceMonthly(MeasuresMixin, Base):
    """Monthly costs per (project, period, account, service, charge category, currency)."""

    __tablename__ = "finops_cost_service_monthly"
    __table_args__ = (
        UniqueConstraint(
            "project_id",
            "billing_period",
            "usage_account_id",
            "service_code",
            "charge_category",
            "currency",
            name="uq_cost_service_monthly_key",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("finops_project_connections.project_id", ondelete="CASCADE")
    )
    billing_period: Mapped[dt.date] = mapped_column(Date)
    usage_account_id: Mapped[str] = mapped_column(String(64))
    service_code: Mapped[str] = mapped_column(String(256))
    service_name: Mapped[str] = mapped_column(String(512))
    charge_category: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(8))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class BatchJob(Base):
    """One job of the durable queue (``cur-fetch`` / ``cur-aggregate``).

    ``status``: ``waiting`` → ``active`` (claimed, leased until ``lease_expires_at``) →
    ``completed`` | ``failed``, or back to ``waiting`` with a later ``run_after`` for a retry.
    See :mod:`cur_ray.adapters.db.jobs`.
    """

    __tablename__ = "finops_batch_jobs"
    __table_args__ = (
        # The claim scans one status in age order (waiting jobs, or active ones whose lease
        # may have expired); listing a project's jobs newest first uses the second index.
        Index("ix_batch_jobs_claim", "status", "created_at"),
        Index("ix_batch_jobs_project", "project_id", "created_at"),
    )

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str | None] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    run_after: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class BatchSchedule(Base):
    """A cron schedule with a fixed id (``cur-fetch-schedule`` / ``cur-aggregate-schedule``)."""

    __tablename__ = "finops_batch_schedules"

    schedule_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_name: Mapped[str] = mapped_column(String(32))
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    last_tick_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    next_tick_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class ApiKey(Base):
    """An HTTP API key, stored only as a SHA-256 hash; ``project_id`` null = admin."""

    __tablename__ = "finops_api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
