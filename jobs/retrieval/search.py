"""Exact nearest-neighbour search over an OUTPUT, one Parquet file at a time.

Memory stays bounded by one file plus the best candidates so far. Float columns are scored by
dot product (the vectors are unit length: cosine), int8/uint8 codes by their integer dot
product, binary/ubinary codes by Hamming distance (score = -distance). With `rescore`, the
best `rescore` candidates by a quantized column are scored again with the float column of the
same width, as a shortlist-then-rerank index does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedder.outputs import QUANTIZED, output_columns
from jobs.pipeline.folders import OutputFolder


class SearchError(ValueError):
    """A column or collection OUTPUT does not have; the message lists the ones it has."""


@dataclass(frozen=True)
class Hit:
    score: float
    collection: str
    id: str
    text: str | None


def float_partner(column: str) -> str:
    """The float column a quantized column was derived from (`embedding_256_int8` ->
    `embedding_256`); a float column is its own."""
    for precision in QUANTIZED:
        if column.endswith(f"_{precision}"):
            return column[: -len(precision) - 1]
    return column


def check_request(manifest: dict[str, Any], column: str | None, collection: str | None) -> str:
    """The column to search (default: the widest float one); SearchError for a column or a
    collection OUTPUT does not have."""
    columns = output_columns(list(manifest["dims"]), manifest["precision"])
    column = column or columns[0]
    if column not in columns:
        raise SearchError(f"OUTPUT has no column {column!r}; its vector columns: {columns}")
    collections = sorted(manifest["collections"])
    if collection is not None and collection not in collections:
        raise SearchError(
            f"OUTPUT has no collection {collection!r}; its collections: {collections}"
        )
    return column


def scores(stored: np.ndarray, query: np.ndarray, column: str) -> np.ndarray:
    """Higher is better: dot product, or minus the Hamming distance for bit codes."""
    if column.endswith(("_binary", "_ubinary")):
        differing = np.bitwise_xor(stored.view(np.uint8), query.view(np.uint8)[None, :])
        return -np.unpackbits(differing, axis=1).sum(axis=1).astype(np.float64)
    if column.endswith(("_int8", "_uint8")):
        return (stored.astype(np.int64) @ query.astype(np.int64)).astype(np.float64)
    return stored.astype(np.float64) @ query.astype(np.float64)


def search(
    output: OutputFolder,
    query: dict[str, np.ndarray],
    column: str,
    k: int = 10,
    collection: str | None = None,
    rescore: int = 0,
) -> list[Hit]:
    """The k best rows of OUTPUT for one query: `query` maps each column to the query's
    vector in it (one row of what QueryEncoder.encode returns)."""
    partner = float_partner(column)
    rescoring = rescore > 0 and partner != column
    candidates = Candidates(max(k, rescore) if rescoring else k)
    for relpath, collection_name in files_to_search(output, collection):
        table = read_file(output, relpath, [column, partner] if rescoring else [column])
        found = scores(vectors(table, column), query[column], column)
        candidates.add(found, collection_name, table, partner if rescoring else None)
    if rescoring:
        candidates.rescore(query[partner])
    return candidates.top(k)


def files_to_search(output: OutputFolder, collection: str | None) -> Iterator[tuple[str, str]]:
    for files in output.committed_files().values():
        for committed in files:
            if collection is None or committed.collection == collection:
                yield committed.relpath, committed.collection


def read_file(output: OutputFolder, relpath: str, columns: list[str]) -> pa.Table:
    """`id`, the text where it was kept, and the given vector columns of one file."""
    with output.open(relpath) as handle:
        parquet = pq.ParquetFile(handle)
        keep_text = ["text"] if "text" in parquet.schema_arrow.names else []
        return parquet.read(columns=["id", *keep_text, *dict.fromkeys(columns)])


def vectors(table: pa.Table, column: str) -> np.ndarray:
    flat = table.column(column).combine_chunks().flatten()
    return np.asarray(flat).reshape(table.num_rows, -1)


class Candidates:
    """The best `size` rows seen so far, with what is printed (and rescored) about them."""

    def __init__(self, size: int):
        self.size = size
        self.rows: list[dict[str, Any]] = []

    def add(self, found: np.ndarray, collection: str, table: pa.Table, partner: str | None):
        top = np.argsort(-found, kind="stable")[: self.size]
        picked = table.take(pa.array(top, pa.int64()))
        texts = picked.column("text").to_pylist() if "text" in picked.column_names else None
        floats = vectors(picked, partner) if partner else None
        for position, identifier in enumerate(picked.column("id").to_pylist()):
            self.rows.append(
                {
                    "score": float(found[top[position]]),
                    "collection": collection,
                    "id": identifier,
                    "text": texts[position] if texts else None,
                    "vector": floats[position] if floats is not None else None,
                }
            )
        self.rows.sort(key=lambda row: -row["score"])
        del self.rows[self.size :]

    def rescore(self, query: np.ndarray) -> None:
        for row in self.rows:
            row["score"] = float(np.dot(row["vector"].astype(np.float64), query))
        self.rows.sort(key=lambda row: -row["score"])

    def top(self, k: int) -> list[Hit]:
        return [Hit(r["score"], r["collection"], r["id"], r["text"]) for r in self.rows[:k]]
