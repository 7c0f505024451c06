"""How a block travels through Ray Data: as one row (an envelope), its rows packed as Arrow IPC.

Ray Data concatenates and re-slices the tables it batches. Blocks of different files may
disagree on a metadata column's type (a crash when concatenated), and a re-sliced block could
no longer be written under one name. An envelope is never split or merged, and every stage
takes one at a time. Besides the block, it carries the block's figures to the driver, which
keeps per-block counts, never per-row state.

An input file's last envelope (its closing envelope) carries no block, only the file's
rejections (count, kinds, the rejection list written to OUTPUT), where its content could not be
decoded, or the storage error that stopped its reading.

A commit that a worker could not make (the lease lost, a write that failed) travels back the
same way, as data (`failure`, `failed`), not as an exception: Ray would wrap that in its own
and lose the original type, and print tracebacks of its own for a failure that takes one line
to say.
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
        ("replica_id", pa.string()),  # the replica that embedded the block's rows
        # A file's closing envelope: its rejections, and whether it was read to the end.
        ("file", pa.string()),  # path under INPUT
        ("rejected", pa.int64()),
        ("rejected_by_kind", pa.map_(pa.string(), pa.int64())),
        ("rejections_file", pa.string()),  # the file's rejection list in OUTPUT
        ("cut_at", pa.int64()),  # content undecodable from this row on; -1: read to the end
        ("cut_reason", pa.string()),
        ("unread", pa.string()),  # a storage failure stopped the reading: the error
        # A commit that could not happen (STAGE_FAILURES: the lease lost, a write that
        # failed): its kind and message. The driver stops the run on the first one.
        ("failure", pa.string()),
        ("failed", pa.string()),
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
    "replica_id": "",
    "file": "",
    "rejected": 0,
    "rejected_by_kind": [],
    "rejections_file": "",
    "cut_at": -1,
    "cut_reason": "",
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
