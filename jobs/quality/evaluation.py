"""`python -m jobs.evaluate MODEL`: what truncation costs a model in retrieval quality.

Embeds a labelled corpus once at full dim (documents with the registry's document prompt,
queries with its query prompt), then for each dim truncates, re-normalizes and scores
recall@10, nDCG@10 and MRR@10, with their retention (score / full-dim score). Writes
report.json, report.md and report.png to --out and names the recommended dim: the smallest
that keeps at least --keep of full-dim nDCG@10.

Without --corpus/--queries it uses the built-in code-search set (jobs/quality/evalsets.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.vectors import truncate_and_normalize
from jobs.pipeline.blocks import read_blocks
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.reading import Columns
from jobs.quality import evalsets
from registry import Registry, RegistryError

K = 10
METRICS = ("recall@10", "ndcg@10", "mrr@10")


def default_dims(model_spec) -> list[int]:
    """The trained dims of a Matryoshka model, else native, 1/2, 1/4 and 1/8 of it."""
    if model_spec.matryoshka_dims:
        return sorted(set(model_spec.matryoshka_dims) | {model_spec.native_dim}, reverse=True)
    return [model_spec.native_dim // d for d in (1, 2, 4, 8)]


def load_labelled_set(corpus_dir: str, queries_file: str) -> tuple[list[dict], list[dict]]:
    """Documents in the job's input format and queries as {"query", "relevant": [ids]}."""
    documents = []
    folder = InputFolder(corpus_dir)
    for input_file in folder.list_files():
        for block in read_blocks(folder, input_file, Columns(), block_rows=10**9):
            rows = block.rows
            documents += [
                {"id": i, "text": t}
                for i, t in zip(rows.column("id").to_pylist(), rows.column("text").to_pylist())
            ]
    queries = [json.loads(line) for line in Path(queries_file).read_text().splitlines() if line]
    return documents, queries


def rank(query_vectors: np.ndarray, doc_vectors: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the top-k documents per query, best first."""
    scores = query_vectors @ doc_vectors.T
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


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


def evaluate(
    replica: Replica, model_spec, documents: list[dict], queries: list[dict], dims: list[int]
) -> dict[str, Any]:
    """Scores and retention per dim, from one full-dim encode of documents and queries."""
    doc_ids = [d["id"] for d in documents]
    known = set(doc_ids)
    queries = [q for q in queries if set(q["relevant"]) & known]
    doc_full = replica.embed([d["text"] for d in documents])
    query_replica = replica.for_prompt(model_spec.query_prompt, model_spec.query_prompt_name)
    query_full = query_replica.embed([q["query"] for q in queries])
    per_dim = {}
    for dim in sorted(dims, reverse=True):
        docs = truncate_and_normalize(doc_full, dim)
        query_vectors = truncate_and_normalize(query_full, dim)
        per_dim[dim] = score(rank(query_vectors, docs), doc_ids, queries)
    full = per_dim[max(per_dim)]
    for scores in per_dim.values():
        for metric in METRICS:
            base = full[metric]
            scores[f"{metric} retention"] = scores[metric] / base if base else 0.0
    return {"documents": len(documents), "queries": len(queries), "dims": per_dim}


def recommend(per_dim: dict[int, dict[str, float]], keep: float) -> int:
    """The smallest dim that keeps at least `keep` of full-dim nDCG@10."""
    good = [dim for dim, s in per_dim.items() if s["ndcg@10 retention"] >= keep]
    return min(good) if good else max(per_dim)


def write_reports(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# {report['model']}: retrieval quality by dim",
        "",
        f"Set: {report['set']} ({report['documents']} documents, {report['queries']} queries).",
        "Retention = score at that dim / score at the full dim.",
        "",
        "| dim | recall@10 | nDCG@10 | MRR@10 | recall ret. | nDCG ret. | MRR ret. |",
        "|---|---|---|---|---|---|---|",
    ]
    for dim, s in sorted(report["dims"].items(), key=lambda kv: -int(kv[0])):
        lines.append(
            f"| {dim} | {s['recall@10']:.4f} | {s['ndcg@10']:.4f} | {s['mrr@10']:.4f} | "
            f"{s['recall@10 retention']:.3f} | {s['ndcg@10 retention']:.3f} | "
            f"{s['mrr@10 retention']:.3f} |"
        )
    lines += [
        "",
        f"Recommended dim: **{report['recommended_dim']}** (the smallest keeping at least "
        f"{report['keep']:.2f} of full-dim nDCG@10).",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    dims = sorted(int(d) for d in report["dims"])
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for metric in METRICS:
        axis.plot(dims, [report["dims"][str(d)][metric] for d in dims], marker="o", label=metric)
    axis.axvline(report["recommended_dim"], color="grey", linestyle="--", label="recommended")
    axis.set_xscale("log", base=2)
    axis.set_xticks(dims, [str(d) for d in dims])
    axis.set_xlabel("dim")
    axis.set_ylabel("score")
    axis.set_title(f"{report['model']} on {report['set']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__)
    parser.add_argument("model", help="registry name")
    parser.add_argument("--corpus", help="labelled corpus folder (job input format)")
    parser.add_argument("--queries", help='JSONL of {"query": str, "relevant": [ids]}')
    parser.add_argument("--dims", help="comma-separated dims; default: trained dims or 1..1/8")
    parser.add_argument("--keep", type=float, default=0.97, help="nDCG@10 retention to keep")
    parser.add_argument("--out", default="out/evaluate", help="folder for the reports")
    parser.add_argument("--limit", type=int, default=600, help="built-in set: documents")
    parser.add_argument("--registry-file", help="TOML file with your own models")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--revision", default="")
    args = parser.parse_args(argv)
    try:
        model_spec = Registry.load(args.registry_file).get(args.model)
        dims = [int(d) for d in args.dims.split(",")] if args.dims else default_dims(model_spec)
        if any(d <= 0 or d > model_spec.native_dim for d in dims):
            raise RegistryError(
                f"--dims must be within 1..{model_spec.native_dim}, got {args.dims}"
            )
    except (RegistryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if bool(args.corpus) != bool(args.queries):
        print("error: give both --corpus and --queries, or neither", file=sys.stderr)
        return 2
    if args.corpus:
        documents, queries = load_labelled_set(args.corpus, args.queries)
        set_name = f"{args.corpus} + {args.queries}"
    else:
        documents, queries = evalsets.code_search_set(args.limit)
        set_name = "built-in stdlib code search"
    replica = Replica(
        ReplicaSpec.for_model(
            model_spec,
            model_spec.native_dim,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            device=args.device,
            dtype=args.dtype,
        )
    )
    result = evaluate(replica, model_spec, documents, queries, dims)
    result["dims"] = {str(d): s for d, s in result["dims"].items()}
    report = {
        "model": model_spec.name,
        "hf_id": model_spec.hf_id,
        "set": set_name,
        "dtype": replica.dtype,
        "keep": args.keep,
        **result,
        "recommended_dim": recommend({int(d): s for d, s in result["dims"].items()}, args.keep),
    }
    write_reports(Path(args.out), report)
    print(markdown(report))
    print(f"reports in {args.out}/ (report.json, report.md, report.png)")
    return 0
