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


def to_table(envelopes: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(envelopes, schema=SCHEMA)


def pack(table: pa.Table) -> bytes:
    """A table as bytes (IPC stream): also what a block's content hash is computed over."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def pack_parts(tables: list[pa.Table]) -> bytes:
    """Several tables of different schemas (a block's collections) as bytes: each packed,
    behind its length."""
    packed = [pack(table) for table in tables]
    return b"".join(len(data).to_bytes(8, "little") + data for data in packed)


def unpack_parts(data: bytes) -> list[pa.Table]:
    tables, position = [], 0
    while position < len(data):
        size = int.from_bytes(data[position : position + 8], "little")
        tables.append(unpack(data[position + 8 : position + 8 + size]))
        position += 8 + size
    return tables
