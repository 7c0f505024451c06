"""Duplicate ids across the whole corpus, found before any block is embedded.

The first occurrence (in file order, then row order) is kept; every later one is rejected. The
rule depends only on the input, so every rerun makes the same choice and a committed block
never has to change because another file was read first.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from jobs.pipeline import corpus


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of ids: a corpus of 10M ids fits in 80 MB on the driver."""
    return np.array([id_hash(i) for i in ids], dtype=np.uint64)


def id_hash(identifier: str) -> int:
    digest = hashlib.blake2b(identifier.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def scan_ids(
    shard: corpus.Shard, columns: corpus.Columns, block_rows: int, storage_options=None
) -> tuple[np.ndarray, np.ndarray]:
    """(id hashes, source rows) of the file's valid rows."""
    reader = corpus.ShardReader(shard, columns, block_rows)
    hashes, rows = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
    for table in reader.tables(storage_options):
        hashes.append(id_hashes(table.column("id").to_pylist()))
        rows.append(table.column(corpus.ROW_COLUMN).to_numpy().astype(np.int64))
    return np.concatenate(hashes), np.concatenate(rows)


def find_duplicates(
    shards: list[corpus.Shard], scans: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, dict[str, str]]:
    """relpath -> {row: reason} for every occurrence of an id after its first."""
    hashes = np.concatenate([h for h, _ in scans]) if scans else np.empty(0, np.uint64)
    if hashes.size == 0:
        return {}
    shard_of = np.concatenate([np.full(len(h), i, np.int64) for i, (h, _) in enumerate(scans)])
    rows = np.concatenate([r for _, r in scans])
    order = np.argsort(hashes, kind="stable")  # stable: file order, then row order
    sorted_hashes = hashes[order]
    repeats = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1]) + 1
    result: dict[str, dict[str, str]] = {}
    for position in repeats:
        first = position
        while first > 0 and sorted_hashes[first - 1] == sorted_hashes[position]:
            first -= 1
        kept, dup = order[first], order[position]
        first_at = f"{shards[shard_of[kept]].relpath} row {rows[kept]}"
        result.setdefault(shards[shard_of[dup]].relpath, {})[str(rows[dup])] = (
            f"duplicate id: first seen in {first_at}"
        )
    return result


def scan_corpus(shards, columns, block_rows, storage_options=None) -> dict[str, Any]:
    """Run scan_ids over every file as Ray tasks and find the duplicates."""
    import ray

    task = ray.remote(num_cpus=1)(scan_ids)
    refs = [task.remote(shard, columns, block_rows, storage_options) for shard in shards]
    return find_duplicates(shards, ray.get(refs))
