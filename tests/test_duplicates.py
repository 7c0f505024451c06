"""Duplicate ids: the first occurrence in (file path, row) order is kept, whatever order the
files are scanned in."""

from __future__ import annotations

import random

import numpy as np

from jobs.pipeline.duplicates import (
    SIGHTING,
    excluded_from,
    find_corpus_duplicates,
    repeats_in,
    scan_group,
    scan_here,
    scan_on_ray,
)
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.reading import Columns
from tests.conftest import local_ray, write_jsonl


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
    assert len(repeats_in()) == 0
    assert len(repeats_in(np.empty(0, SIGHTING))) == 0
    assert excluded_from([], [repeats_in()]) == {}


def random_corpus(root, files: int = 12, rows: int = 40, pool: int = 150) -> InputFolder:
    """Files whose ids are drawn from a small pool: many repeats within and across files."""
    draw = random.Random(7)
    for f in range(files):
        records = [{"id": f"id-{draw.randrange(pool)}", "text": "t"} for _ in range(rows)]
        write_jsonl(root / f"c{f % 3}" / f"{f:02d}.jsonl", records)
    return InputFolder(str(root))


def test_each_sighting_lands_in_the_one_partition_its_hash_names(tmp_path):
    folder = random_corpus(tmp_path)
    indexed = list(enumerate(folder.list_files()))
    (unread, sizes), *parts = scan_group(folder, indexed, Columns(), 16, partitions=5)
    assert unread == {} and len(parts) == 5 and len(sizes) == len(indexed)
    assert sum(len(p) for p in parts) == 12 * 40
    for number, part in enumerate(parts):
        assert len(part) and set((part["hash"] % 5).tolist()) == {number}


def test_partitioned_scan_on_ray_decides_as_one_pass_does(tmp_path):
    # 2 CPUs: 8 groups of files mapped to 4 hash partitions, each reduced apart; the first
    # sighting of an id is still the first in (file, row) order over the whole corpus.
    folder = random_corpus(tmp_path)
    files = folder.list_files()
    with local_ray(num_cpus=2):
        on_ray = find_corpus_duplicates(folder, files, Columns(), 16, scan_on_ray, sample_rows=30)
    in_one_pass = find_corpus_duplicates(folder, files, Columns(), 16, scan_here, sample_rows=30)
    assert on_ray.excluded == in_one_pass.excluded
    # The calibration sample too: the partitions' smallest hashes, merged.
    assert on_ray.sample == in_one_pass.sample and len(on_ray.sample) == 30
    repeated = sum(len(rows) for rows in on_ray.excluded.values())
    assert repeated == 12 * 40 - len(distinct_ids(tmp_path))


def distinct_ids(root) -> set[str]:
    """Every id that occurs anywhere in the corpus."""
    import json

    return {json.loads(line)["id"] for path in root.rglob("*.jsonl") for line in path.open()}
