"""How a block travels through Ray Data: as one row (an envelope), its rows packed as Arrow IPC.

Ray Data concatenates and re-slices the tables it batches. Blocks of different files may
disagree on a metadata column's type (a crash when concatenated), and a re-sliced block could
no longer be written under one name. An envelope is never split or merged, and every stage
takes one at a time. Besides the block, it carries the block's figures to the driver, which
keeps per-block counts, never per-row state: its rows, its rejections (their list is written
with the block), the files whose content could not be decoded from some row on, or the storage
error that stopped its reading. The driver makes the envelopes of blocks already done itself,
from their files' footers.

A commit that a worker could not make (the lease lost, a write that failed) travels back the
same way, as data (`failure`, `failed`), not as an exception: Ray would wrap that in its own
and lose the original type, and print tracebacks of its own for a failure that takes one line
to say.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

FILE_ENTRY = pa.struct([("relpath", pa.string()), ("rows", pa.int64())])
CUT = pa.struct([("file", pa.string()), ("from_row", pa.int64()), ("reason", pa.string())])
SCHEMA = pa.schema(
    [
        ("block_id", pa.string()),
        ("signature", pa.string()),  # the input state it was made from (packing.signature)
        ("content_hash", pa.string()),  # what it holds (commit.content_hash)
        ("inputs", pa.string()),  # its segments, JSON: [[relpath, first row, end row], ...]
        ("rows", pa.int64()),  # valid rows in the block
        ("skipped", pa.int64()),  # rows of a block already done in OUTPUT
        ("embedded", pa.int64()),  # rows encoded by this run
        ("reused", pa.int64()),  # rows whose earlier vector was kept
        ("block", pa.binary()),  # the rows to embed and write, per collection; empty once written
        ("reuse", pa.binary()),  # earlier vectors (key, embedding); empty when none
        # Per row of the block: its key, and the token ids of the rows to encode (empty for
        # rows whose earlier vector is reused), made by the tokenizer named in `tokenizer`
        # ("": none; the replica then tokenizes the texts itself).
        ("tokens", pa.binary()),
        ("tokenizer", pa.string()),
        ("truncated", pa.int64()),  # texts the length cap cut short
        ("vectors", pa.binary()),  # per row: its key and every vector column, once embedded
        ("files", pa.list_(FILE_ENTRY)),  # the block's output files after this run
        ("written", pa.bool_()),  # whether this run wrote the block's files
        ("replica_id", pa.string()),  # the replica that embedded the block's rows
        ("rejected", pa.int64()),
        ("rejected_by_kind", pa.map_(pa.string(), pa.int64())),
        ("rejections", pa.binary()),  # the rejection records (JSON Lines) until written
        ("rejections_file", pa.string()),  # the block's rejection list in OUTPUT
        ("cuts", pa.list_(CUT)),  # files whose content is undecodable from a row on
        ("file", pa.string()),  # with `unread`: the file a storage failure kept from reading
        ("unread", pa.string()),  # the storage error
        # A commit that could not happen (STAGE_FAILURES: the lease lost, a write that
        # failed): its kind and message. The driver stops the run on the first one.
        ("failure", pa.string()),
        ("failed", pa.string()),
    ]
)
DEFAULTS: dict[str, Any] = {
    "block_id": "",
    "signature": "",
    "content_hash": "",
    "inputs": "[]",
    "rows": 0,
    "skipped": 0,
    "embedded": 0,
    "reused": 0,
    "block": b"",
    "reuse": b"",
    "tokens": b"",
    "tokenizer": "",
    "truncated": 0,
    "vectors": b"",
    "files": [],
    "written": False,
    "replica_id": "",
    "rejected": 0,
    "rejected_by_kind": [],
    "rejections": b"",
    "rejections_file": "",
    "cuts": [],
    "file": "",
    "unread": "",
    "failure": "",
    "failed": "",
}


def envelope(**fields: Any) -> dict[str, Any]:
    unknown = set(fields) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown envelope fields {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return DEFAULTS | fields


# Fields that hold data (Arrow IPC): read and written as buffers, never as Python bytes, so a
# block is not copied as it passes through a stage (docs/design.md, "Copies of a block").
BINARY = tuple(f.name for f in SCHEMA if f.type == pa.binary())


def to_table(envelopes: list[dict[str, Any]]) -> pa.Table:
    """Envelopes as a table. A lone envelope's data fields are wrapped, not copied."""
    if len(envelopes) != 1:
        return pa.Table.from_pylist([as_bytes(e) for e in envelopes], schema=SCHEMA)
    (single,) = envelopes
    columns = []
    for field in SCHEMA:
        value = single[field.name]
        if field.name in BINARY:
            columns.append(binary_array(as_buffer(value)))
        else:
            columns.append(pa.array([value], field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def from_table(table: pa.Table) -> list[dict[str, Any]]:
    """The envelopes a stage is given: figures as Python values, data fields as buffers over
    the table's own memory."""
    envelopes = table.drop_columns(list(BINARY)).to_pylist()
    for name in BINARY:
        column = table.column(name)
        for envelope, scalar in zip(envelopes, column_scalars(column)):
            envelope[name] = scalar.as_buffer() if scalar.is_valid else b""
    return envelopes


def column_scalars(column: pa.ChunkedArray):
    for chunk in column.chunks:
        yield from chunk


def binary_array(buffer: pa.Buffer) -> pa.Array:
    """A one-value binary array whose value is `buffer` itself."""
    offsets = pa.py_buffer(np.array([0, buffer.size], dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, buffer])


def as_buffer(data) -> pa.Buffer:
    return data if isinstance(data, pa.Buffer) else pa.py_buffer(data)


def as_bytes(envelope: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to_pybytes() if isinstance(v, pa.Buffer) else v for k, v in envelope.items()}


def pack(table: pa.Table) -> pa.Buffer:
    """A table as one buffer (IPC stream): also what a block's content hash is computed over."""
    sink = pa.BufferOutputStream()
    write_stream(sink, table)
    return sink.getvalue()


def write_stream(sink: pa.BufferOutputStream, table: pa.Table) -> None:
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def unpack(data) -> pa.Table:
    """The table packed in `data` (bytes or a buffer), its columns over `data`'s memory."""
    return pa.ipc.open_stream(as_buffer(data)).read_all()


def pack_parts(tables: list[pa.Table]) -> pa.Buffer:
    """Several tables of different schemas (a block's collections) as one buffer, written
    once: each table's stream, then each stream's end offset and their count."""
    sink = pa.BufferOutputStream()
    ends = []
    for table in tables:
        write_stream(sink, table)
        ends.append(sink.tell())
    sink.write(np.array([*ends, len(ends)], dtype="<u8").tobytes())
    return sink.getvalue()


def unpack_parts(data) -> list[pa.Table]:
    buffer = as_buffer(data)
    if not buffer.size:
        return []
    count = int(np.frombuffer(buffer, dtype="<u8", count=1, offset=buffer.size - 8)[0])
    trailer = buffer.size - 8 * (count + 1)
    ends = np.frombuffer(buffer, dtype="<u8", count=count, offset=trailer).tolist()
    starts = [0, *ends[:-1]]
    return [unpack(buffer.slice(a, b - a)) for a, b in zip(starts, ends)]
