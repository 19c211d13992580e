"""The version rule: which files' costs make up a period's summaries."""

from __future__ import annotations

from cur_ray.domain.versions import FileState, contributing_file_ids


def f(
    file_id: int,
    version: str | None,
    status: str = "DONE",
    costs: str | None = "e",
    etag: str = "e",
) -> FileState:
    return FileState(file_id, "rep", version, status, etag, costs)


ORDER = {("rep", "v1"): 1, ("rep", "v2"): 2, ("rep", "v3"): 3}


def test_previous_version_shows_until_new_one_is_complete() -> None:
    old = [f(1, "v1", "SUPERSEDED"), f(2, "v1", "SUPERSEDED")]
    half_done = [f(3, "v2"), f(4, "v2", "PENDING", costs=None)]
    assert contributing_file_ids(old + half_done, ORDER) == {1, 2}
    done = [f(3, "v2"), f(4, "v2")]
    assert contributing_file_ids(old + done, ORDER) == {3, 4}


def test_complete_but_superseded_version_beats_older_one() -> None:
    files = [f(1, "v1", "SUPERSEDED"), f(2, "v2", "SUPERSEDED"), f(3, "v3", "PENDING", None)]
    assert contributing_file_ids(files, ORDER) == {2}


def test_overwrite_mode_keeps_stale_costs_until_reprocessed() -> None:
    # Same keys re-delivered under a new execution id: nothing is complete, show what exists.
    files = [f(1, "v2", "PENDING", costs="old", etag="new"), f(2, "v2", costs="new", etag="new")]
    assert contributing_file_ids(files, ORDER) == {1, 2}


def test_unversioned_files_contribute_unless_superseded_or_unprocessed() -> None:
    files = [f(1, None), f(2, None, "SUPERSEDED"), f(3, None, "PENDING", None), f(4, None, "ERROR")]
    assert contributing_file_ids(files, {}) == {1, 4}


def test_reports_are_independent() -> None:
    a = FileState(1, "a", "v1", "DONE", "e", "e")
    b = FileState(2, "b", "w1", "PENDING", "e", None)
    assert contributing_file_ids([a, b], {("a", "v1"): 1, ("b", "w1"): 2}) == {1}
