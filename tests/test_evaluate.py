"""jobs.evaluate: retrieval quality per dim, with the real model and the built-in set."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest

from jobs.quality.evalsets import code_search_set
from jobs.quality.evaluation import rank, recommend, score
from registry import Registry, check_truncation
from tests.conftest import REPO, plain_env, write_jsonl


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    """python -m jobs.evaluate all-miniLM-l6 ARGS, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", "all-miniLM-l6", *args],
        cwd=REPO, env=plain_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_metrics_on_a_hand_checked_ranking():
    doc_ids = ["a", "b", "c"]
    docs = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0.5, 0], [0.2, 0.1, 1]], dtype=np.float32)
    ranked = rank(queries, docs, k=3)
    assert ranked.tolist() == [[0, 1, 2], [2, 0, 1]]
    result = score(ranked, doc_ids, [{"relevant": ["b"]}, {"relevant": ["c"]}])
    assert result["recall@10"] == 1.0
    assert result["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1) / 2)


def test_recommend_picks_the_smallest_dim_that_keeps_enough():
    per_dim = {
        384: {"ndcg@10 retention": 1.0},
        192: {"ndcg@10 retention": 0.98},
        96: {"ndcg@10 retention": 0.90},
    }
    assert recommend(per_dim, 0.97) == 192
    assert recommend(per_dim, 0.99) == 384


def test_the_built_in_set_hides_the_query_from_its_document():
    corpus, queries = code_search_set(200)
    assert len(corpus) == len(queries) == 200
    for document, query in zip(corpus, queries):
        assert query["relevant"] == [document["id"]]
        assert query["query"] not in " ".join(document["text"].split())


def test_evaluate_writes_json_markdown_and_a_plot(tmp_path):
    out = tmp_path / "report"
    result = run_evaluate("--limit", "150", "--dims", "384,256,128,64", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert set(report["dims"]) == {"384", "256", "128", "64"}
    assert "| 128 |" in result.stdout and "Recommended dim" in result.stdout
    for scores in report["dims"].values():
        for metric in ("recall@10", "ndcg@10", "mrr@10"):
            assert 0 <= scores[metric] <= 1 and f"{metric} retention" in scores
    assert report["dims"]["384"]["ndcg@10 retention"] == 1.0
    assert report["dims"]["64"]["ndcg@10"] < report["dims"]["384"]["ndcg@10"]
    kept = [int(d) for d, s in report["dims"].items() if s["ndcg@10 retention"] >= 0.97]
    assert report["recommended_dim"] == min(kept)
    assert "Recommended dim" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_on_a_users_own_labelled_set(tmp_path):
    write_jsonl(
        tmp_path / "corpus" / "faq" / "a.jsonl",
        [
            {"id": "pw", "text": "To reset your password, open settings and choose reset."},
            {"id": "bill", "text": "Invoices are sent on the first day of each month."},
            {"id": "gpu", "text": "The job starts one model replica on every GPU it finds."},
        ],
    )
    write_jsonl(
        tmp_path / "queries.jsonl",
        [
            {"query": "how do I change my password", "relevant": ["pw"]},
            {"query": "when do invoices arrive", "relevant": ["bill"]},
        ],
    )
    run_evaluate(
        "--corpus", str(tmp_path / "corpus"), "--queries", str(tmp_path / "queries.jsonl"),
        "--dims", "384,128", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"] == 3 and report["queries"] == 2
    assert report["dims"]["384"]["mrr@10"] == 1.0  # both answers ranked first


def test_measured_retention_is_recorded_and_quoted_by_the_truncation_warning():
    spec = Registry.load().get("all-miniLM-l6")
    assert {"256", "128", "64", "32"} <= set(spec.retention)
    assert spec.retention["128"]["recall@10"] < 1.0
    truncation = check_truncation(spec, 128, allow_non_matryoshka=True)
    assert "all-miniLM-l6 at 128 dims kept 0.95 of recall@10" in truncation.warnings[0]
    assert "code-search set" in truncation.warnings[0]
    nearest = check_truncation(spec, 100, allow_non_matryoshka=True)
    assert "at 96 dims (nearest measured)" in nearest.warnings[0]


def test_metrics_for_perfect_reversed_and_one_miss_rankings():
    doc_ids = [f"d{i}" for i in range(12)]
    queries = [{"relevant": ["d0", "d1"]}]
    perfect = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    assert score(perfect, doc_ids, queries) == {"recall@10": 1.0, "ndcg@10": 1.0, "mrr@10": 1.0}
    # Reversed: the two right answers come last of the ten.
    reversed_ = np.array([[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    result = score(reversed_, doc_ids, queries)
    ideal = 1 + 1 / np.log2(3)
    assert result["recall@10"] == 1.0
    assert result["mrr@10"] == pytest.approx(1 / 9)
    assert result["ndcg@10"] == pytest.approx((1 / np.log2(10) + 1 / np.log2(11)) / ideal)
    # One miss: d1 is outside the top ten.
    one_miss = np.array([[0, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    result = score(one_miss, doc_ids, queries)
    assert result["recall@10"] == 0.5
    assert result["mrr@10"] == 1.0
    assert result["ndcg@10"] == pytest.approx(1 / ideal)


def test_recall_recomputed_with_numpy_matches_the_tool(model_path):
    from embedder import Replica, ReplicaSpec
    from embedder.vectors import truncate_and_normalize
    from jobs.quality.evaluation import evaluate

    spec = Registry.load().get("all-miniLM-l6")
    replica = Replica(
        ReplicaSpec(source=model_path, source_is_local=True, dim=384,
                    device="cpu")
    )  # fmt: skip
    documents, queries = code_search_set(120)
    result = evaluate(replica, spec, documents, queries, [384, 96])
    # Independently: same model, plain numpy, full sort instead of argpartition.
    docs = truncate_and_normalize(replica.embed([d["text"] for d in documents]), 96)
    asked = truncate_and_normalize(replica.embed([q["query"] for q in queries]), 96)
    top10 = np.argsort(-(asked @ docs.T), axis=1)[:, :10]
    ids = np.array([d["id"] for d in documents])
    hits = [q["relevant"][0] in set(ids[row]) for q, row in zip(queries, top10)]
    assert result["dims"][96]["recall@10"] == pytest.approx(np.mean(hits), abs=1e-9)
    assert result["dims"][96]["recall@10 retention"] == pytest.approx(
        np.mean(hits) / result["dims"][384]["recall@10"]
    )


def test_rotation_keeps_more_at_64_and_128_dims_and_the_tradeoff_table(tmp_path):
    """The built-in set, all of it: after --rotate pca (fitted on the documents), 64 and 128
    dims keep more MRR@10 and nDCG@10 than plain truncation. The storage/speed/quality table
    has every dim at float32, int8 and binary, exact bytes, and timings from repeated
    searches."""
    out = tmp_path / "report"
    result = run_evaluate("--rotate", "pca", "--dims", "384,128,64", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert report["documents"] == 600
    for dim in ("128", "64"):
        plain, rotated = report["dims"][dim], report["rotated"][dim]
        for metric in ("mrr@10 retention", "ndcg@10 retention"):
            assert rotated[metric] > plain[metric], (dim, metric)
    assert report["rotated"]["384"]["ndcg@10"] == pytest.approx(
        report["dims"]["384"]["ndcg@10"], abs=1e-3
    )  # full dim: the rotation changes no dot product
    assert report["recommended_method"] in ("plain truncation", "--rotate pca")
    table = {(row["dim"], row["precision"]): row for row in report["tradeoffs"]}
    assert set(table) == {(d, p) for d in (384, 128, 64) for p in ("float32", "int8", "binary")}
    for (dim, precision), row in table.items():
        assert (
            row["bytes_per_vector"]
            == {"float32": 4 * dim, "int8": dim, "binary": dim // 8}[precision]
        )
        assert row["search_seconds_per_query"] > 0 and row["timing_repeats"] >= 10
        assert len(row["timings_seconds"]) == row["timing_repeats"]
        assert row["search_seconds_per_query"] == statistics.median(row["timings_seconds"])
        assert 0 < row["ndcg@10 retention"] and 0 < row["ndcg@10 retention (pca)"]
    assert table[(384, "float32")]["storage_share"] == 1.0
    assert table[(64, "binary")]["storage_share"] == pytest.approx(8 / 1536)
    markdown = result.stdout
    assert "## Storage, search speed and quality by dim and precision" in markdown
    assert "| 64 | binary | 8 | 0.5 % |" in markdown
    assert "with --rotate pca" in markdown or "with plain truncation" in markdown
