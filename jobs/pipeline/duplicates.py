"""Duplicate ids across the whole corpus, found before any block is embedded.

The first occurrence (in file order, then row order) is kept; every later one is rejected with
the place of the first. The rule depends only on the input, so every rerun makes the same
choice and a committed block never has to change because another file was read first. Ids are
compared by 64-bit hash: 80 MB for 10M ids on the driver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jobs.pipeline import rejections
from jobs.pipeline.blocks import read_blocks
from jobs.pipeline.folders import InputFolder, StorageReadError
from jobs.pipeline.reading import ROW, Columns
from jobs.pipeline.units import InputFile

# relpath -> {source row (as text, it travels as JSON): reason}
Excluded = dict[str, dict[str, str]]


@dataclass
class IdScan:
    """The id hashes and source rows of one file's valid rows."""

    hashes: np.ndarray
    rows: np.ndarray
    unread: str = ""  # the storage error that stopped the scan: the file sits this run out


@dataclass
class CorpusScan:
    """The duplicates found, and the files that could not be read for it."""

    excluded: Excluded
    unread: dict[str, str] = field(default_factory=dict)  # relpath -> storage error


def id_hash(identifier: str) -> int:
    digest = hashlib.blake2b(identifier.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def scan_ids(
    folder: InputFolder, input_file: InputFile, columns: Columns, block_rows: int
) -> IdScan:
    """The id hashes and source rows of the file's valid rows."""
    hashes, rows = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
    try:
        for block in read_blocks(folder, input_file, columns, block_rows):
            ids = block.rows.column("id").to_pylist()
            hashes.append(np.array([id_hash(i) for i in ids], dtype=np.uint64))
            rows.append(block.rows.column(ROW).to_numpy().astype(np.int64))
    except StorageReadError as err:
        return IdScan(hashes[0], rows[0], unread=str(err))
    return IdScan(np.concatenate(hashes), np.concatenate(rows))


def find_duplicates(input_files: list[InputFile], scans: list[IdScan]) -> Excluded:
    """Every occurrence of an id after its first, with the place of the first."""
    if not scans or not sum(len(scan.hashes) for scan in scans):
        return {}
    hashes = np.concatenate([scan.hashes for scan in scans])
    file_of = np.concatenate([np.full(len(s.hashes), i, np.int64) for i, s in enumerate(scans)])
    rows = np.concatenate([scan.rows for scan in scans])
    order = np.argsort(hashes, kind="stable")  # stable: file order, then row order
    in_order = hashes[order]
    starts_group = np.r_[True, in_order[1:] != in_order[:-1]]
    # For each position in sorted order, the position where its group (its id) starts.
    group_start = np.maximum.accumulate(np.where(starts_group, np.arange(len(in_order)), 0))
    found: Excluded = {}
    for position in np.flatnonzero(~starts_group):
        kept, repeat = order[group_start[position]], order[position]
        first_seen = f"{input_files[file_of[kept]].relpath} row {rows[kept]}"
        found.setdefault(input_files[file_of[repeat]].relpath, {})[str(rows[repeat])] = (
            rejections.duplicate_id(first_seen)
        )
    return found


def find_corpus_duplicates(
    folder: InputFolder,
    input_files: list[InputFile],
    columns: Columns,
    block_rows: int,
    scan_all: Callable[..., list[IdScan]] | None = None,
) -> CorpusScan:
    """Scan every file (in Ray tasks by default; `scan_all` to scan otherwise) and find the
    duplicates. A file the storage would not give up is left out of the decision (a rerun
    decides again with it)."""
    scans = (scan_all or scan_on_ray)(folder, input_files, columns, block_rows)
    unread = {f.relpath: scan.unread for f, scan in zip(input_files, scans) if scan.unread}
    return CorpusScan(find_duplicates(input_files, scans), unread)


def scan_on_ray(folder, input_files, columns, block_rows) -> list[IdScan]:
    import ray

    task = ray.remote(num_cpus=1)(scan_ids)
    return ray.get([task.remote(folder, f, columns, block_rows) for f in input_files])


def scan_here(folder, input_files, columns, block_rows) -> list[IdScan]:
    """One file after another in this process (a dry run starts no Ray)."""
    return [scan_ids(folder, f, columns, block_rows) for f in input_files]
