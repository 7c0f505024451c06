"""Which rows make a block: big files cut into blocks of their own, small files packed.

A corpus of one file per document (tens of thousands of files of a few rows) must cost per
row, not per file: a Ray task and an output file each carry about `block_rows` rows, whatever
the files' sizes. The plan is a pure function of the input (each file's path, collection and
row count), so that every run cuts the same blocks and gives them the same names:

- A file of at least `block_rows` rows is cut into rows [k*block_rows, (k+1)*block_rows),
  each a block named by the file's path hash and the block's first row (as always).
- Smaller files, in path order, are packed whole. A file opens a new pack when it is the first
  of its collection, when the pack would grow past PACK_LIMIT blocks' rows, or when a draw
  from its own path's hash falls below rows/block_rows: a boundary every `block_rows` rows on
  average, decided by each file alone (content-defined chunking, as rsync and restic cut
  files). Adding, editing or removing one file therefore changes its own pack, and at most
  merges it with the one before or splits it in two: not every pack after it, as a cut every
  N files of a sorted list would. A pack is named after its first file.

The price: packs vary in size (from a single file up to PACK_LIMIT blocks' rows), and a pack
whose one file changed is read again whole (its other rows' vectors are reused, not encoded).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from jobs.pipeline.units import BlockId, InputFile, Segment

# A pack never holds more than this many blocks' rows.
PACK_LIMIT = 2
# Changes when what a block holds changes for the same input: a block signed by another
# version of the plan is redone (its vectors reused).
PLAN_VERSION = 1


@dataclass(frozen=True)
class PlannedBlock:
    """One block of the plan: its id and the segments of input files it holds. Each segment
    is one of the blocks `read_blocks` cuts its file into (a small file's only one)."""

    id: BlockId
    segments: tuple[Segment, ...]

    @property
    def files(self) -> list[InputFile]:
        return [segment.file for segment in self.segments]

    def inputs(self) -> list[list]:
        """The segments as a block's footer records them: path, first and end row."""
        return [[s.file.relpath, s.first_row, s.end_row] for s in self.segments]


def plan_blocks(
    files: list[InputFile], rows: dict[str, int], block_rows: int
) -> list[PlannedBlock]:
    """Every block of the corpus, in path order. `rows` has each file's source rows (every
    line or Parquet row, rejected ones included); a file without an entry (never read) is
    left out."""
    planned: list[PlannedBlock] = []
    pack: list[Segment] = []
    pack_rows = 0

    def close_pack() -> None:
        nonlocal pack, pack_rows
        if pack:
            block_id = BlockId(pack[0].file.path_hash, 0)
            planned.append(PlannedBlock(block_id, tuple(pack)))
        pack, pack_rows = [], 0

    for input_file in files:
        count = rows.get(input_file.relpath)
        if count is None:
            continue
        if count >= block_rows:
            close_pack()
            for first in range(0, count, block_rows):
                segment = Segment(input_file, first, min(count, first + block_rows))
                planned.append(PlannedBlock(BlockId(input_file.path_hash, first), (segment,)))
            continue
        opens = (
            not pack
            or input_file.collection != pack[0].file.collection
            or pack_rows + count > PACK_LIMIT * block_rows
            or draws_boundary(input_file, count, block_rows)
        )
        if opens:
            close_pack()
        pack.append(Segment(input_file, 0, count))
        pack_rows += count
    close_pack()
    return planned


def draws_boundary(input_file: InputFile, rows: int, block_rows: int) -> bool:
    """Whether this file opens a pack: with probability rows/block_rows, from its path alone."""
    digest = hashlib.blake2b(input_file.relpath.encode("utf-8", "surrogatepass"), digest_size=8)
    draw = int.from_bytes(digest.digest(), "little") / 2**64
    return draw < rows / block_rows


def signature(block: PlannedBlock, excluded: dict[str, dict[str, str]]) -> str:
    """What a block's output files must carry to count as done: a hash of the state of each
    file it holds (path, size, version), its rows, and the rows of those set aside as
    duplicates (decided over the whole corpus, so they can change when another file does)."""
    parts = [PLAN_VERSION]
    for segment in block.segments:
        relpath = segment.file.relpath
        mine = sorted(
            (int(row), reason)
            for row, reason in excluded.get(relpath, {}).items()
            if segment.first_row <= int(row) < segment.end_row
        )
        parts.append([*segment.file.state, segment.first_row, segment.end_row, mine])
    canonical = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(canonical.encode("utf-8", "surrogatepass")).hexdigest()
