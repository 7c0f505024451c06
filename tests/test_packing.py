"""Which rows make a block: big files cut alone, small files packed by a rule that one file's
change cannot spread (jobs.pipeline.packing)."""

from __future__ import annotations

import pytest

from jobs.pipeline.packing import PACK_LIMIT, plan_blocks, signature
from jobs.pipeline.units import BlockId, InputFile

BLOCK_ROWS = 64


def files_of(count: int, collection: str = "docs", prefix: str = "f") -> list[InputFile]:
    return [
        InputFile(f"{collection}/{prefix}{n:05d}.jsonl", collection, "jsonl", 100, "v1")
        for n in range(count)
    ]


def plan(files: list[InputFile], rows: dict[str, int]) -> dict[BlockId, list[str]]:
    return {
        block.id: [s.file.relpath for s in block.segments]
        for block in plan_blocks(files, rows, BLOCK_ROWS)
    }


def test_a_big_file_is_cut_into_blocks_of_its_own_and_small_files_are_packed():
    big = InputFile("docs/big.jsonl", "docs", "jsonl")
    small = files_of(400)
    rows = {big.relpath: 150} | {f.relpath: 2 for f in small}
    planned = plan_blocks([big, *small], rows, BLOCK_ROWS)
    own = [b for b in planned if b.segments[0].file == big]
    assert [(b.id.first_row, b.segments[0].end_row) for b in own] == [
        (0, 64),
        (64, 128),
        (128, 150),
    ]
    packs = [b for b in planned if b.segments[0].file != big]
    # 800 rows in packs of about 64: far fewer blocks than files, none above the limit.
    assert 5 <= len(packs) <= 40
    assert all(2 * len(b.segments) <= PACK_LIMIT * BLOCK_ROWS for b in packs)
    # Every small file whole in exactly one pack, in path order, named after its first file.
    packed = [s.file for b in packs for s in b.segments]
    assert packed == small
    assert all(b.id == BlockId(b.segments[0].file.path_hash, 0) for b in packs)


def test_a_pack_never_spans_two_collections():
    files = files_of(30, "docs") + files_of(30, "faq")
    planned = plan_blocks(files, {f.relpath: 1 for f in files}, BLOCK_ROWS)
    assert all(len({s.file.collection for s in b.segments}) == 1 for b in planned)
    assert {b.segments[0].file.relpath for b in planned} >= {
        "docs/f00000.jsonl",
        "faq/f00000.jsonl",
    }


def test_a_file_never_read_is_left_out_of_the_plan():
    files = files_of(3)
    planned = plan_blocks(files, {files[0].relpath: 1, files[2].relpath: 1}, BLOCK_ROWS)
    assert [s.file for b in planned for s in b.segments] == [files[0], files[2]]


@pytest.mark.parametrize("change", ["add", "remove", "grow"])
def test_one_files_change_changes_at_most_two_packs(change):
    files = files_of(2000)
    rows = {f.relpath: 3 for f in files}
    before = plan(files, rows)
    assert len(before) > 40
    middle = files[1000]
    if change == "add":
        added = InputFile("docs/f01000a.jsonl", "docs", "jsonl")
        files = sorted([*files, added], key=lambda f: f.relpath)
        rows[added.relpath] = 3
    elif change == "remove":
        files = [f for f in files if f != middle]
    else:
        rows[middle.relpath] = 40
    after = plan(files, rows)
    changed = {b for b in before if after.get(b) != before[b]} | {
        b for b in after if before.get(b) != after[b]
    }
    # The pack of the changed file, and the one it may split off or merge with (a file that
    # grows may keep its pack as it was: then only the pack's signature changes).
    assert (change == "grow" or len(changed) >= 1) and len(changed) <= 3
    assert len(set(before) & set(after)) >= len(before) - 2


def test_the_signature_follows_the_files_state_and_the_rows_set_aside():
    (a,) = files_of(1)
    block = plan_blocks([a], {a.relpath: 5}, BLOCK_ROWS)[0]
    same = signature(block, {})
    assert signature(block, {}) == same
    touched = InputFile(a.relpath, a.collection, a.fmt, a.size, "v2")
    assert signature(plan_blocks([touched], {a.relpath: 5}, BLOCK_ROWS)[0], {}) != same
    duplicate = {a.relpath: {"3": "duplicate id: first seen in docs/x.jsonl row 0"}}
    assert signature(block, duplicate) != same
    # A row set aside in another file's rows does not change this block.
    assert signature(block, {"docs/other.jsonl": {"3": "duplicate id"}}) == same
