"""Duplicate ids across the whole corpus, found before any block is embedded.

The first occurrence (in file order, then row order) is kept; every later one is rejected with
the place of the first. The rule depends only on the input, so every rerun makes the same
choice and a committed block never has to change because another file was read first.

On Ray the scan is a hash-partitioned map and reduce, so that no machine holds every id:

    scan_group     a task per group of files: each valid row's sighting (64-bit id hash, file,
                   row), split by hash into one partition per reducer (24 bytes a row, in
                   Ray's object store)
    repeats_in     a task per partition: that partition's sightings from every group, sorted
                   by (hash, file, row); every sighting after the first of its hash is a repeat

The driver gets back only the repeats and the files a storage failure kept from being read:
its memory follows the duplicates and the files, not the rows.

The same pass draws the calibration sample (jobs.pipeline.calibration): the rows whose id has
the smallest hashes, first occurrences only. A hash of the id is a uniform draw over the whole
corpus that every rerun repeats, whatever the order or grouping of the files; each reducer
returns its partition's smallest, and the driver keeps the smallest of those.
"""

from __future__ import annotations

import hashlib
import math
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


def excluded_rows(excluded: dict[str, str]) -> dict[int, str]:
    """One file's excluded rows (as they travel in JSON, rows as text) by source row."""
    return {int(row): reason for row, reason in excluded.items()}


# One valid row: its id's hash, its file (index in the corpus's file order) and source row.
SIGHTING = np.dtype([("hash", "<u8"), ("file", "<i8"), ("row", "<i8")])
# A later occurrence of an id, and where the id was first seen.
REPEAT = np.dtype([("file", "<i8"), ("row", "<i8"), ("kept_file", "<i8"), ("kept_row", "<i8")])
# Enough partitions for every CPU to reduce one, twice over; capped to keep the number of
# intermediate objects (groups x partitions) small on big clusters.
MAX_PARTITIONS = 128
MAX_GROUPS = 512


@dataclass
class CorpusScan:
    """The duplicates found, the files that could not be read for it, the calibration
    sample: (file, row) of up to `sample_rows` valid rows, in the order of their id's hash,
    and each file's size in rows (what jobs.pipeline.packing plans blocks from)."""

    excluded: Excluded
    unread: dict[str, str] = field(default_factory=dict)  # relpath -> storage error
    sample: list[tuple[str, int]] = field(default_factory=list)
    sizes: dict[str, FileSize] = field(default_factory=dict)  # relpath -> its rows

    @property
    def rows(self) -> dict[str, int]:
        """Source rows per file read (rejected ones included)."""
        return {relpath: size.rows for relpath, size in self.sizes.items()}

    def valid_rows(self, relpath: str, first_row: int, end_row: int, block_rows: int) -> int:
        """Valid rows of a file in [first_row, end_row) that are not duplicates."""
        size = self.sizes.get(relpath)
        if size is None:
            return 0
        chunks = size.valid[first_row // block_rows : -(-end_row // block_rows)]
        excluded = self.excluded.get(relpath, {})
        return sum(chunks) - sum(first_row <= int(row) < end_row for row in excluded)


@dataclass(frozen=True)
class FileSize:
    """One file as the scan saw it: its source rows (up to and including the row its content
    could not be decoded from, if any), and its valid rows per `block_rows` rows."""

    rows: int
    valid: list[int]


# (folder, [(file index, file)], columns, block_rows, sample_rows) -> ((unread, sizes), per
# partition: (repeats, sample))
Runner = Callable[..., tuple[dict[str, str], list[tuple[np.ndarray, np.ndarray]]]]


def find_corpus_duplicates(
    folder: InputFolder,
    input_files: list[InputFile],
    columns: Columns,
    block_rows: int,
    run: Runner | None = None,
    sample_rows: int = 0,
) -> CorpusScan:
    """Scan every file (as Ray tasks by default; `run=scan_here` in this process), find the
    duplicates and draw a sample of `sample_rows` rows. A file the storage would not give up
    is left out (a rerun decides again with it)."""
    indexed = list(enumerate(input_files))
    (unread, sizes), reduced = (run or scan_on_ray)(
        folder, indexed, columns, block_rows, sample_rows
    )
    sample = smallest_hashes([drawn for _, drawn in reduced], sample_rows)
    return CorpusScan(
        excluded_from(input_files, [repeats for repeats, _ in reduced]),
        unread,
        [(input_files[file].relpath, row) for file, row in zip(sample["file"], sample["row"])],
        sizes,
    )


def id_hash(identifier: str) -> int:
    digest = hashlib.blake2b(identifier.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def file_sightings(
    folder: InputFolder, index: int, input_file: InputFile, columns: Columns, block_rows: int
) -> tuple[np.ndarray, FileSize]:
    """Every valid row of the file as a sighting, and the file's size in rows;
    StorageReadError if it cannot be read."""
    parts = [np.empty(0, SIGHTING)]
    rows, valid = 0, []
    for block in read_blocks(folder, input_file, columns, block_rows, metadata=False):
        ids = block.rows.column("id").to_pylist()
        part = np.empty(len(ids), SIGHTING)
        part["hash"] = np.fromiter((id_hash(i) for i in ids), np.uint64, len(ids))
        part["file"] = index
        part["row"] = block.rows.column(ROW).to_numpy()
        parts.append(part)
        rows = max(rows, last_row(block) + 1)
        chunk = block.id.first_row // block_rows
        valid += [0] * (chunk + 1 - len(valid))
        valid[chunk] += len(ids)
    return np.concatenate(parts), FileSize(rows, valid)


def last_row(block) -> int:
    """The last source row a block has: a valid row, a rejected one, or where the file's
    content could not be decoded from."""
    rows = block.rows.column(ROW)
    last = max([r.row for r in block.rejections], default=-1)
    if len(rows):
        last = max(last, rows[-1].as_py())
    return max(last, -1 if block.cut_at is None else block.cut_at)


def scan_group(
    folder: InputFolder,
    indexed: list[tuple[int, InputFile]],
    columns: Columns,
    block_rows: int,
    partitions: int,
) -> tuple:
    """((files not read -> error, files read -> size), then the group's sightings in
    `partitions` parts by hash)."""
    found, unread, sizes = [np.empty(0, SIGHTING)], {}, {}
    for index, input_file in indexed:
        try:
            sightings, size = file_sightings(folder, index, input_file, columns, block_rows)
        except StorageReadError as err:
            unread[input_file.relpath] = str(err)  # none of its rows take part
            continue
        found.append(sightings)
        sizes[input_file.relpath] = size
    sightings = np.concatenate(found)
    partition = sightings["hash"] % np.uint64(partitions)
    order = np.argsort(partition, kind="stable")
    bounds = np.searchsorted(partition[order], np.arange(1, partitions, dtype=np.uint64))
    return ((unread, sizes), *np.split(sightings[order], bounds))


def repeats_in(*parts: np.ndarray) -> np.ndarray:
    """Every sighting of an id after its first in (file, row) order, with the first's place."""
    return reduce_partition(0, *parts)[0]


def reduce_partition(sample_rows: int, *parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One partition's repeats (repeats_in), and its `sample_rows` first sightings of the
    smallest id hashes."""
    sightings = np.concatenate([np.empty(0, SIGHTING), *parts])
    sightings = sightings[np.lexsort((sightings["row"], sightings["file"], sightings["hash"]))]
    hashes = sightings["hash"]
    starts_group = np.r_[True, hashes[1:] != hashes[:-1]] if len(hashes) else np.empty(0, bool)
    # For each position, the position where its group (its id) starts.
    group_start = np.maximum.accumulate(np.where(starts_group, np.arange(len(hashes)), 0))
    later = np.flatnonzero(~starts_group)
    first = sightings[group_start[later]]
    repeats = np.empty(len(later), REPEAT)
    repeats["file"], repeats["row"] = sightings["file"][later], sightings["row"][later]
    repeats["kept_file"], repeats["kept_row"] = first["file"], first["row"]
    return repeats, sightings[starts_group][:sample_rows]  # sorted by hash already


def smallest_hashes(parts: list[np.ndarray], count: int) -> np.ndarray:
    """The `count` sightings of smallest hash among the partitions' own smallest."""
    drawn = np.concatenate([np.empty(0, SIGHTING), *parts])
    return drawn[np.argsort(drawn["hash"], kind="stable")][:count]


def excluded_from(input_files: list[InputFile], repeats: list[np.ndarray]) -> Excluded:
    """The repeats as rows to set aside, per file, each naming where its id was first seen."""
    found: Excluded = {}
    for part in repeats:
        for file, row, kept_file, kept_row in part.tolist():
            first_seen = f"{input_files[kept_file].relpath} row {kept_row}"
            found.setdefault(input_files[file].relpath, {})[str(row)] = rejections.duplicate_id(
                first_seen
            )
    return found


def scan_on_ray(folder, indexed, columns, block_rows, sample_rows=0):
    """The scan as Ray tasks: groups of files mapped to hash partitions, each reduced on its
    own worker."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    partitions = min(MAX_PARTITIONS, 2 * cpus)
    groups = file_groups(indexed, min(MAX_GROUPS, 4 * cpus))
    scan = ray.remote(num_cpus=1)(scan_group).options(num_returns=partitions + 1)
    mapped = [scan.remote(folder, group, columns, block_rows, partitions) for group in groups]
    reduce = ray.remote(num_cpus=1)(reduce_partition)
    reduced = [reduce.remote(sample_rows, *[m[1 + p] for m in mapped]) for p in range(partitions)]
    unread: dict[str, str] = {}
    sizes: dict[str, FileSize] = {}
    for group_unread, group_sizes in ray.get([m[0] for m in mapped]):
        unread.update(group_unread)
        sizes.update(group_sizes)
    return (unread, sizes), ray.get(reduced)


def file_groups(indexed: list, groups: int) -> list[list]:
    """At most `groups` runs of consecutive files, of near-equal counts."""
    size = max(1, math.ceil(len(indexed) / groups))
    return [indexed[i : i + size] for i in range(0, len(indexed), size)]


def scan_here(folder, indexed, columns, block_rows, sample_rows=0):
    """The same scan in this process, one partition (a dry run starts no Ray)."""
    files, sightings = scan_group(folder, indexed, columns, block_rows, 1)
    return files, [reduce_partition(sample_rows, sightings)]
