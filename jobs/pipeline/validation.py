"""Which rows can be embedded: checks over whole Arrow columns, a reason for every row set aside.

A row's reason is the first that applies: an id seen earlier in the corpus (found by
jobs.pipeline.duplicates), an id that is not valid Unicode, a text that is missing, null, not a
string, not valid Unicode, empty or whitespace, a `collection` that is not one plain folder
name.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from jobs.pipeline import rejections as reasons
from jobs.pipeline.reading import COLLECTION_PROBLEM, ID_PROBLEM, ROW, TEXT_PROBLEM, RowBatch
from jobs.pipeline.rejections import Rejection
from jobs.pipeline.units import InputFile

NO_REASON = pa.scalar(None, pa.string())
COLLECTION_NAME = re.compile(reasons.COLLECTION_NAME)


def validate(
    batch: RowBatch, input_file: InputFile, excluded: dict[int, str] | None = None
) -> tuple[pa.Table, list[Rejection]]:
    """The valid rows (id, text, collection, metadata..., _row) and a rejection for each other
    row of the batch, unparsable ones included, in row order.

    `excluded` maps source rows to a reason decided elsewhere (duplicate ids). A row without
    an id gets `<path under INPUT>:<row>`; one without a collection gets its folder's.
    """
    checked = batch.checked
    collection = pc.coalesce(checked["collection"], pa.scalar(input_file.collection))
    problem = pc.coalesce(
        excluded_reasons(checked[ROW], excluded or {}),
        checked[ID_PROBLEM],
        checked[TEXT_PROBLEM],
        pc.if_else(is_blank(checked["text"]), pa.scalar(reasons.EMPTY_TEXT), NO_REASON),
        checked[COLLECTION_PROBLEM],
    )
    rejected = pc.or_kleene(pc.is_valid(problem), bad_collection_names(collection))
    kept = pc.indices_nonzero(pc.invert(rejected)).to_pylist()
    ids = checked["id"]
    if ids.null_count:
        ids = pc.coalesce(ids, derived_ids(input_file, checked[ROW]))
    valid = pa.table(
        {
            "id": ids,
            "text": checked["text"],
            "collection": collection,
        }
    ).take(pa.array(kept, pa.int64()))
    metadata = batch.metadata_of(kept)
    for name, column in zip(metadata.column_names, metadata.columns):
        valid = valid.append_column(name, column)
    valid = valid.append_column(ROW, checked[ROW].take(pa.array(kept, pa.int64())))
    found = batch.rejections + _rejections(checked, problem, collection, rejected, input_file)
    return valid, sorted(found, key=lambda r: r.row)


def excluded_reasons(rows: pa.ChunkedArray, excluded: dict[int, str]) -> pa.Array:
    """Per row: the reason it was excluded, or null."""
    if not excluded:
        return pa.nulls(len(rows), pa.string())
    positions = pc.index_in(rows, value_set=pa.array(list(excluded), pa.int64()))
    return pa.array(list(excluded.values()), pa.string()).take(positions)


def bad_collection_names(collection) -> pa.Array:
    """Per row: whether its collection is not one plain folder name. Checked once per
    distinct name (a batch has one or a few): compiling the pattern for every batch cost more
    than the rest of validating a one-row file."""
    bad = [n for n in pc.unique(collection).to_pylist() if not COLLECTION_NAME.fullmatch(n)]
    return pc.is_in(collection, value_set=pa.array(bad, pa.string()))


def is_blank(texts) -> pa.Array:
    """Empty or whitespace-only (null for texts that are not strings)."""
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)


def derived_ids(input_file: InputFile, rows) -> pa.Array:
    """The id of a row that has none: stable across reruns as long as the file is."""
    return pc.binary_join_element_wise(
        pa.scalar(f"{input_file.relpath}:"), pc.cast(rows, pa.string()), ""
    )


def _rejections(checked, problem, collection, rejected, input_file) -> list[Rejection]:
    """A rejection for each rejected row: Python only for the (few) rows set aside."""
    found = []
    for i in pc.indices_nonzero(rejected).to_pylist():
        reason = problem[i].as_py() or reasons.invalid_collection(collection[i].as_py())
        found.append(
            Rejection.of(
                input_file.relpath,
                checked[ROW][i].as_py(),
                reason,
                id_=checked["id"][i].as_py(),
                raw=checked["text"][i].as_py(),
            )
        )
    return found
