"""One engine per process, sessions, migrations, and driver-error translation.

PostgreSQL is the production database; SQLite is the embedded default. SQLite gets foreign
keys, WAL, a busy timeout and an exact ``decimal_sum`` aggregate (its own ``SUM`` would turn
decimal text into floats).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import GenericFunction

from cur_ray.errors import ConfigurationError, DatabaseError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CONFLICT_ATTEMPTS = 3  # runs of a transaction that PostgreSQL rolls back to break a conflict
T = TypeVar("T")
log = logging.getLogger(__name__)


class TransactionConflict(DatabaseError):
    """PostgreSQL rolled the transaction back to break a conflict with another one.

    SQLSTATE class 40: a deadlock (two writers locking rows in different orders, e.g.
    Batch A superseding files while Batch B writes them) or a serialization failure.
    Nothing of the transaction was kept; running it again can succeed at once.
    """


class exact_sum(GenericFunction[Decimal]):
    """``SUM`` that stays exact on both backends: NUMERIC on PostgreSQL, decimal text on SQLite."""

    name = "exact_sum"
    inherit_cache = True


@compiles(exact_sum)
def _exact_sum_default(element: exact_sum, compiler: Any, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(exact_sum, "sqlite")
def _exact_sum_sqlite(element: exact_sum, compiler: Any, **kw: Any) -> str:
    return f"decimal_sum({compiler.process(element.clauses, **kw)})"


class _DecimalSum:
    """SQLite aggregate summing decimal text exactly; NULL when every input is NULL."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is None:
            return
        amount = Decimal(str(value))
        self.total = amount if self.total is None else self.total + amount

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    dbapi_connection.create_aggregate("decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _normalise_url(url: str) -> str:
    # Users paste libpq-style URLs; SQLAlchemy needs the psycopg 3 driver named.
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def make_engine(url: str) -> Engine:
    """Create the process's engine for ``url`` (SQLite or PostgreSQL)."""
    url = _normalise_url(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _configure_sqlite)
            # pysqlite's own transaction handling defers BEGIN; emit it ourselves so that
            # the claim's conditional UPDATE runs in a real write transaction.
            event.listen(engine, "connect", _disable_pysqlite_begin)
            event.listen(engine, "begin", _sqlite_begin_immediate)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ValueError) as exc:
        raise ConfigurationError(f"invalid DATABASE_URL: {type(exc).__name__}") from exc


def _disable_pysqlite_begin(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass
class Database:
    """The engine and session factory of this process."""

    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def from_url(cls, url: str) -> Database:
        """Build the engine and a session factory (``expire_on_commit=False``)."""
        engine = make_engine(url)
        return cls(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))

    @property
    def is_postgres(self) -> bool:
        """True when the backend is PostgreSQL."""
        return self.engine.dialect.name == "postgresql"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error.

        Driver errors are translated into :class:`~cur_ray.errors.DatabaseError`.
        """
        with translate_db_errors(), self.sessions.begin() as session:
            yield session

    def run_transaction(
        self, work: Callable[[Session], T], *, attempts: int = CONFLICT_ATTEMPTS
    ) -> T:
        """Run ``work`` in one transaction; run it again when it loses a database conflict.

        ``work`` must not have effects outside the session (it may run up to ``attempts``
        times); only :class:`TransactionConflict` is retried, after a short pause.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as session:
                    return work(session)
            except TransactionConflict as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "transaction lost a database conflict; running it again",
                    extra={"error": exc.message, "attempt": attempt},
                )
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


@contextlib.contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn SQLAlchemy/driver errors into :class:`DatabaseError`, keeping the cause."""
    try:
        yield
    except DBAPIError as exc:
        if str(getattr(exc.orig, "sqlstate", None) or "").startswith("40"):
            raise TransactionConflict(f"database conflict: {_short(exc)}") from exc
        if isinstance(exc, OperationalError):
            raise DatabaseError(f"database unavailable: {_short(exc)}") from exc
        raise DatabaseError(f"database error: {_short(exc)}") from exc


def _short(exc: DBAPIError) -> str:
    # The driver's first line; never the bound parameters (they may hold secrets).
    return str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__


def lock_period_summaries(session: Session, project_id: str, period: dt.date) -> None:
    """Wait for, then hold until commit, the right to recompute one period's summaries.

    Summaries are recomputed from the files a transaction can see. Two transactions writing
    files of the same (project, period) at once (two workers, or Batch A re-queuing files
    while Batch B writes) would each miss the other's uncommitted files, and the later
    commit would overwrite the summaries with sums missing the earlier one's files. Taking
    this lock *before* reading the period's files makes them take turns: under PostgreSQL's
    READ COMMITTED (the engine's level) every statement after the lock sees what the
    previous holder committed. Callers lock periods in ascending order, so two writers
    never wait for each other in a cycle.

    PostgreSQL: a transaction-scoped advisory lock on two 32-bit hashes (a collision only
    makes two unrelated periods take turns). SQLite: nothing to do, its write transactions
    (``BEGIN IMMEDIATE``) already run one at a time.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:scope), hashtext(:key))"),
        {"scope": f"cur_ray.period_summaries:{project_id}", "key": period.isoformat()},
    )


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations and ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", _normalise_url(url).replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest)."""
    with translate_db_errors():
        command.upgrade(alembic_config(url), revision)
