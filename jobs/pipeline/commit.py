"""The commit protocol: what makes a rerun skip finished work and never write a row twice.

- The unit of work is an input block: rows [k*block_rows, (k+1)*block_rows) of one input file.
- A block's output is `collection=<c>/part-<file digest>-<first row>.parquet`, one file per
  collection the block's rows go to. The name is a pure function of the block, so a redo
  replaces the file instead of adding one. Files are written whole (temp + rename, or one PUT).
- Each file's Parquet footer records the run fingerprint (everything that changes a vector),
  the block's content digest, how many files the block has, and a key per row
  (hash of id and text). A block is done when all its files are there with the current
  fingerprint and digest; otherwise it is redone, reusing the vectors of rows whose key is
  unchanged, so only new or edited rows are encoded.
- `_fingerprint.json` is claimed before the first block is written: a rerun with another
  model, dim, prompt or precision is refused instead of mixing vectors in one OUTPUT.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.pipeline import storage
from jobs.pipeline.ipc import pack

FINGERPRINT_NAME = "_fingerprint.json"
META_FINGERPRINT = b"embed.fingerprint"
META_DIGEST = b"embed.block_digest"
META_PARTS = b"embed.block_parts"
META_KEYS = b"embed.row_keys"


class FingerprintMismatch(ValueError):
    """OUTPUT holds vectors made differently from what this run would make."""


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def claim_output(
    output_uri: str, fingerprint: dict[str, Any], storage_options=None, write: bool = True
) -> dict[str, Any] | None:
    """Record this run's fingerprint in OUTPUT, or check it against the one there.

    Returns the stored fingerprint when resuming, None for a fresh OUTPUT. Raises
    FingerprintMismatch naming each difference. With write=False (a dry run) only checks.
    """
    uri = storage.join(output_uri, FINGERPRINT_NAME)
    fs, path = storage.open_fs(uri, storage_options)
    if fs.exists(path):
        with fs.open(path, "rt", encoding="utf-8") as handle:
            stored = json.load(handle)
        differences = [
            f"{key}: OUTPUT has {stored.get(key)!r}, this run {fingerprint.get(key)!r}"
            for key in sorted(set(stored) | set(fingerprint))
            if stored.get(key) != fingerprint.get(key)
        ]
        if differences:
            raise FingerprintMismatch(
                "OUTPUT holds vectors made with other settings, and mixing them would make the "
                "index inconsistent (" + "; ".join(differences) + "). Use a new OUTPUT, or "
                "--overwrite (EMBED_OVERWRITE=1) to replace everything in it."
            )
        return stored
    if storage.folder_has_files(output_uri, storage_options):
        raise FingerprintMismatch(
            f"OUTPUT {output_uri!r} holds files that this job did not write (no "
            f"{FINGERPRINT_NAME}). Use an empty OUTPUT, or --overwrite to clear it."
        )
    if write:
        storage.write_json_atomic(uri, fingerprint, storage_options)
    return None


@dataclass(frozen=True)
class CommittedFile:
    """One output file as found in OUTPUT before the run."""

    label: str
    path: str
    collection: str


def index_committed(output_uri: str, storage_options=None) -> dict[str, list[CommittedFile]]:
    """Output files by input-file digest, from one listing of OUTPUT."""
    fs, root = storage.open_fs(output_uri, storage_options)
    index: dict[str, list[CommittedFile]] = {}
    if not fs.exists(root):
        return index
    root = root.rstrip("/")
    for path in fs.find(root):
        parts = path[len(root) :].lstrip("/").split("/")
        if len(parts) != 2 or not parts[0].startswith("collection="):
            continue
        name = parts[1]
        if not (name.startswith("part-") and name.endswith(".parquet")):
            continue
        label = name[len("part-") : -len(".parquet")]
        digest = label.rsplit("-", 1)[0]
        entry = CommittedFile(label, fs.unstrip_protocol(path), parts[0].split("=", 1)[1])
        index.setdefault(digest, []).append(entry)
    return index


def block_digest(table: pa.Table) -> str:
    """A digest of everything about a block that ends up in its output files."""
    return hashlib.sha1(pack(table)).hexdigest()


def row_keys(ids: list[str], texts: list[str]) -> list[str]:
    """Per row: a vector is reusable when both its id and its text are unchanged."""
    return [
        hashlib.sha1(f"{i}\0{t}".encode("utf-8", "surrogatepass")).hexdigest()[:20]
        for i, t in zip(ids, texts)
    ]


def file_metadata(fingerprint: str, digest: str, parts: int, keys: list[str]) -> dict[bytes, bytes]:
    return {
        META_FINGERPRINT: fingerprint.encode(),
        META_DIGEST: digest.encode(),
        META_PARTS: str(parts).encode(),
        META_KEYS: json.dumps(keys).encode(),
    }


def read_footer(path: str, storage_options=None) -> dict[bytes, bytes]:
    fs, inner = storage.open_fs(path, storage_options)
    try:
        with fs.open(inner, "rb") as handle:
            return dict(pq.ParquetFile(handle).schema_arrow.metadata or {})
    except (OSError, pa.ArrowException):
        return {}  # unreadable: treated as not committed, and redone


def block_status(
    body: pa.Table, files: list[CommittedFile], fingerprint: str, storage_options=None
) -> tuple[str, bool]:
    """The block's content digest, and whether OUTPUT already holds it done."""
    digest = block_digest(body)
    parts = len(set(body.column("collection").to_pylist()))
    done = bool(files) and is_block_done(files, fingerprint, digest, parts, storage_options)
    return digest, done


def is_block_done(
    files: list[CommittedFile], fingerprint: str, digest: str, parts: int, storage_options=None
) -> bool:
    """All of the block's files are there, made by this fingerprint from this content."""
    if len(files) != parts:
        return False
    for committed in files:
        meta = read_footer(committed.path, storage_options)
        if (
            meta.get(META_FINGERPRINT) != fingerprint.encode()
            or meta.get(META_DIGEST) != digest.encode()
            or meta.get(META_PARTS) != str(parts).encode()
        ):
            return False
    return True


def reusable_vectors(
    files: list[CommittedFile], fingerprint: str, column: str, storage_options=None
):
    """A table (key, embedding) of the vectors in a block's earlier files that this
    fingerprint made; None when there are none."""
    tables = []
    for committed in files:
        fs, inner = storage.open_fs(committed.path, storage_options)
        try:
            with fs.open(inner, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                meta = parquet.schema_arrow.metadata or {}
                if meta.get(META_FINGERPRINT) != fingerprint.encode():
                    continue
                keys = json.loads(meta[META_KEYS])
                embeddings = parquet.read(columns=[column]).column(column)
        except (OSError, KeyError, ValueError, pa.ArrowException):
            continue  # unreadable or foreign: its rows are simply embedded again
        tables.append(pa.table({"key": keys, "embedding": embeddings.combine_chunks()}))
    return pa.concat_tables(tables) if tables else None
