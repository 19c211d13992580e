"""Where the tests find the real billing data of ../shared/data."""

from __future__ import annotations

from pathlib import Path

# The repository's sibling folder shared/ (a developer checkout and CI's clone alike).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def has_shared_data() -> bool:
    """True when the real billing files are present."""
    return (SHARED_DATA / "aws-cur-legacy-sample.csv").exists()
