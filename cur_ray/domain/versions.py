"""Which files' costs make up a billing period's summaries (pure).

Every refresh of a CUR is a complete snapshot of the period, so two versions must never be
added together. Per (report, period):

* Versioned files (named by a manifest): the summaries show the **newest version whose
  every file has been processed** at its current ETag. While a newer version is still being
  processed, the previous complete one keeps showing, so a dashboard never sees a
  half-processed month. If no version is complete yet (first delivery, or an overwrite-mode
  export whose files are being re-processed), the newest version that has any processed
  file shows what it has.
* Unversioned files (data-only folders, Athena Parquet): each present file (not
  ``SUPERSEDED``) contributes its latest processed costs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cur_ray.domain.billing import FileStatus


@dataclass(frozen=True)
class FileState:
    """What the version rule needs to know about one billing file."""

    file_id: int
    report_name: str
    version_id: str | None
    status: str
    etag: str
    costs_etag: str | None  # the ETag whose costs are stored, if any

    @property
    def has_costs(self) -> bool:
        """True when partial aggregates of some content of this file are stored."""
        return self.costs_etag is not None

    @property
    def costs_current(self) -> bool:
        """True when the stored costs reflect the file's current content."""
        return self.costs_etag is not None and self.costs_etag == self.etag


def contributing_file_ids(
    files: Iterable[FileState], version_order: Mapping[tuple[str, str], int]
) -> set[int]:
    """The ids of the files whose costs make up the summaries of one (project, period).

    ``version_order`` maps (report_name, version_id) to its order of appearance (higher =
    named current later); versions a manifest never named current sort first.
    """
    contributing: set[int] = set()
    versions: dict[str, dict[str, list[FileState]]] = defaultdict(lambda: defaultdict(list))
    for state in files:
        if state.version_id is None:
            if state.status != FileStatus.SUPERSEDED and state.has_costs:
                contributing.add(state.file_id)
        else:
            versions[state.report_name][state.version_id].append(state)

    for report_name, by_version in versions.items():
        ordered = sorted(
            by_version, key=lambda v: (version_order.get((report_name, v), -1), v), reverse=True
        )
        complete = [v for v in ordered if all(f.costs_current for f in by_version[v])]
        chosen = (
            complete[0]
            if complete
            else next((v for v in ordered if any(f.has_costs for f in by_version[v])), None)
        )
        if chosen is not None:
            contributing.update(f.file_id for f in by_version[chosen] if f.has_costs)
    return contributing
