"""Prometheus metrics through ``ray.util.metrics``, exported on every node's metrics port.

Ray prefixes names with ``ray_`` and counters get ``_total``; ``deploy/grafana`` charts:

=======================================  =========  ======================================
exported name                            kind       tags
=======================================  =========  ======================================
``ray_cur_ray_jobs_total``               counter    ``name``, ``outcome``
``ray_cur_ray_job_duration_seconds``     histogram  ``name``
``ray_cur_ray_queue_waiting_jobs``       gauge
``ray_cur_ray_files``                    gauge      ``status``
``ray_cur_ray_rows_read_total``          counter
``ray_cur_ray_bytes_read_total``         counter
``ray_cur_ray_file_processing_seconds``  histogram
=======================================  =========  ======================================

The metric objects are created on first use in the process that records (the coordinator),
never at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from cur_ray.domain.billing import FileStatus

_DURATION_BOUNDARIES = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
_FILE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]


class Metrics:
    """The application's metrics (one instance per process, see :func:`metrics`)."""

    def __init__(self) -> None:
        self.jobs = Counter(
            "cur_ray_jobs",
            description="Jobs run, by name and outcome",
            tag_keys=("name", "outcome"),
        )
        self.job_duration = Histogram(
            "cur_ray_job_duration_seconds",
            description="Wall time of a job run",
            boundaries=_DURATION_BOUNDARIES,
            tag_keys=("name",),
        )
        self.queue_waiting = Gauge("cur_ray_queue_waiting_jobs", description="Jobs waiting")
        self.files = Gauge(
            "cur_ray_files", description="Billing files by status", tag_keys=("status",)
        )
        self.rows_read = Counter("cur_ray_rows_read", description="CUR rows read")
        self.bytes_read = Counter("cur_ray_bytes_read", description="CUR bytes read")
        self.file_seconds = Histogram(
            "cur_ray_file_processing_seconds",
            description="Time from a file's first task to its merged result",
            boundaries=_FILE_BOUNDARIES,
        )

    def job_finished(
        self, name: str, outcome: str, seconds: float, result: Mapping[str, Any]
    ) -> None:
        """Record a job run: its outcome, duration and (Batch B) rows and bytes read."""
        self.jobs.inc(1, tags={"name": name, "outcome": outcome})
        self.job_duration.observe(seconds, tags={"name": name})
        rows, size = int(result.get("rowsRead") or 0), int(result.get("bytesRead") or 0)
        if rows:
            self.rows_read.inc(rows)
        if size:
            self.bytes_read.inc(size)

    def file_processed(self, seconds: float) -> None:
        """Record how long one file took from first task to merged result."""
        self.file_seconds.observe(seconds)

    def queue_state(self, waiting: int, files_by_status: Mapping[str, int]) -> None:
        """Set the queue length and the file counts (every status, zeros included)."""
        self.queue_waiting.set(waiting)
        for status in FileStatus:
            self.files.set(files_by_status.get(status.value, 0), tags={"status": status.value})


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    return Metrics()
