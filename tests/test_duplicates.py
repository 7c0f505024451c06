"""Duplicate ids: the first occurrence in (file path, row) order is kept, whatever order the
files are scanned in."""

from __future__ import annotations

from jobs.pipeline.duplicates import find_corpus_duplicates, find_duplicates, scan_here
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.reading import Columns
from tests.conftest import write_jsonl


def test_later_occurrences_are_excluded_with_the_place_of_the_first(tmp_path):
    write_jsonl(tmp_path / "a" / "1.jsonl", [{"id": i, "text": "t"} for i in ("x", "y", "x")])
    write_jsonl(tmp_path / "b" / "2.jsonl", [{"id": i, "text": "t"} for i in ("z", "y", "x")])
    # An invalid row's id is no occurrence: only rows that would be embedded count.
    write_jsonl(tmp_path / "c" / "3.jsonl", [{"id": "z", "text": ""}, {"id": "w", "text": "t"}])
    folder = InputFolder(str(tmp_path))
    excluded = find_corpus_duplicates(folder, folder.list_files(), Columns(), 2, scan_here).excluded
    assert excluded == {
        "a/1.jsonl": {"2": "duplicate id: first seen in a/1.jsonl row 0"},
        "b/2.jsonl": {
            "1": "duplicate id: first seen in a/1.jsonl row 1",
            "2": "duplicate id: first seen in a/1.jsonl row 0",
        },
    }


def test_many_repeats_of_one_id_all_point_at_the_first(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "same", "text": f"t{i}"} for i in range(50)])
    folder = InputFolder(str(tmp_path))
    excluded = find_corpus_duplicates(folder, folder.list_files(), Columns(), 7, scan_here).excluded
    assert set(excluded["a.jsonl"]) == {str(i) for i in range(1, 50)}
    assert set(excluded["a.jsonl"].values()) == {"duplicate id: first seen in a.jsonl row 0"}


def test_no_rows_no_duplicates():
    assert find_duplicates([], []) == {}
