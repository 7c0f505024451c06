"""`python -m benchmarks.ceiling` (`make bench-ceiling`): how fast the job's CPU side can feed
one replica whose model costs almost nothing, against what one core can tokenize.

A one-layer, 8-dim BERT with all-MiniLM-L6-v2's tokenizer (benchmarks.scale's tiny model)
stands in for a GPU running a small model: its forward pass is nearly free, so the job's rate
is the rate of everything else (reading, tokenizing, packing, writing). The job runs twice:
as a GPU replica would (one CPU thread and the CUDA micro-batch budget: `--cpus-per-replica 1
--max-batch-tokens 32768`), and with the CPU defaults (`--replicas 1` alone: a lone CPU replica
also takes the CPU kept for I/O for its threads, and micro-batches of 2,048 tokens). Prints,
in one run: each job's rows/s (whole wall, and over its pipeline alone), how long the replica
waited for blocks once they came, when the blocks' files landed, the bare fast tokenizer's
rows/s on one thread (batches of 2,048), their ratios, and the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.scale import WORDS, build_tiny_model, cpu_name, job_args, timed_job

ROWS_PER_FILE = 10_000
# How a GPU replica runs (jobs.pipeline.placement, embedder.batching.DEFAULT_MAX_BATCH_TOKENS).
AS_A_GPU_REPLICA = ["--cpus-per-replica", "1", "--max-batch-tokens", "32768"]


def texts_of(rows: int) -> list[str]:
    """Chunks of about 40 tokens."""
    rng = np.random.default_rng(0)
    return [
        " ".join(WORDS[w] for w in rng.integers(0, len(WORDS), size=int(rng.integers(24, 36))))
        for _ in range(rows)
    ]


def write_corpus(folder: Path, texts: list[str]) -> None:
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(texts), ROWS_PER_FILE)):
        chunk = texts[start : start + ROWS_PER_FILE]
        table = pa.table({"id": [f"r{start + i}" for i in range(len(chunk))], "text": chunk})
        pq.write_table(table, folder / "docs" / f"part-{number:04d}.parquet")


def tokenizer_rate(model_folder: Path, texts: list[str]) -> dict:
    """The bare fast tokenizer on one thread, ids only, batches of 2,048."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read on every call: one thread
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder))
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), 2048):
        ids = tokenizer(texts[start : start + 2048], truncation=True, max_length=128)
        tokens += sum(len(i) for i in ids["input_ids"])
    seconds = time.perf_counter() - started
    # The job's read stage asks for the ids alone (no character offsets): cheaper than the
    # call above, which stays the yardstick (issue 20's).
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(128)
    started = time.perf_counter()
    for start in range(0, len(texts), 2048):
        backend.encode_batch_fast(texts[start : start + 2048])
    ids_only = time.perf_counter() - started
    return {
        "rows_per_s": len(texts) / seconds,
        "ids_only_rows_per_s": len(texts) / ids_only,
        "mean_tokens": tokens / len(texts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = build_tiny_model(root)
        registry.write_text(registry.read_text().replace("max_tokens = 32", "max_tokens = 128"))
        texts = texts_of(args.rows)
        write_corpus(root / "input", texts)
        bare = tokenizer_rate(root / "model", texts)
        print(f"CPU: {cpu_name()}, {os.cpu_count()} CPUs")
        print(
            f"rows: {args.rows:,} in {-(-args.rows // ROWS_PER_FILE)} Parquet files, "
            f"{bare['mean_tokens']:.1f} tokens each on average"
        )
        print(
            f"bare fast tokenizer, one thread: {bare['rows_per_s']:,.0f} rows/s (ids alone, "
            f"without offsets, as the job's read stage asks: {bare['ids_only_rows_per_s']:,.0f})"
        )
        for name, extra in [("as a GPU replica", AS_A_GPU_REPLICA), ("CPU defaults", [])]:
            shutil.rmtree(root / "output", ignore_errors=True)
            started = time.time()
            job = timed_job([*job_args(root), "--replicas", "1", *extra], root / "job.log")
            manifest = json.loads((root / "output" / "_manifest.json").read_text())
            report(name, extra, job, manifest, bare["rows_per_s"])
            print(f"  {commit_times(root / 'output', started)}")


def commit_times(output: Path, started: float) -> str:
    """When the blocks' files landed, from the job's start: a job that commits as it goes
    spreads them over its run; one whose writes wait for the last read lands them at its end."""
    landed = sorted(path.stat().st_mtime - started for path in output.rglob("*.parquet"))
    if not landed:
        return "no block file written"
    at = [landed[max(0, round(len(landed) * share) - 1)] for share in (0.1, 0.5, 1.0)]
    return f"block files landed: 10% by {at[0]:.1f} s, half by {at[1]:.1f} s, all by {at[2]:.1f} s"


def report(name: str, extra: list[str], job: dict, manifest: dict, tokenizer: float) -> None:
    pipeline = manifest["timings"]["pipeline_seconds"]
    wall_rate = job["rows_embedded"] / job["seconds"]
    pipeline_rate = job["rows_embedded"] / pipeline
    print(f"the job, one replica, {name} (--replicas 1 {' '.join(extra)}):")
    print(
        f"  {wall_rate:,.0f} rows/s over its whole wall ({job['seconds']:.1f} s, "
        f"{wall_rate / tokenizer:.2f}x the tokenizer); {pipeline_rate:,.0f} rows/s over its "
        f"pipeline ({pipeline:.1f} s, {pipeline_rate / tokenizer:.2f}x)"
    )
    replica = manifest["per_replica"][0]
    fed, waited = replica["fed_seconds"], replica["waited_for_input_seconds"]
    print(
        f"  the replica waited for blocks {waited:.1f} s of the {fed:.1f} s from its first "
        f"block in to its last out ({waited / fed if fed else 0:.0%})"
    )
    print(
        f"  replica: load {replica['load_seconds']:.1f} s, encode "
        f"{replica['encode_seconds']:.1f} s, tokenize {replica['tokenize_seconds']:.1f} s, "
        f"tokenizer {replica.get('tokenizer') or 'none'}"
    )


if __name__ == "__main__":
    main()
