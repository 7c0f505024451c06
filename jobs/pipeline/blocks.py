"""An input file as blocks, and what each block needs: shared by the pipeline and the dry run.

`read_blocks` reads, validates and cuts a file into blocks, each with the rejections of its own
rows, so that whoever stops reading early loses nothing it did not ask for. `block_status` says
whether OUTPUT already holds a block done (jobs.pipeline.commit decides).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

from jobs.pipeline import commit
from jobs.pipeline.envelopes import pack
from jobs.pipeline.folders import CommittedFile, InputFolder, OutputFolder
from jobs.pipeline.reading import ROW, Columns, read_rows
from jobs.pipeline.rejections import Rejection, unreadable
from jobs.pipeline.units import BlockId, InputFile
from jobs.pipeline.validation import validate

# What a decoder raises for content it cannot decode: corrupt gzip (zlib.error, EOFError for a
# cut stream, BadGzipFile) or Parquet (ArrowInvalid, OSError for a damaged page). Storage
# failures are StorageReadError, which is none of these: they are not bad input.
DECODE_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException, gzip.BadGzipFile)
# The rows of a block whose every row was rejected.
NO_ROWS = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("collection", pa.string()), (ROW, pa.int64())]
).empty_table()


@dataclass
class Block:
    """One block of an input file: its valid rows and the rejections of its other rows."""

    id: BlockId
    rows: pa.Table  # id, text, collection, metadata..., _row; may have no rows
    rejections: list[Rejection] = field(default_factory=list)
    # Set on the last block of a file that could not be decoded from this row on.
    cut_at: int | None = None

    @cached_property
    def rows_by_collection(self) -> dict[str, list[int]]:
        return rows_per_collection(self.rows)

    def collections(self) -> dict[str, int]:
        """Rows per collection, in order of first appearance."""
        return {name: len(rows) for name, rows in self.rows_by_collection.items()}


def rows_per_collection(rows: pa.Table) -> dict[str, list[int]]:
    """Row positions per collection, in order (a `collection` column can route rows apart)."""
    groups: dict[str, list[int]] = {}
    for position, collection in enumerate(rows.column("collection").to_pylist()):
        groups.setdefault(collection, []).append(position)
    return groups


def committed_by_block(files: list[CommittedFile]) -> dict[BlockId, list[CommittedFile]]:
    """An input file's committed output files, by the block each belongs to."""
    by_block: dict[BlockId, list[CommittedFile]] = {}
    for entry in files:
        by_block.setdefault(entry.block_id, []).append(entry)
    return by_block


def read_blocks(
    folder: InputFolder,
    input_file: InputFile,
    columns: Columns,
    block_rows: int,
    excluded: dict[int, str] | None = None,
    metadata: bool = True,
) -> Iterator[Block]:
    """Every block of the file that has valid rows or rejections, in row order (without
    metadata: only id, text, collection and row; what the duplicate scan and the calibration
    sample need).

    A file whose content cannot be decoded from some row on is cut there: the blocks before
    are handed on, and one last block (`cut_at`) carries a single rejection that covers the
    rest of the file. A storage failure (StorageReadError) is raised to the caller: the file
    is not bad input, it is to be read again by a rerun.
    """
    pending = _PendingBlocks(input_file, block_rows)
    try:
        for batch in read_rows(folder, input_file, columns, block_rows, metadata):
            valid, rejections = validate(batch, input_file, excluded)
            pending.add(valid, rejections)
            yield from pending.completed(batch.end_row)
    except DECODE_ERRORS as err:
        yield pending.cut_short(err)
        return
    yield from pending.completed(None)


class _PendingBlocks:
    """Rows and rejections of blocks not yet complete (a Parquet batch may straddle blocks)."""

    def __init__(self, input_file: InputFile, block_rows: int):
        self.input_file = input_file
        self.block_rows = block_rows
        self.tables: dict[int, list[pa.Table]] = {}
        self.rejections: dict[int, list[Rejection]] = {}
        self.handed_on = 0  # every row before this belongs to a block already handed on

    def add(self, valid: pa.Table, rejections: list[Rejection]) -> None:
        # Rows come in row order, so each block's rows are one contiguous slice.
        starts = valid.column(ROW).to_numpy() // self.block_rows * self.block_rows
        blocks, firsts, counts = np.unique(starts, return_index=True, return_counts=True)
        for start, first, count in zip(blocks.tolist(), firsts.tolist(), counts.tolist()):
            self.tables.setdefault(start, []).append(valid.slice(first, count))
        for rejection in rejections:
            start = rejection.row // self.block_rows * self.block_rows
            self.rejections.setdefault(start, []).append(rejection)

    def completed(self, end_row: int | None) -> Iterator[Block]:
        """Blocks wholly before end_row (None: all of them), in order."""
        for start in sorted(set(self.tables) | set(self.rejections)):
            if end_row is not None and start + self.block_rows > end_row:
                break
            yield self._block(start)
        if end_row is not None:
            self.handed_on = max(self.handed_on, end_row // self.block_rows * self.block_rows)

    def cut_short(self, err: BaseException) -> Block:
        """The block that records the rest of the file as unreadable."""
        first = self.handed_on
        self.tables.clear()
        self.rejections.clear()
        rejection = Rejection.of(self.input_file.relpath, first, unreadable(first, err))
        block_id = self.input_file.block_of(first, self.block_rows)
        return Block(block_id, NO_ROWS, [rejection], cut_at=first)

    def _block(self, start: int) -> Block:
        tables = self.tables.pop(start, [])
        rows = compact(pa.concat_tables(tables)) if tables else NO_ROWS
        rejections = self.rejections.pop(start, [])
        return Block(BlockId(self.input_file.path_hash, start), rows, rejections)


def compact(table: pa.Table) -> pa.Table:
    """A copy that holds only its own rows. A slice keeps its parent's buffers, and Arrow IPC
    of a sliced string column can carry bytes of the rows after it: the block's content hash
    (and the envelope's size) would then depend on its neighbours."""
    return table.take(pa.array(range(table.num_rows), pa.int64()))


@dataclass(frozen=True)
class BlockStatus:
    """Whether OUTPUT holds a block done, the content hash its files must carry, and its rows
    packed (hashed, and sent on as they are when the block is to be embedded)."""

    content_hash: str
    done: bool
    packed: bytes


def block_status(
    block: Block, committed: list[CommittedFile], fingerprint_id: str, output: OutputFolder
) -> BlockStatus:
    """Done when all the block's files are there, made by this fingerprint from this content."""
    packed = pack(block.rows)
    content_hash = commit.content_hash(packed)
    parts = len(block.rows_by_collection)
    done = bool(committed) and commit.is_block_done(
        committed, fingerprint_id, content_hash, parts, output
    )
    return BlockStatus(content_hash, done, packed)
