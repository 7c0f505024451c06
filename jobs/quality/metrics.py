"""Ranking and the retrieval metrics: recall@10, nDCG@10 (binary relevance), MRR@10."""

from __future__ import annotations

import numpy as np

K = 10
METRICS = ("recall@10", "ndcg@10", "mrr@10")


def rank_by(scores: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the top-k documents per query (a row of `scores`), best first."""
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def rank(query_vectors: np.ndarray, doc_vectors: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the top-k documents per query by dot product, best first."""
    return rank_by(query_vectors @ doc_vectors.T, k)


def score(ranked: np.ndarray, doc_ids: list[str], queries: list[dict]) -> dict[str, float]:
    """Mean recall@10, nDCG@10 (binary relevance) and MRR@10 over the queries."""
    recall, ndcg, mrr = [], [], []
    for row, query in zip(ranked, queries):
        relevant = set(query["relevant"])
        hits = [doc_ids[i] in relevant for i in row[:K]]
        recall.append(sum(hits) / len(relevant))
        dcg = sum(1 / np.log2(pos + 2) for pos, hit in enumerate(hits) if hit)
        ideal = sum(1 / np.log2(pos + 2) for pos in range(min(len(relevant), K)))
        ndcg.append(dcg / ideal)
        mrr.append(next((1 / (pos + 1) for pos, hit in enumerate(hits) if hit), 0.0))
    return {
        "recall@10": float(np.mean(recall)),
        "ndcg@10": float(np.mean(ndcg)),
        "mrr@10": float(np.mean(mrr)),
    }


def with_retention(scores: dict[str, float], full: dict[str, float]) -> dict[str, float]:
    """The scores and, per metric, their share of the full-dim score."""
    retained = {f"{m} retention": scores[m] / full[m] if full[m] else 0.0 for m in METRICS}
    return scores | retained
