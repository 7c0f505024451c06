"""Reading one input file into Arrow, each row with its position in the file. No judging here:
that is jobs.pipeline.validation.

Whatever the format, rows come out in one shape (`RowBatch`): the columns the job checks, typed
the same way for every file, and the file's other columns (metadata) built only for the rows
that are kept. JSON Lines are parsed line by line, so a malformed line becomes a rejection
rather than a failed file, and a whole file is parsed before anything is handed on, so a
metadata key gets one Arrow type per file. Parquet is read in batches, its types kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.pipeline import rejections as reasons
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.rejections import Rejection
from jobs.pipeline.units import InputFile

ROW = "_row"  # the row's position in its file, counting every line or Parquet row
ROW_KEY = "_key"  # the row's reuse key (jobs.pipeline.commit.row_keys), added when embedded
TEXT_PROBLEM = "_text_problem"  # why the text is not a string; null when it is one
COLLECTION_PROBLEM = "_collection_problem"  # a `collection` value that is not a string
CHECKED_SCHEMA = pa.schema(
    [
        (ROW, pa.int64()),
        ("id", pa.string()),  # null: the row has none (one is derived)
        ("text", pa.string()),  # null where the text is not a string
        ("collection", pa.string()),  # null: the file's folder decides
        (TEXT_PROBLEM, pa.string()),
        (COLLECTION_PROBLEM, pa.string()),
    ]
)
# Columns the job writes itself. An input metadata column with one of these names (say `text`
# when --text-column is `body`) is kept as `input_<name>`, never overwritten.
OUTPUT_COLUMNS = ("id", "text", "embedding")
RENAMED_PREFIX = "input_"


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the text and the id."""

    text: str = "text"
    id: str = "id"

    def is_metadata(self, name: str) -> bool:
        return name not in (self.text, self.id, "collection")


@dataclass
class RowBatch:
    """Rows [first_row, end_row) of one file: every row read is in `checked` or `rejections`."""

    checked: pa.Table  # CHECKED_SCHEMA
    end_row: int
    # Rows that could not be parsed at all (JSON Lines): malformed, not an object, bad UTF-8.
    rejections: list[Rejection] = field(default_factory=list)
    # The metadata columns of the rows at the given positions of `checked`.
    metadata_of: Callable[[list[int]], pa.Table] = lambda positions: pa.table({})


def read_rows(
    folder: InputFolder, input_file: InputFile, columns: Columns, batch_rows: int
) -> Iterator[RowBatch]:
    """The file's rows in order, in batches of about batch_rows (JSON Lines: one batch)."""
    if input_file.fmt == "parquet":
        return _parquet_batches(folder, input_file, columns, batch_rows)
    return _jsonl_batches(folder, input_file, columns)


def output_name(metadata_name: str) -> str:
    """The output column of an input metadata column; never one the job writes itself."""
    if metadata_name in (*OUTPUT_COLUMNS, ROW, ROW_KEY):
        return RENAMED_PREFIX + metadata_name.lstrip("_")
    return metadata_name


# -- JSON Lines ------------------------------------------------------------------------------

_MISSING = object()


def _jsonl_batches(folder: InputFolder, input_file: InputFile, columns: Columns):
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    rejected: list[Rejection] = []
    end_row = 0
    with folder.open_input(input_file) as handle:
        for row, line in enumerate(handle):
            end_row = row + 1
            record = _parse_line(line, input_file.relpath, row, rejected)
            if record is not None:
                records.append(record)
                rows.append(row)
    checked = _checked_from_records(records, rows, columns)

    def metadata_of(positions: list[int]) -> pa.Table:
        kept = [records[i] for i in positions]
        names = [n for n in dict.fromkeys(k for r in kept for k in r) if columns.is_metadata(n)]
        return pa.table({output_name(n): metadata_column([r.get(n) for r in kept]) for n in names})

    yield RowBatch(checked, end_row, rejected, metadata_of)


def _parse_line(line: bytes, file: str, row: int, rejected: list[Rejection]) -> dict | None:
    if not line.strip():
        return None  # blank lines are not rows
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        rejected.append(Rejection.of(file, row, f"invalid UTF-8: {err}", raw=line))
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        reason = f"malformed JSON: {err.msg} at column {err.colno}"
        rejected.append(Rejection.of(file, row, reason, raw=text))
        return None
    if not isinstance(record, dict):
        reason = f"not a JSON object but {type(record).__name__}"
        rejected.append(Rejection.of(file, row, reason, raw=text))
        return None
    return record


def _checked_from_records(records: list[dict], rows: list[int], columns: Columns) -> pa.Table:
    """The checked columns of parsed JSON records: Python types decide the problems."""
    ids, texts, text_problems, collections, collection_problems = [], [], [], [], []
    for record in records:
        identifier = record.get(columns.id)
        ids.append(None if identifier is None else str(identifier))
        text = record.get(columns.text, _MISSING)
        texts.append(text if isinstance(text, str) else None)
        text_problems.append(_text_problem(text, columns.text))
        collection = record.get("collection")
        usable = collection is None or isinstance(collection, str)
        collections.append(collection if usable else None)
        collection_problems.append(None if usable else reasons.invalid_collection(collection))
    return pa.Table.from_arrays(
        [rows, ids, texts, collections, text_problems, collection_problems],
        schema=CHECKED_SCHEMA,
    )


def _text_problem(text: Any, column: str) -> str | None:
    if text is _MISSING:
        return reasons.missing_text(column)
    if text is None:
        return reasons.null_text(column)
    if not isinstance(text, str):
        return reasons.text_not_a_string(type(text).__name__)
    return None


def metadata_column(values: list[Any]) -> pa.Array:
    """An Arrow column for one JSON metadata key; mixed types fall back to JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
            type=pa.string(),
        )


# -- Parquet ---------------------------------------------------------------------------------


def _parquet_batches(folder: InputFolder, input_file: InputFile, columns: Columns, batch_rows):
    with folder.open_input(input_file) as handle:
        first_row = 0
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            end_row = first_row + table.num_rows
            checked = _checked_from_arrow(table, first_row, columns)
            metadata = table.select([n for n in table.column_names if columns.is_metadata(n)])
            yield RowBatch(checked, end_row, [], _metadata_taker(metadata))
            first_row = end_row


def _metadata_taker(metadata: pa.Table) -> Callable[[list[int]], pa.Table]:
    def metadata_of(positions: list[int]) -> pa.Table:
        taken = metadata.take(pa.array(positions, pa.int64()))
        return taken.rename_columns([output_name(n) for n in taken.column_names])

    return metadata_of


def _checked_from_arrow(table: pa.Table, first_row: int, columns: Columns) -> pa.Table:
    """The checked columns of a Parquet batch, column by column: Arrow types decide."""
    n = table.num_rows
    rows = pa.array(range(first_row, first_row + n), pa.int64())
    texts, text_problems = _arrow_text(table, columns.text)
    collections, collection_problems = _arrow_collection(table)
    ids = _as_strings(table.column(columns.id)) if columns.id in table.column_names else None
    return pa.Table.from_arrays(
        [
            rows,
            ids if ids is not None else pa.nulls(n, pa.string()),
            texts,
            collections,
            text_problems,
            collection_problems,
        ],
        schema=CHECKED_SCHEMA,
    )


def _arrow_text(table: pa.Table, column: str) -> tuple[pa.Array, pa.Array]:
    n = table.num_rows
    if column not in table.column_names:
        return pa.nulls(n, pa.string()), pa.array([reasons.missing_text(column)] * n, pa.string())
    values = table.column(column)
    null_reason = pa.scalar(reasons.null_text(column), pa.string())
    if _is_string_type(values.type):
        texts = values.cast(pa.string())
        return texts, pc.if_else(pc.is_null(texts), null_reason, pa.scalar(None, pa.string()))
    # A text column of another type: every non-null value is a non-string text.
    not_string = pa.scalar(reasons.text_not_a_string(_python_type_name(values)), pa.string())
    return pa.nulls(n, pa.string()), pc.if_else(pc.is_null(values), null_reason, not_string)


def _arrow_collection(table: pa.Table) -> tuple[pa.Array, pa.Array]:
    n = table.num_rows
    if "collection" not in table.column_names:
        return pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
    values = table.column("collection")
    if _is_string_type(values.type):
        return values.cast(pa.string()), pa.nulls(n, pa.string())
    # Rare: a non-string collection column. Each value's message needs its own repr.
    problems = [None if v is None else reasons.invalid_collection(v) for v in values.to_pylist()]
    return pa.nulls(n, pa.string()), pa.array(problems, pa.string())


def _as_strings(values) -> pa.Array:
    if _is_string_type(values.type) or pa.types.is_integer(values.type):
        return values.cast(pa.string())
    # Floats, dates, ...: the same text str() gives, as for JSON ids.
    return pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())


def _is_string_type(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _python_type_name(values) -> str:
    present = pc.drop_null(values)
    return type(present[0].as_py()).__name__ if len(present) else "NoneType"
