"""Arrow tables as bytes (IPC stream format): how blocks travel through Ray, and what a block
digest is computed over."""

from __future__ import annotations

import pyarrow as pa


def pack(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
