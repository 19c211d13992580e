"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 13:58:05.250483
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Exact money: NUMERIC on PostgreSQL, decimal text on SQLite (see models.DecimalText).
MONEY = sa.Numeric(precision=38, scale=18).with_variant(sa.String(length=64), "sqlite")


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "finops_api_keys",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=256), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_finops_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_finops_api_keys_key_hash")),
    )
    op.create_table(
        "finops_batch_jobs",
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=256), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_finops_batch_jobs")),
    )
    with op.batch_alter_table("finops_batch_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_batch_jobs_claim", ["status", "created_at"], unique=False)
        batch_op.create_index("ix_batch_jobs_project", ["project_id", "created_at"], unique=False)

    op.create_table(
        "finops_batch_schedules",
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("job_name", sa.String(length=32), nullable=False),
        sa.Column("cron", sa.String(length=128), nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("schedule_id", name=op.f("pk_finops_batch_schedules")),
    )
    op.create_table(
        "finops_project_connections",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("storage_type", sa.String(length=8), nullable=False),
        sa.Column("cur_bucket_name", sa.String(length=1024), nullable=False),
        sa.Column("cur_prefix", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("role_arn", sa.String(length=2048), nullable=True),
        sa.Column("external_id_encrypted", sa.Text(), nullable=True),
        sa.Column("region", sa.String(length=32), nullable=True),
        sa.Column("endpoint_url", sa.String(length=2048), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_finops_project_connections")),
    )
    op.create_table(
        "finops_billing_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("bucket_name", sa.String(length=1024), nullable=False),
        sa.Column("object_key", sa.String(length=1024), nullable=False),
        sa.Column("etag", sa.String(length=256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report_name", sa.String(length=256), nullable=False),
        sa.Column("billing_period", sa.Date(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("version_id", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claimed_by", sa.String(length=256), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("rows_read", sa.BigInteger(), nullable=True),
        sa.Column("bytes_read", sa.BigInteger(), nullable=True),
        sa.Column("costs_etag", sa.String(length=256), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["finops_project_connections.project_id"],
            name=op.f("fk_finops_billing_files_project_id_finops_project_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finops_billing_files")),
        sa.UniqueConstraint(
            "project_id", "bucket_name", "object_key", name="uq_billing_files_object"
        ),
    )
    with op.batch_alter_table("finops_billing_files", schema=None) as batch_op:
        batch_op.create_index(
            "ix_billing_files_claim", ["status", "project_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_billing_files_period", ["project_id", "billing_period"], unique=False
        )

    op.create_table(
        "finops_cost_service_monthly",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("billing_period", sa.Date(), nullable=False),
        sa.Column("usage_account_id", sa.String(length=64), nullable=False),
        sa.Column("service_code", sa.String(length=256), nullable=False),
        sa.Column("service_name", sa.String(length=512), nullable=False),
        sa.Column("charge_category", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("unblended_cost", MONEY, nullable=True),
        sa.Column("blended_cost", MONEY, nullable=True),
        sa.Column("net_unblended_cost", MONEY, nullable=True),
        sa.Column("amortized_cost", MONEY, nullable=True),
        sa.Column("net_amortized_cost", MONEY, nullable=True),
        sa.Column("list_cost", MONEY, nullable=True),
        sa.Column("line_items", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["finops_project_connections.project_id"],
            name=op.f("fk_finops_cost_service_monthly_project_id_finops_project_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finops_cost_service_monthly")),
        sa.UniqueConstraint(
            "project_id",
            "billing_period",
            "usage_account_id",
            "service_code",
            "charge_category",
            "currency",
            name="uq_cost_service_monthly_key",
        ),
    )
    op.create_table(
        "finops_cost_summary",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("billing_period", sa.Date(), nullable=False),
        sa.Column("usage_date", sa.Date(), nullable=False),
        sa.Column("usage_account_id", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("unblended_cost", MONEY, nullable=True),
        sa.Column("blended_cost", MONEY, nullable=True),
        sa.Column("net_unblended_cost", MONEY, nullable=True),
        sa.Column("amortized_cost", MONEY, nullable=True),
        sa.Column("net_amortized_cost", MONEY, nullable=True),
        sa.Column("list_cost", MONEY, nullable=True),
        sa.Column("line_items", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["finops_project_connections.project_id"],
            name=op.f("fk_finops_cost_summary_project_id_finops_project_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finops_cost_summary")),
        sa.UniqueConstraint(
            "project_id",
            "billing_period",
            "usage_date",
            "usage_account_id",
            "currency",
            name="uq_cost_summary_key",
        ),
    )
    op.create_table(
        "finops_report_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("report_name", sa.String(length=256), nullable=False),
        sa.Column("billing_period", sa.Date(), nullable=False),
        sa.Column("version_id", sa.String(length=256), nullable=False),
        sa.Column("manifest_key", sa.String(length=1024), nullable=False),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["finops_project_connections.project_id"],
            name=op.f("fk_finops_report_versions_project_id_finops_project_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finops_report_versions")),
        sa.UniqueConstraint(
            "project_id",
            "report_name",
            "billing_period",
            "version_id",
            name="uq_report_versions_version",
        ),
    )
    op.create_table(
        "finops_file_costs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("grain", sa.String(length=8), nullable=False),
        sa.Column("billing_period", sa.Date(), nullable=False),
        sa.Column("usage_date", sa.Date(), nullable=True),
        sa.Column("usage_account_id", sa.String(length=64), nullable=False),
        sa.Column("service_code", sa.String(length=256), nullable=False),
        sa.Column("service_name", sa.String(length=512), nullable=False),
        sa.Column("charge_category", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("unblended_cost", MONEY, nullable=True),
        sa.Column("blended_cost", MONEY, nullable=True),
        sa.Column("net_unblended_cost", MONEY, nullable=True),
        sa.Column("amortized_cost", MONEY, nullable=True),
        sa.Column("net_amortized_cost", MONEY, nullable=True),
        sa.Column("list_cost", MONEY, nullable=True),
        sa.Column("line_items", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["finops_billing_files.id"],
            name=op.f("fk_finops_file_costs_file_id_finops_billing_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finops_file_costs")),
    )
    with op.batch_alter_table("finops_file_costs", schema=None) as batch_op:
        batch_op.create_index("ix_file_costs_file", ["file_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("finops_file_costs", schema=None) as batch_op:
        batch_op.drop_index("ix_file_costs_file")

    op.drop_table("finops_file_costs")
    op.drop_table("finops_report_versions")
    op.drop_table("finops_cost_summary")
    op.drop_table("finops_cost_service_monthly")
    with op.batch_alter_table("finops_billing_files", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_files_period")
        batch_op.drop_index("ix_billing_files_claim")

    op.drop_table("finops_billing_files")
    op.drop_table("finops_project_connections")
    op.drop_table("finops_batch_schedules")
    with op.batch_alter_table("finops_batch_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_batch_jobs_project")
        batch_op.drop_index("ix_batch_jobs_claim")

    op.drop_table("finops_batch_jobs")
    op.drop_table("finops_api_keys")
