"""`--dry-run`: what a run would do, without starting Ray or writing anything.

Reads every input file on this machine, with the same duplicate-id decisions and the same
block reading and done checks as a run (jobs.pipeline.blocks), to count rows done, to do and
rejected; then times a short encode of a few pending rows with one replica here to estimate
the encoding time.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from embedder import Replica, ReplicaSpec
from jobs.pipeline import commit, duplicates
from jobs.pipeline.blocks import block_status, committed_by_block, read_blocks

# Rows encoded here to time one replica.
TIMING_SAMPLE_ROWS = 64


def survey(job, replica_spec: ReplicaSpec) -> dict[str, Any]:
    """Counts a run would report, and an estimate of its encoding time."""
    settings = job.settings
    committed = {} if settings.overwrite else job.output.committed_files()
    fingerprint_id = commit.fingerprint_id(job.fingerprint)
    scan = duplicates.find_corpus_duplicates(
        job.input, job.input_files, job.columns, settings.block_rows, duplicates.scan_here
    )
    rows_by_collection: Counter[str] = Counter()
    done = todo = rejected = 0
    pending_texts: list[str] = []
    for input_file in job.input_files:
        if input_file.relpath in scan.unread:
            continue
        by_block = committed_by_block(committed.get(input_file.path_hash, []))
        excluded = duplicates.excluded_rows(scan.excluded.get(input_file.relpath, {}))
        for block in read_blocks(job.input, input_file, job.columns, settings.block_rows, excluded):
            rejected += len(block.rejections)
            rows_by_collection.update(block.collections())
            if not block.rows.num_rows:
                continue
            mine = by_block.get(block.id, [])
            if block_status(block, mine, fingerprint_id, job.output).done:
                done += block.rows.num_rows
            else:
                todo += block.rows.num_rows
                if len(pending_texts) < TIMING_SAMPLE_ROWS:
                    pending_texts += block.rows.column("text").to_pylist()[:TIMING_SAMPLE_ROWS]
    estimate = estimate_seconds(replica_spec, pending_texts[:TIMING_SAMPLE_ROWS], todo)
    return {
        "input": job.input.uri,
        "output": job.output.uri,
        "model": job.model_spec.name,
        "dims": job.dims,
        "files": len(job.input_files),
        "collections": dict(sorted(rows_by_collection.items())),
        "rows_done": done,
        "rows_to_do": todo,
        "rows_rejected": rejected,
        "files_unread": scan.unread,
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


def describe(surveyed: dict[str, Any]) -> str:
    estimate = surveyed["estimate"]
    lines = [
        f"Dry run: nothing was embedded or written to {surveyed['output']}.",
        f"  input files:      {surveyed['files']} under {surveyed['input']}",
        "  collections:      "
        + ", ".join(f"{name} ({rows} rows)" for name, rows in surveyed["collections"].items()),
        f"  rows already done: {surveyed['rows_done']}",
        f"  rows to embed:    {surveyed['rows_to_do']} with {surveyed['model']} at dims "
        f"{surveyed['dims']}",
        f"  rows rejected:    {surveyed['rows_rejected']}",
    ]
    for file, error in surveyed["files_unread"].items():
        lines.append(f"  could not read:   {file} ({error})")
    if estimate["rows_per_second"]:
        lines.append(
            f"  estimate:         {estimate['seconds'] / 60:.1f} min of encoding for one replica "
            f"at {estimate['rows_per_second']:.1f} rows/s (measured here on "
            f"{estimate['device']}, {estimate['sample_rows']} rows); n replicas take about 1/n"
        )
    return "\n".join(lines)
