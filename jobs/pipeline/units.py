"""The units of work and their names: an input file, a segment of one, a block.

A block is what one Ray task carries and one output file (per collection) holds: about
`block_rows` rows. A file of at least `block_rows` rows is cut into blocks of its own, rows
[k*block_rows, (k+1)*block_rows); smaller files are packed whole into blocks of several files
(jobs.pipeline.packing). A block's id is the path hash of its first file and its first row, so
the same block has the same id, and so the same output file name, on every run: a redo
replaces its file instead of adding one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
BLOCK_FILE = re.compile(r"^part-(?P<path_hash>[0-9a-f]{16})-(?P<first_row>\d{9,})\.parquet$")


@dataclass(frozen=True)
class InputFile:
    """One corpus file under INPUT: the unit of reading."""

    relpath: str  # under INPUT, "/"-separated
    collection: str  # its first folder under INPUT, or "default"
    fmt: str  # "jsonl" or "parquet"
    # From the listing: the size in bytes and a version that changes when the content does
    # (the ETag on S3; mtime and inode on local disk). Together, the file's state.
    size: int = 0
    version: str = ""

    @property
    def state(self) -> list:
        """What says this file is unchanged since a block was made of it (the listing's view,
        as rsync's quick check: size and version)."""
        return [self.relpath, self.size, self.version]

    @property
    def path_hash(self) -> str:
        """A short hash of the path under INPUT: names this file's outputs on every rerun."""
        return hashlib.sha1(self.relpath.encode("utf-8")).hexdigest()[:16]

    def block_of(self, row: int, block_rows: int) -> BlockId:
        """The block a source row of this file belongs to."""
        return BlockId(self.path_hash, row // block_rows * block_rows)


@dataclass(frozen=True)
class Segment:
    """Source rows [first_row, end_row) of one input file: a block is one or more of these."""

    file: InputFile
    first_row: int
    end_row: int

    def overlaps(self, first_row: int, end_row: int) -> bool:
        return self.first_row < end_row and first_row < self.end_row


@dataclass(frozen=True, order=True)
class BlockId:
    """One block of one input file: the file's path hash and the block's first source row."""

    path_hash: str
    first_row: int

    def __str__(self) -> str:
        return f"{self.path_hash}-{self.first_row:09d}"

    def file_name(self) -> str:
        """The name of each of the block's output files (one per collection folder)."""
        return f"part-{self}.parquet"

    @classmethod
    def from_file_name(cls, name: str) -> BlockId | None:
        """The block an output file name belongs to, or None for any other name."""
        match = BLOCK_FILE.match(name)
        if match is None:
            return None
        return cls(match["path_hash"], int(match["first_row"]))

    @classmethod
    def parse(cls, text: str) -> BlockId:
        """The inverse of str(): how a block id travels between stages."""
        path_hash, first_row = text.rsplit("-", 1)
        return cls(path_hash, int(first_row))


def file_format(name: str) -> str | None:
    """ "jsonl" or "parquet" by the file's suffix; None for a file that is not corpus."""
    lower = name.lower()
    if lower.endswith(JSON_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None
