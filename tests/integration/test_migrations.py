"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from cur_ray.adapters.db.engine import alembic_config, upgrade_database
from cur_ray.adapters.db.models import Base

SPEC_TABLES = {
    "finops_project_connections",
    "finops_billing_files",
    "finops_file_costs",
    "finops_cost_summary",
    "finops_cost_service_monthly",
    "finops_batch_jobs",
    "finops_batch_schedules",
}


def test_migrated_schema_matches_models(database_url: str) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert tables >= SPEC_TABLES


def test_upgrade_is_idempotent_and_downgrade_removes_everything(database_url: str) -> None:
    upgrade_database(database_url)  # already at head: a no-op, not an error

    command.downgrade(alembic_config(database_url), "base")
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
