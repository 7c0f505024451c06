"""Reading one input file into Arrow, each row with its position in the file. No judging here:
that is jobs.pipeline.validation.

Whatever the format, rows come out in one shape (`RowBatch`): the columns the job checks, typed
the same way for every file, and the file's other columns (metadata) built only for the rows
that are kept. A file is read in batches of about a block's rows and never held whole: Parquet
by its own batches, its types kept; JSON Lines line by line, so a malformed line becomes a
rejection rather than a failed file, and a metadata key gets one Arrow type per batch (a
block's rows). Values Arrow cannot hold are set aside or kept as JSON text, never a failed
file (see `_checked_values` and `metadata_column`). Whoever needs only the checked columns
(the duplicate-id scan, the calibration sample) asks for no metadata: Parquet then reads only
those columns, and JSON records are not kept.
"""

from __future__ import annotations

import codecs
import json
import re
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
ID_PROBLEM = "_id_problem"  # an id that cannot be written (not valid Unicode)
TEXT_PROBLEM = "_text_problem"  # why the text cannot be embedded; null when it can
COLLECTION_PROBLEM = "_collection_problem"  # a `collection` value that is not a string
CHECKED_SCHEMA = pa.schema(
    [
        (ROW, pa.int64()),
        ("id", pa.string()),  # null: the row has none (one is derived)
        ("text", pa.string()),  # null where the text is not a string
        ("collection", pa.string()),  # null: the file's folder decides
        (ID_PROBLEM, pa.string()),
        (TEXT_PROBLEM, pa.string()),
        (COLLECTION_PROBLEM, pa.string()),
    ]
)
RENAMED_PREFIX = "input_"


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the text and the id, and the vector columns the run writes."""

    text: str = "text"
    id: str = "id"
    vectors: tuple[str, ...] = ("embedding",)

    def is_metadata(self, name: str) -> bool:
        return name not in (self.text, self.id, "collection")

    def output_name(self, metadata_name: str) -> str:
        """The output column of an input metadata column: never one the job writes itself.
        A column named like one (`text` when --text-column is `body`, `embedding_256` with
        --dims 384,256) is kept as `input_<name>`; so is one already named `input_<such a
        name>`, which keeps every metadata column's output name distinct."""
        written = ("id", "text", *self.vectors, ROW, ROW_KEY)
        bare = re.sub(f"^({RENAMED_PREFIX})+", "", metadata_name)
        renamed = bare != metadata_name and bare in {w.lstrip("_") for w in written}
        if metadata_name in written or renamed:
            return RENAMED_PREFIX + metadata_name.lstrip("_")
        return metadata_name


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
    folder: InputFolder,
    input_file: InputFile,
    columns: Columns,
    batch_rows: int,
    metadata: bool = True,
) -> Iterator[RowBatch]:
    """The file's rows in order, in batches of about batch_rows (JSON Lines: rows
    [k*batch_rows, (k+1)*batch_rows) each). Without metadata only the checked columns are
    read."""
    if input_file.fmt == "parquet":
        return _parquet_batches(folder, input_file, columns, batch_rows, metadata)
    return _jsonl_batches(folder, input_file, columns, batch_rows, metadata)


# -- JSON Lines ------------------------------------------------------------------------------

_MISSING = object()


def _jsonl_batches(
    folder: InputFolder, input_file: InputFile, columns: Columns, batch_rows: int, metadata: bool
) -> Iterator[RowBatch]:
    """Rows [k*batch_rows, (k+1)*batch_rows) at a time: the file is never held whole, only one
    batch's parsed records, and those only when its metadata is wanted."""
    batch = _JsonlBatch(input_file.relpath, columns, metadata)
    end_row = 0
    with folder.open_input(input_file) as handle:
        for row, line in enumerate(handle):
            if row == 0:
                line = line.removeprefix(codecs.BOM_UTF8)  # a byte-order mark is not data
            batch.add(row, line)
            end_row = row + 1
            if end_row % batch_rows == 0:
                yield batch.finish(end_row)
                batch = _JsonlBatch(input_file.relpath, columns, metadata)
    if batch.rows or batch.rejected:
        yield batch.finish(end_row)


class _JsonlBatch:
    """The rows of one batch of JSON lines as they are parsed: the checked columns at once,
    the records themselves only for the metadata."""

    def __init__(self, file: str, columns: Columns, metadata: bool):
        self.file = file
        self.columns = columns
        self.records: list[dict[str, Any]] | None = [] if metadata else None
        self.rows: list[int] = []
        self.rejected: list[Rejection] = []
        self.checked: dict[str, list] = {name: [] for name in CHECKED_SCHEMA.names if name != ROW}

    def add(self, row: int, line: bytes) -> None:
        record = _parse_line(line, self.file, row, self.rejected)
        if record is None:
            return
        self.rows.append(row)
        for name, value in _checked_values(record, self.columns).items():
            self.checked[name].append(value)
        if self.records is not None:
            self.records.append(record)

    def finish(self, end_row: int) -> RowBatch:
        arrays = [self.rows, *(self.checked[n] for n in CHECKED_SCHEMA.names if n != ROW)]
        checked = pa.Table.from_arrays(arrays, schema=CHECKED_SCHEMA)
        return RowBatch(checked, end_row, self.rejected, self._metadata_taker())

    def _metadata_taker(self) -> Callable[[list[int]], pa.Table]:
        records, columns = self.records, self.columns

        def metadata_of(positions: list[int]) -> pa.Table:
            if records is None:
                return pa.table({})
            kept = [records[i] for i in positions]
            keys = dict.fromkeys(k for r in kept for k in r)
            names = [n for n in keys if columns.is_metadata(n)]
            return pa.table(
                {columns.output_name(n): metadata_column([r.get(n) for r in kept]) for n in names}
            )

        return metadata_of


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
    except RecursionError:
        rejected.append(Rejection.of(file, row, "malformed JSON: nested too deeply", raw=text))
        return None
    if not isinstance(record, dict):
        reason = f"not a JSON object but {type(record).__name__}"
        rejected.append(Rejection.of(file, row, reason, raw=text))
        return None
    # A key becomes a column name: one Arrow cannot hold would fail the whole block.
    bad_key = next((key for key in record if lone_surrogate(key) is not None), None)
    if bad_key is not None:
        rejected.append(Rejection.of(file, row, reasons.not_unicode("a key", bad_key), raw=text))
        return None
    return record


def _checked_values(record: dict[str, Any], columns: Columns) -> dict[str, Any]:
    """One parsed record's checked columns: Python types decide the problems."""
    identifier = record.get(columns.id)
    identifier = None if identifier is None else str(identifier)
    id_problem = None
    if identifier is not None and lone_surrogate(identifier) is not None:
        identifier, id_problem = None, reasons.not_unicode("the id", identifier)
    text = record.get(columns.text, _MISSING)
    text_problem = _text_problem(text, columns.text)
    collection = record.get("collection")
    collection_problem = None
    if not (collection is None or isinstance(collection, str)) or (
        isinstance(collection, str) and lone_surrogate(collection) is not None
    ):
        collection, collection_problem = None, reasons.invalid_collection(collection)
    return {
        "id": identifier,
        "text": None if text_problem else text,
        "collection": collection,
        ID_PROBLEM: id_problem,
        TEXT_PROBLEM: text_problem,
        COLLECTION_PROBLEM: collection_problem,
    }


def _text_problem(text: Any, column: str) -> str | None:
    if text is _MISSING:
        return reasons.missing_text(column)
    if text is None:
        return reasons.null_text(column)
    if not isinstance(text, str):
        return reasons.text_not_a_string(type(text).__name__)
    if lone_surrogate(text) is not None:
        return reasons.not_unicode("the text", text)
    return None


def lone_surrogate(text: str) -> int | None:
    """Where the first lone surrogate is (JSON can spell one, "\\ud83d", as half of a
    character a splitter cut apart; UTF-8 and Arrow cannot hold it), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def escape_surrogates(value: Any) -> Any:
    """A JSON value with every lone surrogate written as its escape (\\ud83d), at any depth."""
    if isinstance(value, str):
        return value if lone_surrogate(value) is None else _escaped(value)
    if isinstance(value, list):
        return [escape_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {escape_surrogates(k): escape_surrogates(v) for k, v in value.items()}
    return value


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# What pyarrow raises for JSON values it cannot hold: mixed types, integers outside 64 bits,
# lone surrogates.
UNHOLDABLE = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError)


def metadata_column(values: list[Any]) -> pa.Array:
    """An Arrow column for one JSON metadata key. Lone surrogates are kept as their escapes;
    values of mixed types, or integers beyond 64 bits, make the column JSON text."""
    try:
        return pa.array(values)
    except UnicodeEncodeError:
        values = [escape_surrogates(v) for v in values]
    except UNHOLDABLE:
        return json_text_column(values)
    try:
        return pa.array(values)
    except UNHOLDABLE:
        return json_text_column(values)


def json_text_column(values: list[Any]) -> pa.Array:
    """Each value as JSON text (a lone surrogate as its JSON escape, which reads back as it
    was)."""
    texts = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
    return pa.array([t if t is None or lone_surrogate(t) is None else _escaped(t) for t in texts])


# -- Parquet ---------------------------------------------------------------------------------


def _parquet_batches(
    folder: InputFolder, input_file: InputFile, columns: Columns, batch_rows: int, metadata: bool
) -> Iterator[RowBatch]:
    with folder.open_input(input_file) as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        wanted = names if metadata else [n for n in names if not columns.is_metadata(n)]
        first_row = 0
        # A file without any checked column is still read whole: its rows must be counted.
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted or None):
            table = pa.Table.from_batches([batch])
            end_row = first_row + table.num_rows
            checked = _checked_from_arrow(table, first_row, columns)
            kept = [n for n in table.column_names if metadata and columns.is_metadata(n)]
            yield RowBatch(checked, end_row, [], _metadata_taker(table.select(kept), columns))
            first_row = end_row


def _metadata_taker(metadata: pa.Table, columns: Columns) -> Callable[[list[int]], pa.Table]:
    def metadata_of(positions: list[int]) -> pa.Table:
        taken = metadata.take(pa.array(positions, pa.int64()))
        return taken.rename_columns([columns.output_name(n) for n in taken.column_names])

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
            pa.nulls(n, pa.string()),
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
