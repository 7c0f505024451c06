"""`python -m benchmarks.calibration_sample`: what spreading the calibration sample is worth.

The built-in code-search set (600 standard-library functions and their docstrings' first
sentences, jobs.quality.evalsets) written as a corpus ordered by collection: one JSON Lines
file per module, under a folder per top-level package, so that the job reads it collection by
collection. The rotation (--rotate pca) and the int8 ranges are fitted on a sample of N rows:

  first N   the first N valid rows in file order (what the job did before): a few packages
  spread    the job's own sample (jobs.pipeline.duplicates, jobs.pipeline.calibration): the
            rows of smallest id hash, from the whole corpus

and scored as jobs.evaluate scores (all-MiniLM-L6-v2, fp32): the share of full-dim float32
nDCG@10 and MRR@10 kept at 64 dims after the rotation, and with int8 codes (ranges from the
sample; queries quantized with them) at 384 dims without rotation and at 64 dims with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.throughput import machine
from embedder import Replica, ReplicaSpec
from embedder.outputs import base_vectors, calibration_ranges
from embedder.rotation import pca_rotation, rotate
from jobs.pipeline.calibration import sample_texts
from jobs.pipeline.duplicates import find_corpus_duplicates, scan_here
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.reading import Columns
from jobs.quality import evalsets
from jobs.quality.metrics import rank_by, score, with_retention
from jobs.quality.tradeoffs import score_matrix, written_as
from registry import Registry


def write_corpus(root: Path, documents: list[dict]) -> InputFolder:
    """One file per module, under the module's top-level package: ordered by collection."""
    for module in dict.fromkeys(d["id"].rsplit(".", 2)[0] for d in documents):
        rows = [d for d in documents if d["id"].rsplit(".", 2)[0] == module]
        path = root / module.split(".")[0] / f"{module}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return InputFolder(str(root))


def first_rows(folder: InputFolder, count: int) -> list[str]:
    """The old sample: the first `count` texts in file order."""
    texts: list[str] = []
    for input_file in folder.list_files():
        for line in (Path(folder.root) / input_file.relpath).read_text().splitlines():
            texts.append(json.loads(line)["text"])
    return texts[:count]


def spread_rows(folder: InputFolder, count: int) -> list[str]:
    """The job's sample, by its own code."""
    files = folder.list_files()
    scan = find_corpus_duplicates(folder, files, Columns(), 2048, scan_here, sample_rows=count)
    return sample_texts(folder, files, Columns(), 2048, scan.sample)


def kept(ranked, doc_ids, queries, full) -> dict[str, float]:
    scores = with_retention(score(ranked, doc_ids, queries), full)
    return {m: round(scores[f"{m} retention"], 3) for m in ("ndcg@10", "mrr@10")}


def measure(sample, docs, asked, doc_ids, queries, full) -> dict[str, dict]:
    """Retention at 64 dims rotated, and int8 at 384 plain and 64 rotated, fitted on `sample`."""
    rotation = pca_rotation(sample)
    rotated_docs, rotated_queries = rotate(docs, rotation), rotate(asked, rotation)
    results = {}
    rotated_64 = base_vectors(docs, rotation, 64), base_vectors(asked, rotation, 64)
    results["pca 64"] = kept(rank_by(rotated_64[1] @ rotated_64[0].T), doc_ids, queries, full)
    for label, (d, q, s, dim) in {
        "int8 384": (docs, asked, sample, 384),
        "int8 64 pca": (rotated_docs, rotated_queries, rotate(sample, rotation), 64),
    }.items():
        ranges = calibration_ranges(s, [dim])
        column, codes = written_as(d, dim, "int8", ranges)
        _, query_codes = written_as(q, dim, "int8", ranges)
        ranked = rank_by(score_matrix(query_codes, codes, column))
        results[label] = kept(ranked, doc_ids, queries, full)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration_sample")
    parser.add_argument("--rows", default="100,200,300", help="sample sizes to compare")
    args = parser.parse_args(argv)
    documents, queries = evalsets.code_search_set()
    spec = Registry.load().get("all-miniLM-l6")
    replica = Replica(ReplicaSpec.for_model(spec, 384, device="cpu", dtype="fp32"))
    with tempfile.TemporaryDirectory() as workdir:
        folder = write_corpus(Path(workdir), documents)
        ordered = [
            json.loads(line)
            for f in folder.list_files()
            for line in (Path(folder.root) / f.relpath).read_text().splitlines()
        ]
        doc_ids = [d["id"] for d in ordered]
        docs = replica.embed([d["text"] for d in ordered])
        asked = replica.embed([q["query"] for q in queries])
        full = score(rank_by(asked @ docs.T), doc_ids, queries)
        by_text = {d["text"]: i for i, d in enumerate(ordered)}
        collections = len({f.collection for f in folder.list_files()})
        print(machine())
        print(f"{len(ordered)} documents in {collections} collections, {len(queries)} queries")
        print("| sample | rows | collections in it | nDCG@10 / MRR@10 kept at 64 dims, pca |"
              " int8 at 384 | int8 at 64, pca |")  # fmt: skip
        print("|---|---:|---:|---|---|---|")
        for rows in (int(r) for r in args.rows.split(",")):
            for label, texts in (
                ("first N", first_rows(folder, rows)),
                ("spread", spread_rows(folder, rows)),
            ):
                picked = [by_text[t] for t in texts]
                seen = len({ordered[i]["id"].split(".")[0] for i in picked})
                found = measure(docs[picked], docs, asked, doc_ids, queries, full)
                cells = [f"{found[k]['ndcg@10']:.3f} / {found[k]['mrr@10']:.3f}" for k in found]
                print(f"| {label} | {rows} | {seen} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
