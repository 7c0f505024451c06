"""The commit protocol's decisions: whose OUTPUT this is, whether a block is done, which
vectors can be reused. The protocol itself is described once, in docs/design.md.

- `claim_output`: OUTPUT belongs to one fingerprint (everything that changes a vector or where
  it goes); a rerun with another is refused, naming each difference.
- `committed_content`: a block whose files are all there, made by this fingerprint: the
  signature (the state of its input files) and the content hash their footers carry. The
  same signature means done, from footers alone; another one means its files are read again,
  and the same content hash still means done (a file touched, or another block of it edited).
- `reusable_vectors`: the vectors of a redone block's earlier files, keyed by row key (id and
  text), so only new or edited rows are encoded again.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.pipeline.folders import FINGERPRINT, CommittedFile, OutputFolder

FOOTER_FINGERPRINT = b"embed.fingerprint"
FOOTER_SIGNATURE = b"embed.block_signature"
FOOTER_CONTENT_HASH = b"embed.content_hash"
FOOTER_PARTS = b"embed.block_parts"
FOOTER_ROW_KEYS = b"embed.row_keys"
FOOTER_INPUTS = b"embed.block_inputs"
FOOTER_REPORT = b"embed.block_report"


class FingerprintMismatch(ValueError):
    """OUTPUT holds vectors made differently from what this run would make."""


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short, stable id of a fingerprint: what every output file's footer carries."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def claim_output(
    output: OutputFolder,
    fingerprint: dict[str, Any],
    write: bool = True,
    unresolved: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """Record this run's fingerprint in OUTPUT, or check it against the one there.

    Returns the stored fingerprint when resuming, None for a fresh OUTPUT. Raises
    FingerprintMismatch naming each difference. With write=False (a check before the run)
    only checks, leaving out the `unresolved` keys the fingerprint does not have yet.
    """
    stored = output.read_json(FINGERPRINT)
    if stored is not None:
        skipped = {key for key in unresolved if key not in fingerprint}
        differences = [
            f"{key}: OUTPUT has {stored.get(key)!r}, this run {fingerprint.get(key)!r}"
            for key in sorted((set(stored) | set(fingerprint)) - skipped)
            if stored.get(key) != fingerprint.get(key)
        ]
        if differences:
            raise FingerprintMismatch(
                "OUTPUT holds vectors made with other settings, and mixing them would make the "
                "index inconsistent (" + "; ".join(differences) + "). Use a new OUTPUT, or "
                "--overwrite (EMBED_OVERWRITE=1) to replace everything in it."
            )
        return stored
    if output.has_files():
        raise FingerprintMismatch(
            f"OUTPUT {output.uri!r} holds files that this job did not write (no "
            f"{FINGERPRINT}). Use an empty OUTPUT, or --overwrite to clear it."
        )
    if write:
        output.write_json(FINGERPRINT, fingerprint)
    return None


def row_keys(ids: list[str], texts: list[str]) -> list[str]:
    """Per row: a vector is reusable when both its id and its text are unchanged."""
    return [
        hashlib.sha1(f"{i}\0{t}".encode("utf-8", "surrogatepass")).hexdigest()[:20]
        for i, t in zip(ids, texts)
    ]


def content_hash(inputs: list[list], packed: bytes, rejections: bytes) -> str:
    """A hash of everything about a block that ends up in OUTPUT: the segments it holds, its
    rows (packed: metadata and row positions included) and its rejection records."""
    digest = hashlib.sha1(json.dumps(inputs, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    digest.update(packed)
    digest.update(rejections)
    return digest.hexdigest()


def footer(
    fingerprint_id: str,
    signature: str,
    content: str,
    parts: int,
    keys: list[str],
    inputs: list[list],
    report: dict[str, Any],
) -> dict:
    """The Parquet footer metadata of one block file: what made it (fingerprint, the block's
    signature: the state of its input files, jobs.pipeline.packing; its content hash), how
    many files the block has, a key per row, the input segments it holds and its rejections'
    figures (so that a done block's figures need no input read)."""
    return {
        FOOTER_FINGERPRINT: fingerprint_id.encode(),
        FOOTER_SIGNATURE: signature.encode(),
        FOOTER_CONTENT_HASH: content.encode(),
        FOOTER_PARTS: str(parts).encode(),
        FOOTER_ROW_KEYS: json.dumps(keys).encode(),
        FOOTER_INPUTS: json.dumps(inputs, ensure_ascii=False).encode(),
        FOOTER_REPORT: json.dumps(report, ensure_ascii=False).encode(),
    }


@dataclass(frozen=True)
class FileRecord:
    """What one block file's footer says (its row keys left out: only a redo reads them)."""

    fingerprint_id: str
    signature: str
    content_hash: str
    parts: int
    rows: int
    inputs: list[list]  # [relpath, first row, end row] per segment
    report: dict[str, Any]  # rejected_by_kind, rejected, cuts


def read_record(output: OutputFolder, relpath: str) -> FileRecord | None:
    """A block file's footer; None for a file that cannot be read or was not written by this
    version of the job (its block is redone)."""
    try:
        with output.open(relpath) as handle:
            metadata = pq.read_metadata(handle)
        found = metadata.metadata or {}
        return FileRecord(
            found[FOOTER_FINGERPRINT].decode(),
            found[FOOTER_SIGNATURE].decode(),
            found[FOOTER_CONTENT_HASH].decode(),
            int(found[FOOTER_PARTS]),
            metadata.num_rows,
            json.loads(found[FOOTER_INPUTS]),
            json.loads(found[FOOTER_REPORT]),
        )
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def read_records(output: OutputFolder, relpaths: list[str]) -> dict[str, FileRecord | None]:
    """The footers of many block files: one small read each, several at a time (object
    storage answers in tens of milliseconds, and the driver only waits)."""
    if not relpaths:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(relpaths))) as pool:
        return dict(zip(relpaths, pool.map(lambda r: read_record(output, r), relpaths)))


def committed_content(
    files: list[CommittedFile], records: dict[str, FileRecord | None], fingerprint_id: str
) -> tuple[str, str] | None:
    """(signature, content hash) of a block whose files are all there, made by this
    fingerprint; None for any other block (a crash between two of its files, a file from
    other settings, an unreadable file): it is redone."""
    found = [records.get(committed.relpath) for committed in files]
    if not found or any(
        record is None or record.fingerprint_id != fingerprint_id or record.parts != len(files)
        for record in found
    ):
        return None
    made = {(record.signature, record.content_hash) for record in found}
    return made.pop() if len(made) == 1 else None


def reusable_vectors(
    files: list[CommittedFile], fingerprint_id: str, column: str, output: OutputFolder
) -> pa.Table | None:
    """A table (key, embedding) of the vectors in a block's earlier files that this
    fingerprint made; None when there are none."""
    tables = []
    for committed in files:
        try:
            with output.open(committed.relpath) as handle:
                parquet = pq.ParquetFile(handle)
                meta = parquet.schema_arrow.metadata or {}
                if meta.get(FOOTER_FINGERPRINT) != fingerprint_id.encode():
                    continue
                keys = json.loads(meta[FOOTER_ROW_KEYS])
                vectors = parquet.read(columns=[column]).column(column)
        except (OSError, KeyError, ValueError, pa.ArrowException):
            continue  # unreadable or foreign: its rows are simply embedded again
        tables.append(pa.table({"key": keys, "embedding": vectors.combine_chunks()}))
    return pa.concat_tables(tables) if tables else None


def reusable_keys(
    files: list[CommittedFile], fingerprint_id: str, output: OutputFolder
) -> set[str]:
    """The row keys of a block's earlier files that this fingerprint made (what
    reusable_vectors would find, from the footers alone)."""
    keys: set[str] = set()
    for committed in files:
        try:
            with output.open(committed.relpath) as handle:
                meta = pq.read_metadata(handle).metadata or {}
            if meta.get(FOOTER_FINGERPRINT) == fingerprint_id.encode():
                keys.update(json.loads(meta[FOOTER_ROW_KEYS]))
        except (OSError, KeyError, ValueError, pa.ArrowException):
            continue
    return keys
