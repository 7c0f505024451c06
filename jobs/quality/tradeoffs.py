"""Storage, search speed and quality per dim and precision: the table a user picks a dim from.

For each dim and each of float32, int8 and binary: the bytes one vector takes, the time one
exact search of one query takes over the evaluated corpus (the median of repeated numpy
searches, the same scoring as `python -m jobs.search`), and the share of full-dim float32
nDCG@10 and recall@10 kept. int8 ranges are calibrated on the corpus's documents, as the job
calibrates on its corpus; queries are quantized with the same ranges.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from embedder.outputs import calibration_ranges, output_vectors
from jobs.quality.metrics import K, rank_by, score, with_retention
from jobs.retrieval.search import scores as search_scores

PRECISIONS = ("float32", "int8", "binary")
BYTES_PER_DIM = {"float32": 4.0, "int8": 1.0, "binary": 1 / 8}
TIMING_REPEATS = 30


def written_as(
    vectors: np.ndarray, dim: int, precision: str, ranges: dict | None
) -> tuple[str, np.ndarray]:
    """The column name and matrix the job writes at `dim` in `precision` (binary as ubinary
    codes: the same Hamming distances); jobs.retrieval.search scores a column by its name."""
    written = "ubinary" if precision == "binary" else precision
    return list(output_vectors(vectors, [dim], written, ranges).items())[-1]


def score_matrix(queries: np.ndarray, docs: np.ndarray, column: str) -> np.ndarray:
    return np.stack([search_scores(docs, query, column) for query in queries])


def search_seconds(queries: np.ndarray, docs: np.ndarray, column: str, repeats: int):
    """Median seconds of one exact search (score every document, take the top 10) for one
    query, over `repeats` timed searches, and the timings themselves."""
    timings = []
    for i in range(repeats + 1):  # the first is a warm-up
        query = queries[i % len(queries)]
        started = time.perf_counter()
        found = search_scores(docs, query, column)
        np.argpartition(-found, min(K, len(found) - 1))[:K]
        if i:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings), timings


def tradeoff_table(
    doc_vectors: np.ndarray,
    query_vectors: np.ndarray,
    doc_ids: list[str],
    queries: list[dict],
    dims: list[int],
    repeats: int = TIMING_REPEATS,
) -> list[dict]:
    """One row per (dim, precision), widest dim first: bytes, speed, quality kept."""
    native = max(dims)
    full = score(rank_by(query_vectors @ doc_vectors.T), doc_ids, queries)
    ranges = calibration_ranges(doc_vectors, dims)
    baseline = None
    rows = []
    for dim in sorted(dims, reverse=True):
        for precision in PRECISIONS:
            if precision == "binary" and dim % 8:
                continue
            column, docs = written_as(doc_vectors, dim, precision, ranges)
            _, asked = written_as(query_vectors, dim, precision, ranges)
            quality = score(rank_by(score_matrix(asked, docs, column)), doc_ids, queries)
            seconds, timings = search_seconds(asked, docs, column, repeats)
            baseline = baseline or seconds  # the first row: full dim, float32
            kept = with_retention(quality, full)
            rows.append(
                {
                    "dim": dim,
                    "precision": precision,
                    "bytes_per_vector": int(dim * BYTES_PER_DIM[precision]),
                    "storage_share": dim * BYTES_PER_DIM[precision] / (native * 4.0),
                    "search_seconds_per_query": seconds,
                    "speedup": baseline / seconds if seconds else 0.0,
                    "timing_repeats": len(timings),
                    "timings_seconds": timings,
                    "ndcg@10 retention": kept["ndcg@10 retention"],
                    "recall@10 retention": kept["recall@10 retention"],
                }
            )
    return rows
