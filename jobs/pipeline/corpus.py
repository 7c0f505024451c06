"""The input side: find the corpus files, read them into Arrow, set bad rows aside with a reason."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.pipeline import storage

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
DEFAULT_COLLECTION = "default"
# One path component, no dots first (so no "..", no hidden folders), no "=" or "/" that would
# break hive partitioning or escape OUTPUT.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Columns the job itself writes. An input metadata column with one of these names (say a
# `text` column when --text-column is `body`) is kept as `input_<name>`, never overwritten.
OUTPUT_COLUMNS = ("id", "text", "embedding")
RENAMED_PREFIX = "input_"
RAW_PREVIEW_CHARS = 200
# In-flight only, never written: the input block a row belongs to, and its row in the file.
BLOCK_COLUMN = "_block"
ROW_COLUMN = "_row"
IN_FLIGHT_COLUMNS = (BLOCK_COLUMN, ROW_COLUMN)


class InputError(ValueError):
    """INPUT cannot be used at all (missing, empty)."""


@dataclass(frozen=True)
class Shard:
    """One input file: the unit of reading."""

    url: str
    relpath: str
    collection: str
    fmt: str  # "jsonl" or "parquet"

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.relpath.encode("utf-8")).hexdigest()[:16]

    @property
    def key(self) -> str:
        """A stable name for this file's own side outputs (rejections), same on every rerun."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.relpath)[-60:]
        return f"{self.digest}-{stem}"


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the text and the id."""

    text: str = "text"
    id: str = "id"


def file_format(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(JSON_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def plan_shards(input_uri: str, storage_options: dict[str, Any] | None = None) -> list[Shard]:
    """Every corpus file under INPUT, at any depth, in a stable order.

    A file's collection is its first folder under INPUT; files directly in INPUT belong to
    `default`. Folders and files starting with "." or "_" are skipped (hidden, or job output).
    """
    fs, root = storage.open_fs(input_uri, storage_options)
    if not fs.exists(root):
        raise InputError(f"INPUT {input_uri!r} does not exist")
    if not fs.isdir(root):
        raise InputError(f"INPUT {input_uri!r} is not a folder")
    root = root.rstrip("/")
    shards = []
    for path in sorted(fs.find(root)):
        relpath = path[len(root) :].lstrip("/")
        parts = relpath.split("/")
        if any(part.startswith((".", "_")) for part in parts):
            continue
        fmt = file_format(parts[-1])
        if fmt is None:
            continue
        collection = parts[0] if len(parts) > 1 else DEFAULT_COLLECTION
        shards.append(Shard(fs.unstrip_protocol(path), relpath, collection, fmt))
    if not shards:
        raise InputError(
            f"INPUT {input_uri!r} holds no corpus files "
            f"(looked for {', '.join(JSON_SUFFIXES + PARQUET_SUFFIXES)})"
        )
    return shards


@dataclass
class Rejection:
    file: str
    row: int | None
    reason: str
    id: str | None = None
    raw: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "row"}


class ShardReader:
    """Turns one shard into Arrow tables of valid rows plus a list of rejections.

    Output columns: `id` (string), `text` (string), `collection` (string), then the file's
    other columns as metadata, unchanged.
    """

    def __init__(
        self,
        shard: Shard,
        columns: Columns,
        block_rows: int = 1024,
        excluded_rows: dict[int, str] | None = None,
    ):
        self.shard = shard
        self.columns = columns
        self.block_rows = block_rows
        # Rows to set aside with the given reason (duplicate ids found across the corpus).
        self.excluded_rows = excluded_rows or {}
        self.rejections: list[Rejection] = []
        # The first source row not yet handed on: where a read error leaves the file.
        self.position = 0

    def reject(self, row: int | None, reason: str, id_: Any = None, raw: Any = None) -> None:
        preview = None if raw is None else str(raw)[:RAW_PREVIEW_CHARS]
        ident = None if id_ is None else str(id_)
        self.rejections.append(Rejection(self.shard.relpath, row, reason, ident, preview))

    def tables(self, storage_options: dict[str, Any] | None = None) -> Iterator[pa.Table]:
        """Valid rows, one table per block: rows [k*block_rows, (k+1)*block_rows) of the file.

        A block's label depends only on the file and source row positions, so it is the same
        on every run, and each label appears in exactly one yielded table.
        """
        read = self._parquet_tables if self.shard.fmt == "parquet" else self._jsonl_tables
        try:
            for block in self._one_table_per_block(read(storage_options)):
                yield block
                self.position = self._block_start(block) + self.block_rows
        except (OSError, EOFError, pa.ArrowException, gzip.BadGzipFile) as err:
            # A corrupt or unreadable file is set aside from the failing row on (the whole file
            # when it fails at once); the rest of the corpus runs.
            where = (
                "unreadable file"
                if self.position == 0
                else (f"file unreadable from row {self.position} on")
            )
            self.reject(self.position, f"{where}: {type(err).__name__}: {err}")

    # -- JSON Lines -------------------------------------------------------------------------

    def _jsonl_tables(self, storage_options) -> Iterator[pa.Table]:
        # The whole file is parsed before anything is yielded, so metadata types are inferred
        # once per file: blocks of one file never disagree on a column's type.
        records: list[dict[str, Any]] = []
        rows: list[int] = []
        fs, path = storage.open_fs(self.shard.url, storage_options)
        with fs.open(path, "rb", compression="infer") as handle:
            for row, line in enumerate(handle):
                record = self._parse_line(row, line)
                if record is not None:
                    records.append(record)
                    rows.append(row)
        if records:
            table = self._valid_table(records, rows)
            if table is not None:
                yield table

    def _parse_line(self, row: int, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None  # blank lines are not rows
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            self.reject(row, f"invalid UTF-8: {err}", raw=line[:RAW_PREVIEW_CHARS])
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            self.reject(row, f"malformed JSON: {err.msg} at column {err.colno}", raw=text)
            return None
        if not isinstance(record, dict):
            self.reject(row, f"not a JSON object but {type(record).__name__}", raw=text)
            return None
        return record

    def _valid_table(self, records: list[dict[str, Any]], rows: list[int]) -> pa.Table | None:
        ids, texts, collections, kept = self._check_rows(
            [r.get(self.columns.id) for r in records],
            [r.get(self.columns.text, _MISSING) for r in records],
            [r.get("collection") for r in records],
            rows,
        )
        if not kept:
            return None
        names = dict.fromkeys(k for i in kept for k in records[i])
        metadata = {
            output_name(name): metadata_column([records[i].get(name) for i in kept])
            for name in self._metadata_names(names)
        }
        first_rows = [rows[i] for i in kept]
        return self._with_block_column(
            pa.table({"id": ids, "text": texts, "collection": collections, **metadata}),
            first_rows,
        )

    # -- Parquet ----------------------------------------------------------------------------

    def _parquet_tables(self, storage_options) -> Iterator[pa.Table]:
        fs, path = storage.open_fs(self.shard.url, storage_options)
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            first_row = 0
            for batch in parquet.iter_batches(batch_size=self.block_rows):
                table = pa.Table.from_batches([batch])
                valid = self._valid_arrow(table, first_row)
                if valid is not None:
                    yield valid
                first_row += table.num_rows

    def _valid_arrow(self, table: pa.Table, first_row: int) -> pa.Table | None:
        names = table.column_names
        n = table.num_rows

        def column(name: str, default: Any) -> list[Any]:
            return table.column(name).to_pylist() if name in names else [default] * n

        ids, texts, collections, kept = self._check_rows(
            column(self.columns.id, None),
            column(self.columns.text, _MISSING),
            column("collection", None),
            list(range(first_row, first_row + n)),
        )
        if not kept:
            return None
        metadata = table.select(self._metadata_names(names)).take(pa.array(kept))
        out = pa.table({"id": ids, "text": texts, "collection": collections})
        for name in metadata.column_names:
            field = metadata.schema.field(name).with_name(output_name(name))
            out = out.append_column(field, metadata.column(name))
        return self._with_block_column(out, [first_row + i for i in kept])

    def _metadata_names(self, names) -> list[str]:
        chosen = {self.columns.id, self.columns.text, "collection"}
        return [name for name in names if name not in chosen]

    # -- blocks -----------------------------------------------------------------------------

    def _one_table_per_block(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """Re-cut tables (labels ascending) so that each block label is in exactly one table."""
        pending: list[pa.Table] = []
        for table in tables:
            labels = table.column(BLOCK_COLUMN).to_pylist()
            start = 0
            for end in range(1, len(labels) + 1):
                if end < len(labels) and labels[end] == labels[start]:
                    continue
                if pending and pending[0].column(BLOCK_COLUMN)[0].as_py() != labels[start]:
                    yield pa.concat_tables(pending)
                    pending = []
                pending.append(table.slice(start, end - start))
                start = end
        if pending:
            yield pa.concat_tables(pending)

    def _block_start(self, block: pa.Table) -> int:
        return int(block.column(BLOCK_COLUMN)[0].as_py().rsplit("-", 1)[1])

    def _with_block_column(self, table: pa.Table, source_rows: list[int]) -> pa.Table:
        """Tag each row with its block: the file and the block's first source row.

        The writer names output files after it, so the same input block always lands in the
        same output file, and a repeated write replaces instead of duplicating.
        """
        size = self.block_rows
        labels = [f"{self.shard.digest}-{row // size * size:09d}" for row in source_rows]
        table = table.append_column(BLOCK_COLUMN, pa.array(labels, pa.string()))
        return table.append_column(ROW_COLUMN, pa.array(source_rows, pa.int64()))

    # -- checks shared by both formats ------------------------------------------------------

    def _check_rows(self, ids, texts, collections, rows):
        """Validate each row; returns the kept ids, texts, collections and their positions."""
        out_ids, out_texts, out_collections, kept = [], [], [], []
        for i, (id_, text, collection, row) in enumerate(zip(ids, texts, collections, rows)):
            reason = self.excluded_rows.get(row) or text_problem(text, self.columns.text)
            collection = self.shard.collection if collection is None else collection
            if reason is None:
                reason = collection_problem(collection)
            if reason is not None:
                self.reject(row, reason, id_=id_, raw=text if isinstance(text, str) else None)
                continue
            out_ids.append(derive_id(self.shard.relpath, row) if id_ is None else str(id_))
            out_texts.append(text)
            out_collections.append(collection)
            kept.append(i)
        return out_ids, out_texts, out_collections, kept


_MISSING = object()


def output_name(metadata_name: str) -> str:
    """The output column of an input metadata column; never one the job writes itself."""
    if metadata_name in (*OUTPUT_COLUMNS, *IN_FLIGHT_COLUMNS):
        return RENAMED_PREFIX + metadata_name.lstrip("_")
    return metadata_name


def text_problem(text: Any, column: str) -> str | None:
    """Why a text cannot be embedded, or None if it can."""
    if text is _MISSING:
        return f"missing text column {column!r}"
    if text is None:
        return f"null text in column {column!r}"
    if not isinstance(text, str):
        return f"text is not a string but {type(text).__name__}"
    if not text.strip():
        return "empty or whitespace-only text"
    return None


def collection_problem(collection: Any) -> str | None:
    if not isinstance(collection, str) or not COLLECTION_NAME.match(collection):
        return (
            f"invalid collection name {collection!r}: use letters, digits, '_', '.', '-' "
            "(not starting with '.' or '-', at most 128 characters)"
        )
    return None


def derive_id(relpath: str, row: int) -> str:
    """The id of a row that has none: stable across reruns as long as the file is."""
    return f"{relpath}:{row}"


def metadata_column(values: list[Any]) -> pa.Array:
    """An Arrow column for one JSON metadata key; mixed types fall back to JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
            type=pa.string(),
        )


def write_rejections(
    output_uri: str,
    shard: Shard,
    rejections: list[Rejection],
    storage_options: dict[str, Any] | None = None,
) -> None:
    """One JSONL file of rejections per input file, named by the file, so a retry overwrites.

    A file with no rejections any more has its old list removed.
    """
    uri = storage.join(output_uri, storage.REJECTED_DIR, f"{shard.key}.jsonl")
    if not rejections:
        storage.remove(uri, storage_options)
        return
    lines = "".join(json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in rejections)
    storage.write_bytes_atomic(uri, lines.encode("utf-8"), storage_options)


def read_rejections(output_uri: str, storage_options: dict[str, Any] | None = None):
    """All rejection records under OUTPUT/_rejected/."""
    fs, path = storage.open_fs(storage.join(output_uri, storage.REJECTED_DIR), storage_options)
    if not fs.exists(path):
        return []
    records = []
    for name in sorted(fs.find(path)):
        if not name.endswith(".jsonl"):
            continue
        with fs.open(name, "rt", encoding="utf-8") as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records
