"""Vocabulary shared by both batches: file statuses and CUR source formats."""

from __future__ import annotations

from enum import StrEnum


class FileStatus(StrEnum):
    """Life cycle of a row of ``finops_billing_files``."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    ERROR = "ERROR"
    SUPERSEDED = "SUPERSEDED"


class SourceFormat(StrEnum):
    """The format of one CUR data file.

    Batch A guesses it from the key layout (and a CUR 2.0/FOCUS manifest's column list);
    Batch B confirms it from the header or Parquet schema before reading.
    """

    LEGACY_CSV = "legacy-csv"  # lineItem/UnblendedCost headers; .csv, .csv.gz, .zip
    LEGACY_PARQUET = "legacy-parquet"  # Athena integration: line_item_unblended_cost
    CUR2_PARQUET = "cur2-parquet"  # Data Exports CUR 2.0
    CUR2_CSV = "cur2-csv"
    FOCUS_PARQUET = "focus-parquet"  # Data Exports FOCUS 1.x: BilledCost, EffectiveCost
    FOCUS_CSV = "focus-csv"

    @property
    def is_parquet(self) -> bool:
        """True for the Parquet formats (read by row group)."""
        return self.value.endswith("parquet")

    @property
    def is_focus(self) -> bool:
        """True for FOCUS exports (BilledCost/EffectiveCost vocabulary)."""
        return self.value.startswith("focus")
