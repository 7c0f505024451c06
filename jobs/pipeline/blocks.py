"""Input files as blocks: shared by the pipeline, the duplicate scan and the dry run.

`read_blocks` reads, validates and cuts one file into blocks of `block_rows` source rows, each
with the rejections of its own rows, so that whoever stops reading early loses nothing it did
not ask for. `read_planned` reads the blocks of a plan (jobs.pipeline.packing): a big file's
own blocks, or a pack of small files made one block.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

from jobs.pipeline.folders import InputFolder
from jobs.pipeline.packing import PlannedBlock
from jobs.pipeline.reading import ROW, UNHOLDABLE, Columns, json_text_column, read_rows
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
    # Of a planned block: each file cut short in it, (file, from row, reason).
    cuts: list[tuple[str, int, str]] = field(default_factory=list)
    # Of a planned block: its rows as one table per collection (each an output file), each
    # with the metadata types of its own rows (`rows` then holds the checked columns only).
    parts: list[pa.Table] | None = None

    @cached_property
    def rows_by_collection(self) -> dict[str, list[int]]:
        return rows_per_collection(self.rows)

    def collections(self) -> dict[str, int]:
        """Rows per collection, in order of first appearance."""
        return {name: len(rows) for name, rows in self.rows_by_collection.items()}

    def collection_parts(self) -> list[pa.Table]:
        """The rows as one table per collection: what each output file will hold."""
        if self.parts is not None:
            return self.parts
        groups = list(self.rows_by_collection.values())
        if len(groups) == 1:  # the usual block: its rows as they are, not a copy
            return [self.rows]
        return [self.rows.take(pa.array(rows)) for rows in groups]


def rows_per_collection(rows: pa.Table) -> dict[str, list[int]]:
    """Row positions per collection, in order (a `collection` column can route rows apart)."""
    groups: dict[str, list[int]] = {}
    for position, collection in enumerate(rows.column("collection").to_pylist()):
        groups.setdefault(collection, []).append(position)
    return groups


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


def read_planned(
    folder: InputFolder,
    planned: list[PlannedBlock],
    columns: Columns,
    block_rows: int,
    excluded: dict[str, dict[int, str]],
) -> Iterator[tuple[PlannedBlock, Block]]:
    """Each planned block, read: its segments' rows (one table, metadata types reconciled
    across files) and rejections, as soon as its last segment is read. Each file is read once,
    and only as far as the last block wanted of it. StorageReadError when a file cannot be
    read (the caller decides what the blocks not yet handed on become)."""
    # Per file (in the plan's order), each wanted segment's first row and its block.
    wanted: dict[str, dict[int, PlannedBlock]] = {}
    files: dict[str, InputFile] = {}
    for block in planned:
        for segment in block.segments:
            wanted.setdefault(segment.file.relpath, {})[segment.first_row] = block
            files.setdefault(segment.file.relpath, segment.file)
    read: dict[BlockId, list[Block]] = {block.id: [] for block in planned}
    missing = {block.id: len(block.segments) for block in planned}

    def segment_read(owner: PlannedBlock) -> Iterator[tuple[PlannedBlock, Block]]:
        missing[owner.id] -= 1
        if not missing[owner.id]:
            yield owner, assemble(owner, read.pop(owner.id))

    for relpath, input_file in files.items():
        mine = wanted[relpath]
        pending = sorted(mine, reverse=True)  # first rows still to see, the next one last
        for block in read_blocks(folder, input_file, columns, block_rows, excluded.get(relpath)):
            # A segment the reader went past without a row found (blank lines) is read.
            while pending and pending[-1] < block.id.first_row:
                yield from segment_read(mine[pending.pop()])
            if pending and pending[-1] == block.id.first_row:
                read[mine[pending[-1]].id].append(block)
                yield from segment_read(mine[pending.pop()])
            if not pending:
                break
        for first in reversed(pending):
            yield from segment_read(mine[first])


def assemble(planned: PlannedBlock, read: list[Block]) -> Block:
    """One block of the rows and rejections its segments gave: its rows gathered per
    collection, so that a metadata key typed differently in another collection keeps its type
    in this one."""
    rejections = [r for part in read for r in part.rejections]
    cuts = [
        (part.rejections[-1].file, part.cut_at, part.rejections[-1].reason)
        for part in read
        if part.cut_at is not None
    ]
    by_collection: dict[str, list[pa.Table]] = {}
    for part in read:
        for table in part.collection_parts():
            by_collection.setdefault(table.column("collection")[0].as_py(), []).append(table)
    parts = [concat_rows(tables) for tables in by_collection.values()]
    checked = [part.select(NO_ROWS.column_names) for part in parts]
    rows = pa.concat_tables(checked) if checked else NO_ROWS
    return Block(planned.id, rows, rejections, cuts=cuts, parts=parts)


def concat_rows(tables: list[pa.Table]) -> pa.Table:
    """The rows of several files (of one collection) as one table. A metadata key missing
    from a file is null there; one whose values have other types in other files becomes JSON
    text, as it does within a file (jobs.pipeline.reading.metadata_column)."""
    if len(tables) == 1:
        return tables[0]
    try:
        return compact(pa.concat_tables(tables, promote_options="permissive"))
    except UNHOLDABLE:
        pass
    types: dict[str, set[pa.DataType]] = {}
    for table in tables:
        for name, column in zip(table.column_names, table.columns):
            if not pa.types.is_null(column.type):
                types.setdefault(name, set()).add(column.type)
    mixed = [name for name, found in types.items() if len(found) > 1]
    tables = [as_json_text(table, mixed) for table in tables]
    return compact(pa.concat_tables(tables, promote_options="permissive"))


def as_json_text(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        if name in table.column_names:
            index = table.column_names.index(name)
            text = json_text_column(table.column(name).to_pylist())
            table = table.set_column(index, name, text)
    return table
