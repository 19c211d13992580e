"""Both notebooks run top to bottom on the embedded default and produce their figures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("CUR_RAY_NB_DEMO_DIR", str(workdir / "demo"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("CUR_RAY_NB_DATABASE_URL", raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return notebook


def _count_done(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM finops_billing_files WHERE status = 'DONE'"
        ).fetchone()
    return int(count)


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text.append(output["text"])
            images += "image/png" in output.get("data", {})
    return "".join(text), images


@pytest.mark.slow
def test_backfill_then_explore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backfill = execute("backfill.ipynb", tmp_path, monkeypatch)
    text, images = outputs(backfill)
    assert images == 2
    assert (tmp_path / "backfill_monthly_by_service.png").stat().st_size > 10_000
    assert "failed 0" in text
    done = _count_done(tmp_path / "demo" / "cur_ray_demo.db")
    assert done > 0
    # Every current file of the demo requeued and re-aggregated exactly once.
    assert f"requeued {done}, aggregated {done} in 1 run(s)" in text

    explore = execute("explore_costs.ipynb", tmp_path, monkeypatch)
    text, images = outputs(explore)
    assert images == 1
    assert "over 4 billing periods: 2024-01, 2024-02, 2024-03, 2024-04" in text
    assert "Amazon Elastic Compute Cloud" in text
