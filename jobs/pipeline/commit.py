"""The commit protocol's decisions: whose OUTPUT this is, whether a block is done, which
vectors can be reused. The protocol itself is described once, in docs/design.md.

- `claim_output`: OUTPUT belongs to one fingerprint (everything that changes a vector or where
  it goes); a rerun with another is refused, naming each difference.
- `is_block_done`: all of a block's files are there, their footers carrying this fingerprint,
  this content hash and the number of files the block has.
- `reusable_vectors`: the vectors of a redone block's earlier files, keyed by row key (id and
  text), so only new or edited rows are encoded again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.pipeline.folders import FINGERPRINT, CommittedFile, OutputFolder

FOOTER_FINGERPRINT = b"embed.fingerprint"
FOOTER_CONTENT_HASH = b"embed.content_hash"
FOOTER_PARTS = b"embed.block_parts"
FOOTER_ROW_KEYS = b"embed.row_keys"


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


def content_hash(packed: bytes) -> str:
    """A hash of everything about a block that ends up in its output files (rows, metadata,
    row positions), over its packed rows (envelopes.pack: what the envelope carries too)."""
    return hashlib.sha1(packed).hexdigest()


def row_keys(ids: list[str], texts: list[str]) -> list[str]:
    """Per row: a vector is reusable when both its id and its text are unchanged."""
    return [
        hashlib.sha1(f"{i}\0{t}".encode("utf-8", "surrogatepass")).hexdigest()[:20]
        for i, t in zip(ids, texts)
    ]


def footer(fingerprint_id: str, content_hash: str, parts: int, keys: list[str]) -> dict:
    """The Parquet footer metadata of one block file."""
    return {
        FOOTER_FINGERPRINT: fingerprint_id.encode(),
        FOOTER_CONTENT_HASH: content_hash.encode(),
        FOOTER_PARTS: str(parts).encode(),
        FOOTER_ROW_KEYS: json.dumps(keys).encode(),
    }


def read_footer(output: OutputFolder, relpath: str) -> dict[bytes, bytes]:
    """A file's footer metadata; empty for a file that cannot be read (it is redone)."""
    try:
        with output.open(relpath) as handle:
            return dict(pq.ParquetFile(handle).schema_arrow.metadata or {})
    except (OSError, pa.ArrowException):
        return {}


def is_block_done(
    files: list[CommittedFile],
    fingerprint_id: str,
    content_hash: str,
    parts: int,
    output: OutputFolder,
) -> bool:
    """All of the block's files are there, made by this fingerprint from this content.

    A crash between two files of one block, a file from other settings or an unreadable file
    means the block is not done, and it is redone.
    """
    if len(files) != parts:
        return False
    expected = {
        FOOTER_FINGERPRINT: fingerprint_id.encode(),
        FOOTER_CONTENT_HASH: content_hash.encode(),
        FOOTER_PARTS: str(parts).encode(),
    }
    for committed in files:
        found = read_footer(output, committed.relpath)
        if any(found.get(key) != value for key, value in expected.items()):
            return False
    return True


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
