"""All storage goes through here: fsspec for any URI, plus the output folder's layout."""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import fsspec

MANIFEST_NAME = "_manifest.json"
REJECTED_DIR = "_rejected"


def open_fs(uri: str, storage_options: dict[str, Any] | None = None):
    """The fsspec filesystem for `uri` and the path inside it.

    Listing caches are dropped: other processes (Ray workers) write to the same storage, and
    a cached listing of an object store would hide their files.
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.invalidate_cache()
    return fs, path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path without touching the scheme."""
    return posixpath.join(uri.rstrip("/"), *parts)


def is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def folder_has_files(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = open_fs(uri, storage_options)
    if not fs.exists(path):
        return False
    return bool(fs.find(path, maxdepth=None))


def clear_folder(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = open_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None):
    """Readers see the old file or the whole new one, never half of it.

    Local files go through a temp file, fsync and rename; an object store PUT is already
    all-or-nothing.
    """
    fs, path = open_fs(uri, storage_options)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # A dot-name: dataset readers (pyarrow, DuckDB globs on *.parquet) skip it.
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json_atomic(uri: str, payload: Any, storage_options: dict[str, Any] | None = None):
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    write_bytes_atomic(uri, text.encode("utf-8"), storage_options)


def write_parquet_atomic(uri: str, table, storage_options: dict[str, Any] | None = None):
    """Write a table as one Parquet file that readers see whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes_atomic(uri, sink.getvalue().to_pybytes(), storage_options)


def remove(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Delete one file if it is there."""
    fs, path = open_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm(path)
