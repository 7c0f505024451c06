"""`--dry-run`: what a run would do, without starting Ray or writing anything.

Reads every input file once on this machine to count rows and check which blocks OUTPUT already
holds, then times a short encode of a few pending rows with one replica here to estimate the
encoding time.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from embedder import Replica, ReplicaSpec
from jobs.pipeline import commit, corpus

CALIBRATION_TEXTS = 64


def plan(job, replica_spec: ReplicaSpec) -> dict[str, Any]:
    settings = job.settings
    options = settings.storage_options
    columns = corpus.Columns(text=settings.text_column, id=settings.id_column)
    committed = {} if settings.overwrite else commit.index_committed(job.output, options)
    fingerprint = commit.fingerprint_id(job.fingerprint)
    rows_by_collection: Counter[str] = Counter()
    done = todo = rejected = 0
    pending_texts: list[str] = []
    for shard in job.shards:
        reader = corpus.ShardReader(shard, columns, settings.block_rows)
        files = committed.get(shard.digest, [])
        for table in reader.tables(options):
            body = table.drop_columns([corpus.BLOCK_COLUMN])
            label = table.column(corpus.BLOCK_COLUMN)[0].as_py()
            rows_by_collection.update(body.column("collection").to_pylist())
            mine = [f for f in files if f.label == label]
            if commit.block_status(body, mine, fingerprint, options)[1]:
                done += body.num_rows
            else:
                todo += body.num_rows
                if len(pending_texts) < CALIBRATION_TEXTS:
                    pending_texts += body.column("text").to_pylist()[:CALIBRATION_TEXTS]
        rejected += len(reader.rejections)
    estimate = estimate_seconds(replica_spec, pending_texts[:CALIBRATION_TEXTS], todo)
    return {
        "input": job.input,
        "output": job.output,
        "model": job.spec.name,
        "dims": job.dims,
        "files": len(job.shards),
        "collections": dict(sorted(rows_by_collection.items())),
        "rows_done": done,
        "rows_to_do": todo,
        "rows_rejected": rejected,
        "estimate": estimate,
    }


def estimate_seconds(replica_spec: ReplicaSpec, texts: list[str], rows: int) -> dict[str, Any]:
    """Encoding time for `rows` at the rate one replica reaches here on a sample of them."""
    if not texts or not rows:
        return {"seconds": 0.0, "rows_per_second": None, "device": None}
    replica = Replica(replica_spec)
    replica.embed(texts[:4])  # warm-up
    started = time.perf_counter()
    replica.embed(texts)
    rate = len(texts) / (time.perf_counter() - started)
    return {
        "seconds": rows / rate,
        "rows_per_second": rate,
        "device": replica.device,
        "sample_rows": len(texts),
    }


def describe(planned: dict[str, Any]) -> str:
    estimate = planned["estimate"]
    lines = [
        f"Dry run: nothing was embedded or written to {planned['output']}.",
        f"  input files:      {planned['files']} under {planned['input']}",
        "  collections:      "
        + ", ".join(f"{name} ({rows} rows)" for name, rows in planned["collections"].items()),
        f"  rows already done: {planned['rows_done']}",
        f"  rows to embed:    {planned['rows_to_do']} with {planned['model']} at dims "
        f"{planned['dims']}",
        f"  rows rejected:    {planned['rows_rejected']}",
    ]
    if estimate["rows_per_second"]:
        lines.append(
            f"  estimate:         {estimate['seconds'] / 60:.1f} min of encoding for one replica "
            f"at {estimate['rows_per_second']:.1f} rows/s (measured here on "
            f"{estimate['device']}, {estimate['sample_rows']} rows); n replicas take about 1/n"
        )
    return "\n".join(lines)
