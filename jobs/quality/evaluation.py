"""`python -m jobs.evaluate MODEL`: what truncation costs a model in retrieval quality.

Embeds a labelled corpus once at full dim (documents with the registry's document prompt,
queries with its query prompt), then for each dim truncates, re-normalizes and scores
recall@10, nDCG@10 and MRR@10, with their retention (score / full-dim score); with
`--rotate pca`, the same again after a rotation fitted on the documents. Adds the
storage/speed/quality table per dim and precision (jobs/quality/tradeoffs.py). Writes
report.json, report.md and report.png to --out and names the recommended dim and method:
the smallest dim that keeps at least --keep of full-dim nDCG@10.

Without --corpus/--queries it uses the built-in code-search set (jobs/quality/evalsets.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.graphs import is_graph_backend
from embedder.rotation import pca_rotation, rotate
from embedder.vectors import truncate_and_normalize
from jobs.pipeline.blocks import read_blocks
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.reading import Columns
from jobs.quality import evalsets
from jobs.quality.metrics import rank, score, with_retention
from jobs.quality.report import markdown, write_reports
from jobs.quality.tradeoffs import TIMING_REPEATS, tradeoff_table
from registry import Registry, RegistryError

__all__ = ["evaluate", "rank", "recommend", "recommend_method", "score"]


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


def quality_by_dim(
    doc_vectors: np.ndarray,
    query_vectors: np.ndarray,
    doc_ids: list[str],
    queries: list[dict],
    dims: list[int],
    full: dict[str, float] | None = None,
) -> dict[int, dict[str, float]]:
    """Scores per dim, widest first, each with its retention: the share it keeps of `full`
    (default: the widest dim's own scores)."""
    per_dim = {}
    for dim in sorted(dims, reverse=True):
        docs = truncate_and_normalize(doc_vectors, dim)
        asked = truncate_and_normalize(query_vectors, dim)
        per_dim[dim] = score(rank(asked, docs), doc_ids, queries)
    full = full or per_dim[max(per_dim)]
    return {dim: with_retention(scores, full) for dim, scores in per_dim.items()}


def evaluate(
    replica: Replica,
    model_spec,
    documents: list[dict],
    queries: list[dict],
    dims: list[int],
    rotate_pca: bool = False,
    repeats: int = TIMING_REPEATS,
) -> dict[str, Any]:
    """Scores and retention per dim from one full-dim encode of documents and queries, the
    storage/speed/quality table, and with `rotate_pca` the same after a rotation fitted on
    the documents alone (never on the queries)."""
    embedded = embed_set(replica, model_spec, documents, queries)
    return evaluate_vectors(embedded, documents, dims, rotate_pca, repeats)


def evaluate_vectors(
    embedded: tuple[np.ndarray, np.ndarray, list[dict]],
    documents: list[dict],
    dims: list[int],
    rotate_pca: bool = False,
    repeats: int = TIMING_REPEATS,
) -> dict[str, Any]:
    """evaluate, on embed_set's result (for a caller that uses the vectors again)."""
    doc_ids = [d["id"] for d in documents]
    doc_full, query_full, queries = embedded
    plain = quality_by_dim(doc_full, query_full, doc_ids, queries, dims)
    table = tradeoff_table(doc_full, query_full, doc_ids, queries, dims, repeats)
    result = {"documents": len(documents), "queries": len(queries), "dims": plain}
    if rotate_pca:
        rotation = pca_rotation(doc_full)
        doc_rotated, query_rotated = rotate(doc_full, rotation), rotate(query_full, rotation)
        full = plain[max(plain)]
        result["rotated"] = quality_by_dim(doc_rotated, query_rotated, doc_ids, queries, dims, full)
        rotated_table = tradeoff_table(
            doc_rotated, query_rotated, doc_ids, queries, dims, repeats=1
        )
        for row, rotated_row in zip(table, rotated_table):
            for metric in ("ndcg@10 retention", "recall@10 retention"):
                row[f"{metric} (pca)"] = rotated_row[metric]
    result["tradeoffs"] = table
    return result


def embed_set(
    replica: Replica, model_spec, documents: list[dict], queries: list[dict]
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Full-dim vectors of the documents (document prompt) and of the queries that have a
    relevant document in the set (query prompt), and those queries."""
    known = {d["id"] for d in documents}
    queries = [q for q in queries if set(q["relevant"]) & known]
    doc_full = replica.embed([d["text"] for d in documents])
    query_replica = replica.for_prompt(model_spec.query_prompt, model_spec.query_prompt_name)
    return doc_full, query_replica.embed([q["query"] for q in queries]), queries


def recommend(per_dim: dict[int, dict[str, float]], keep: float) -> int:
    """The smallest dim that keeps at least `keep` of full-dim nDCG@10."""
    good = [dim for dim, s in per_dim.items() if s["ndcg@10 retention"] >= keep]
    return min(good) if good else max(per_dim)


def recommend_method(
    plain: dict[int, dict[str, float]], rotated: dict[int, dict[str, float]] | None, keep: float
) -> tuple[int, str]:
    """The smallest dim that keeps `keep` of full-dim nDCG@10 with either method, and the
    method: plain truncation when it does as well (it needs no rotation)."""
    best = (recommend(plain, keep), "plain truncation")
    if rotated:
        dim = recommend(rotated, keep)
        if dim < best[0]:
            best = (dim, "--rotate pca")
    return best


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
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx", "openvino"),
        help="score this backend (default: the registry entry's) and what it keeps of torch fp32",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: a static int8 model (onnx or openvino), calibrated on the documents",
    )
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--revision", default="")
    parser.add_argument(
        "--rotate",
        choices=("none", "pca"),
        default="none",
        help="also score each dim after a rotation into the documents' principal axes",
    )
    args = parser.parse_args(argv)
    try:
        model_spec = Registry.load(args.registry_file).get(args.model)
        if args.backend:
            model_spec = model_spec.model_copy(update={"backend": args.backend})
        if args.quantize != "none" and not is_graph_backend(model_spec.backend):
            raise RegistryError("--quantize int8 needs --backend onnx or --backend openvino")
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
    spec = ReplicaSpec.for_model(
        model_spec,
        model_spec.native_dim,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
    )
    if args.quantize != "none":
        from jobs.quality.backends import calibration_texts, with_int8_model

        spec = with_int8_model(spec, calibration_texts(documents), Path(args.out) / "int8-model")
    replica = Replica(spec)
    embedded = embed_set(replica, model_spec, documents, queries)  # once, for both uses
    result = evaluate_vectors(embedded, documents, dims, args.rotate == "pca")
    if args.backend or args.quantize != "none":
        from jobs.quality.backends import backend_cost

        reference = Replica(
            dataclasses.replace(spec, backend="torch", dtype="fp32", device="cpu", quantized=None)
        )
        result["backend_cost"] = backend_cost(
            replica, embedded, reference, model_spec, documents, dims
        )
    dim, method = recommend_method(result["dims"], result.get("rotated"), args.keep)
    report = {
        "model": model_spec.name,
        "hf_id": model_spec.hf_id,
        "set": set_name,
        "dtype": replica.dtype,
        "keep": args.keep,
        **result,
        "dims": {str(d): s for d, s in result["dims"].items()},
        "recommended_dim": dim,
        "recommended_method": method,
    }
    if "rotated" in result:
        report["rotated"] = {str(d): s for d, s in result["rotated"].items()}
    write_reports(Path(args.out), report)
    print(markdown(report))
    print(f"reports in {args.out}/ (report.json, report.md, report.png)")
    return 0
