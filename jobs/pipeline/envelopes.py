"""How a block travels through Ray Data: as one row (an envelope), its rows packed as Arrow IPC.

Ray Data concatenates and re-slices the tables it batches. Blocks of different files may
disagree on a metadata column's type (a crash when concatenated), and a re-sliced block could
no longer be written under one name. An envelope is never split or merged, and every stage
takes one at a time. Besides the block, it carries the block's figures to the driver, which
keeps per-block counts, never per-row state.

An input file's last envelope carries no block, only the file's rejections (count, kinds, and
the rejection list written to OUTPUT).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

FILE_ENTRY = pa.struct([("relpath", pa.string()), ("rows", pa.int64())])
SCHEMA = pa.schema(
    [
        ("block_id", pa.string()),  # "" for a file's closing envelope
        ("content_hash", pa.string()),
        ("rows", pa.int64()),  # valid rows in the block
        ("skipped", pa.int64()),  # rows of a block already done in OUTPUT
        ("embedded", pa.int64()),  # rows encoded by this run
        ("reused", pa.int64()),  # rows whose earlier vector was kept
        ("block", pa.binary()),  # the rows to embed and write; empty once written
        ("reuse", pa.binary()),  # earlier vectors (key, embedding); empty when none
        ("files", pa.list_(FILE_ENTRY)),  # the block's output files after this run
        ("written", pa.bool_()),  # whether this run wrote the block's files
        ("rejected", pa.int64()),  # closing envelope: the file's rejected rows
        ("rejected_by_kind", pa.map_(pa.string(), pa.int64())),
        ("rejections_file", pa.string()),  # closing envelope: the file's rejection list
    ]
)
DEFAULTS: dict[str, Any] = {
    "block_id": "",
    "content_hash": "",
    "rows": 0,
    "skipped": 0,
    "embedded": 0,
    "reused": 0,
    "block": b"",
    "reuse": b"",
    "files": [],
    "written": False,
    "rejected": 0,
    "rejected_by_kind": [],
    "rejections_file": "",
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
