"""The units of work and their names: an input file, and a block of one.

A block is rows [k*block_rows, (k+1)*block_rows) of one input file. Its id depends only on the
file's path under INPUT and the block's first row, so the same block has the same id, and so
the same output file name, on every run: a redo replaces its file instead of adding one.
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

    @property
    def path_hash(self) -> str:
        """A short hash of the path under INPUT: names this file's outputs on every rerun."""
        return hashlib.sha1(self.relpath.encode("utf-8")).hexdigest()[:16]

    @property
    def rejections_name(self) -> str:
        """The name of this file's rejection list: the path hash, then a readable stem."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.relpath)[-60:]
        return f"{self.path_hash}-{stem}.jsonl"

    def block_of(self, row: int, block_rows: int) -> BlockId:
        """The block a source row of this file belongs to."""
        return BlockId(self.path_hash, row // block_rows * block_rows)


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
