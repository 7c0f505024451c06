"""What a CPU backend or an int8 model costs, against torch in fp32 (`jobs.evaluate --backend
... --quantize int8`): the retrieval scores each keeps per dim and how close its vectors are.

The int8 model is made as a run makes it (embedder.graphs.quantize_int8), calibrated on a
sample spread over the documents, so that a user sees the cost before choosing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.graphs import QuantizedGraph, files_digest
from jobs.quality.evaluation import embed_set, quality_by_dim

METRICS = ("recall@10", "ndcg@10", "mrr@10")
CALIBRATION_TEXTS = 300  # as many as a run's default sample would give a small corpus


def with_int8_model(spec: ReplicaSpec, texts: list[str], folder: Path) -> ReplicaSpec:
    """`spec` running an int8 model made from it, calibrated on `texts`, kept in `folder`."""
    files = Replica(spec).int8_model(texts)  # the graph first
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    quantized = QuantizedGraph(
        spec.backend,
        tuple(str(folder / name) for name in files),
        files_digest(files),
        fsspec.filesystem("file"),
    )
    return dataclasses.replace(spec, quantized=quantized)


def calibration_texts(documents: list[dict], count: int = CALIBRATION_TEXTS) -> list[str]:
    """Up to `count` document texts spread evenly over the set."""
    step = max(1, len(documents) // count)
    return [d["text"] for d in documents[::step][:count]]


def backend_cost(
    candidate: Replica,
    embedded: tuple[np.ndarray, np.ndarray, list[dict]],
    reference: Replica,
    model_spec,
    documents: list[dict],
    dims: list[int],
) -> dict[str, Any]:
    """Per dim, the share of the reference's recall@10, nDCG@10 and MRR@10 the candidate
    keeps, and the cosine between their document vectors at full width; `embedded` is
    embed_set's result for the candidate (the evaluation's own vectors)."""
    doc_ids = [d["id"] for d in documents]
    our_docs, our_queries, kept_queries = embedded
    their_docs, their_queries, _ = embed_set(reference, model_spec, documents, kept_queries)
    ours = quality_by_dim(our_docs, our_queries, doc_ids, kept_queries, dims)
    theirs = quality_by_dim(their_docs, their_queries, doc_ids, kept_queries, dims)
    kept = {
        dim: {m: ours[dim][m] / theirs[dim][m] if theirs[dim][m] else 1.0 for m in METRICS}
        for dim in ours
    }
    cosine = np.sum(our_docs * their_docs, axis=1)
    info = candidate.describe()
    return {
        "backend": info["backend"],
        "precision": info["inference_precision"],  # what the runtime computed in
        "quantization": info["quantization"],
        "reference": "torch fp32",
        "kept": kept,
        "scores": ours,
        "reference_scores": theirs,
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
    }
