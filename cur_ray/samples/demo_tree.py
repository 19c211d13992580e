"""A small, realistic multi-format CUR delivery for one project (``cur-ray demo``, tests).

:func:`build_demo_tree` writes, under one storage root:

* a legacy CUR CSV.gz report (``acme-legacy-cur``) for January and February 2024; January
  is one assembly in two files, February was re-delivered: an older assembly (the first
  half of the month) and the current one named by the period manifest;
* a CUR 2.0 Parquet export (``acme-cur2``) for March 2024, in row groups of 250 rows;
* a FOCUS 1.0 CSV.gz export (``acme-focus``) for April 2024.

Each month is a different period, so the project's totals are the plain sum of the current
data sets. :class:`DemoTree` records every data set written, which are current, and the
expected figures of the current ones (:mod:`cur_ray.samples.expected`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cur_ray.domain.billing import SourceFormat
from cur_ray.samples.expected import (
    DailyKey,
    Figures,
    MonthlyKey,
    expected_daily,
    expected_monthly,
    merge_figures,
)
from cur_ray.samples.line_items import LineItem, generate_line_items
from cur_ray.samples.writers import (
    DEFAULT_BUCKET,
    write_data_export,
    write_legacy_csv_export,
)

__all__ = [
    "DEMO_CUR2_EXPORT",
    "DEMO_FOCUS_EXPORT",
    "DEMO_LEGACY_REPORT",
    "DemoDataset",
    "DemoTree",
    "build_demo_tree",
]

DEMO_LEGACY_REPORT = "acme-legacy-cur"
DEMO_CUR2_EXPORT = "acme-cur2"
DEMO_FOCUS_EXPORT = "acme-focus"

_JANUARY, _FEBRUARY, _MARCH, _APRIL = (date(2024, m, 1) for m in (1, 2, 3, 4))
_ASSEMBLY_JAN = "5d1f0a3c-2b7e-4c9a-8f61-0e4d2c7b9a10"
_ASSEMBLY_FEB_OLD = "8a2c4e6f-1b3d-4f5a-9c7e-2d4f6a8c0e21"
_ASSEMBLY_FEB_NEW = "c3e5a7b9-4d6f-4a1c-8e2b-5f7a9c1e3b32"
_EXECUTION_MAR = "0f9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e43"
_EXECUTION_APR = "7e6d5c4b-3a29-4f18-8e07-6d5c4b3a2f54"
_FEBRUARY_REDELIVERY_CUTOFF = "2024-02-15"


@dataclass(frozen=True)
class DemoDataset:
    """One delivered version of one (report/export, billing period)."""

    name: str  # report or export name
    source_format: SourceFormat
    period: date
    version_id: str  # assemblyId / executionId
    current: bool  # named by the period's manifest
    items: tuple[LineItem, ...]
    keys: tuple[str, ...]  # data keys, relative to the root

    @property
    def focus(self) -> bool:
        """True for a FOCUS export (figures have no blended/net measures)."""
        return self.source_format.is_focus


@dataclass
class DemoTree:
    """What :func:`build_demo_tree` wrote."""

    root: Path
    prefix: str
    datasets: list[DemoDataset]

    def current_datasets(self) -> list[DemoDataset]:
        """The data sets a correct Batch A keeps current (one per report/export and period)."""
        return [d for d in self.datasets if d.current]

    @property
    def current(self) -> dict[tuple[str, date], tuple[LineItem, ...]]:
        """Current items per (report/export name, billing period)."""
        return {(d.name, d.period): d.items for d in self.current_datasets()}

    @property
    def periods(self) -> list[date]:
        """The billing periods of the tree, sorted."""
        return sorted({d.period for d in self.datasets})

    def current_keys(self) -> list[str]:
        """Data keys of the current versions."""
        return sorted(k for d in self.current_datasets() for k in d.keys)

    def superseded_keys(self) -> list[str]:
        """Data keys of older versions (must not count)."""
        return sorted(k for d in self.datasets if not d.current for k in d.keys)

    def row_count(self) -> int:
        """Rows written in all data files (current or not)."""
        return sum(len(d.items) for d in self.datasets)

    def expected_monthly(self) -> dict[MonthlyKey, Figures]:
        """Expected monthly figures of the project (current data sets only)."""
        return merge_figures(
            *(expected_monthly(d.items, focus=d.focus) for d in self.current_datasets())
        )

    def expected_daily(self) -> dict[DailyKey, Figures]:
        """Expected daily figures of the project (current data sets only)."""
        return merge_figures(
            *(expected_daily(d.items, focus=d.focus) for d in self.current_datasets())
        )


def build_demo_tree(
    root: Path,
    *,
    prefix: str = "",
    uri_base: str | None = None,
    bucket: str = DEFAULT_BUCKET,
) -> DemoTree:
    """Write the demo delivery under ``root`` (created if needed) and describe it.

    ``prefix`` is the key prefix of every file ("" or e.g. ``"cur"``). ``uri_base`` decides
    the ``dataFiles`` URIs of the Data Exports manifests: default ``file://<root>/``; pass
    ``"s3://<bucket>/"`` when the tree will be uploaded with
    :func:`~cur_ray.samples.writers.upload_tree`. ``DemoTree.root`` is ``root.resolve()``,
    the folder those file URIs name. About 3,300 rows; well under a second.
    """
    root.mkdir(parents=True, exist_ok=True)
    datasets: list[DemoDataset] = []

    january = generate_line_items(period=_JANUARY, seed=101, rows=800, purchases=True)
    keys = write_legacy_csv_export(
        root,
        prefix=prefix,
        report=DEMO_LEGACY_REPORT,
        period=_JANUARY,
        assembly_id=_ASSEMBLY_JAN,
        items=january,
        files=2,
        bucket=bucket,
    )
    datasets.append(
        DemoDataset(
            DEMO_LEGACY_REPORT,
            SourceFormat.LEGACY_CSV,
            _JANUARY,
            _ASSEMBLY_JAN,
            True,
            tuple(january),
            tuple(keys),
        )
    )

    # February: an early delivery (first half of the month), then the current snapshot.
    february = generate_line_items(period=_FEBRUARY, seed=202, rows=700, purchases=False)
    early = [i for i in february if i.line_item_usage_start_date < _FEBRUARY_REDELIVERY_CUTOFF]
    for assembly_id, items, current in (
        (_ASSEMBLY_FEB_OLD, early, False),
        (_ASSEMBLY_FEB_NEW, february, True),
    ):
        keys = write_legacy_csv_export(
            root,
            prefix=prefix,
            report=DEMO_LEGACY_REPORT,
            period=_FEBRUARY,
            assembly_id=assembly_id,
            items=items,
            bucket=bucket,
        )
        datasets.append(
            DemoDataset(
                DEMO_LEGACY_REPORT,
                SourceFormat.LEGACY_CSV,
                _FEBRUARY,
                assembly_id,
                current,
                tuple(items),
                tuple(keys),
            )
        )

    march = generate_line_items(period=_MARCH, seed=303, rows=800, purchases=False)
    keys = write_data_export(
        root,
        prefix=prefix,
        export=DEMO_CUR2_EXPORT,
        period=_MARCH,
        execution_id=_EXECUTION_MAR,
        items=march,
        file_format="parquet",
        uri_base=uri_base,
        bucket=bucket,
        row_group_size=250,
    )
    datasets.append(
        DemoDataset(
            DEMO_CUR2_EXPORT,
            SourceFormat.CUR2_PARQUET,
            _MARCH,
            _EXECUTION_MAR,
            True,
            tuple(march),
            tuple(keys),
        )
    )

    april = generate_line_items(period=_APRIL, seed=404, rows=600, purchases=False)
    focus_items = tuple(
        i for i in april if i.line_item_operation not in ("EKSPod-EC2", "ECSTask-EC2")
    )
    keys = write_data_export(
        root,
        prefix=prefix,
        export=DEMO_FOCUS_EXPORT,
        period=_APRIL,
        execution_id=_EXECUTION_APR,
        items=april,
        file_format="csv",
        focus=True,
        uri_base=uri_base,
        bucket=bucket,
    )
    datasets.append(
        DemoDataset(
            DEMO_FOCUS_EXPORT,
            SourceFormat.FOCUS_CSV,
            _APRIL,
            _EXECUTION_APR,
            True,
            focus_items,
            tuple(keys),
        )
    )
    return DemoTree(root=root.resolve(), prefix=prefix, datasets=datasets)
