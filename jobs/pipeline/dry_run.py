"""`--dry-run`: what a run would do, without starting Ray or writing anything.

Everything is decided as a run decides it, on this machine: the duplicate-id scan, the plan
and the done blocks from OUTPUT's footers (jobs.pipeline.work); the blocks to do are read
(jobs.pipeline.blocks) and their rows counted as the run counts them: a row whose id and text
an earlier file of this OUTPUT holds is reused, not embedded. Files that cannot be read or
decoded are named with the exit code they will cause. The encoding time is measured on a
sample spread over every row to embed, and scaled by their length (characters, up to what
the model reads), so that one long text weighs in the estimate as it will in the run.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from embedder import Replica, ReplicaSpec
from jobs.pipeline import commit, duplicates
from jobs.pipeline.blocks import read_planned
from jobs.pipeline.folders import QUANTIZED
from jobs.pipeline.stages import block_report
from jobs.pipeline.work import plan_work

# Rows encoded here to time one replica, drawn from all the rows to embed.
TIMING_SAMPLE_ROWS = 128
# A token is rarely more than this many characters: a text's cost stops growing there.
CHARS_PER_TOKEN = 8


def survey(job, replica_spec: ReplicaSpec) -> dict[str, Any]:
    """Counts a run would report, and an estimate of its encoding time."""
    settings = job.settings
    output = job.output
    block_rows = settings.block_rows
    scan = duplicates.find_corpus_duplicates(
        job.input, job.input_files, job.columns, block_rows, duplicates.scan_here
    )
    fingerprint_id = commit.fingerprint_id(job.fingerprint)
    # --overwrite clears OUTPUT first: nothing in it counts.
    listing = {} if settings.overwrite else output.files()
    work = plan_work(job.input_files, scan, output, fingerprint_id, block_rows, listing)
    rows_by_collection: Counter[str] = Counter()
    rejected = sum(e["rejected"] for e in work.done)
    cuts = [cut for e in work.done for cut in e["cuts"]]
    done = sum(e["skipped"] for e in work.done)
    for envelope in work.done:
        for entry in envelope["files"]:
            rows_by_collection[collection_of(entry["relpath"])] += entry["rows"]
    sample = TextSample(TIMING_SAMPLE_ROWS, (job.max_tokens or 512) * CHARS_PER_TOKEN)
    reused = 0
    for item in work.items:
        to_do = {block.planned.id: block for block in item.blocks}
        planned = [block.planned for block in item.blocks]
        for plan, block in read_planned(job.input, planned, job.columns, block_rows, item.excluded):
            rejected += len(block.rejections)
            cuts += block_report(block)["cuts"]
            rows_by_collection.update(block.collections())
            if not block.rows.num_rows:
                continue
            keys = commit.row_keys(
                block.rows.column("id").to_pylist(), block.rows.column("text").to_pylist()
            )
            earlier = commit.reusable_keys(list(to_do[plan.id].earlier), fingerprint_id, output)
            texts = block.rows.column("text").to_pylist()
            for key, text in zip(keys, texts):
                if key in earlier:
                    reused += 1
                else:
                    sample.add(text)
    estimate = estimate_seconds(replica_spec, sample)
    return {
        "input": job.input.uri,
        "output": output.uri,
        "model": job.model_spec.name,
        "dims": job.dims,
        "files": len(job.input_files),
        "blocks": work.blocks,
        "collections": dict(sorted(rows_by_collection.items())),
        "rows_done": done,
        "rows_to_do": sample.rows,
        "rows_reused": reused,
        "rows_rejected": rejected,
        "files_undecodable": sorted(cuts, key=lambda c: c["file"]),
        "files_unread": scan.unread,
        "estimate": estimate,
        "quantization": quantization_plan(job),
        "calibration_rows": settings.calibration_rows,
    }


def quantization_plan(job) -> str | None:
    """What --quantize int8 will do first: "kept" (OUTPUT holds the int8 model already) or
    "to make" (calibrated on the sample before any block is embedded); None without it."""
    if job.settings.quantize == "none":
        return None
    if not job.settings.overwrite and job.output.read_json(QUANTIZED) is not None:
        return "kept"
    return "to make"


def collection_of(relpath: str) -> str:
    return relpath.split("/", 1)[0].removeprefix("collection=")


class TextSample:
    """A uniform sample of the texts to embed (reservoir sampling, a fixed seed) and the
    length of them all, each capped where the model stops reading."""

    def __init__(self, size: int, cap_chars: int):
        self.size, self.cap_chars = size, cap_chars
        self.texts: list[str] = []
        self.rows = 0
        self.chars = 0
        self.random = random.Random(0)

    def add(self, text: str) -> None:
        self.rows += 1
        self.chars += min(len(text), self.cap_chars)
        if len(self.texts) < self.size:
            self.texts.append(text)
        else:
            slot = self.random.randrange(self.rows)
            if slot < self.size:
                self.texts[slot] = text

    def sample_chars(self) -> int:
        return sum(min(len(text), self.cap_chars) for text in self.texts)


def estimate_seconds(replica_spec: ReplicaSpec, sample: TextSample) -> dict[str, Any]:
    """Encoding time for every row to embed: seconds per character on the sample, times the
    characters of them all."""
    if not sample.texts:
        return {"seconds": 0.0, "rows_per_second": None, "device": None}
    replica = Replica(replica_spec)
    replica.embed(sample.texts[:4])  # warm-up
    started = time.perf_counter()
    replica.embed(sample.texts)
    seconds = time.perf_counter() - started
    total = seconds * sample.chars / max(1, sample.sample_chars())
    return {
        "seconds": total,
        "rows_per_second": sample.rows / total if total else None,
        "device": replica.device,
        "sample_rows": len(sample.texts),
    }


def describe(surveyed: dict[str, Any]) -> str:
    estimate = surveyed["estimate"]
    lines = [
        f"Dry run: nothing was embedded or written to {surveyed['output']}.",
        f"  input files:      {surveyed['files']} under {surveyed['input']}, "
        f"in {surveyed['blocks']} block(s)",
        "  collections:      "
        + ", ".join(f"{name} ({rows} rows)" for name, rows in surveyed["collections"].items()),
        f"  rows already done: {surveyed['rows_done']}",
        f"  rows to embed:    {surveyed['rows_to_do']} with {surveyed['model']} at dims "
        f"{surveyed['dims']}",
        f"  rows reused:      {surveyed['rows_reused']} (in blocks to redo, id and text "
        "unchanged: their vectors are kept)",
        f"  rows rejected:    {surveyed['rows_rejected']}",
    ]
    for cut in surveyed["files_undecodable"]:
        lines.append(
            f"  cannot decode:    {cut['file']} from row {cut['from_row']} ({cut['reason']}): "
            "the run will exit 3"
        )
    for file, error in surveyed["files_unread"].items():
        lines.append(f"  could not read:   {file} ({error}): the run will exit 1")
    if surveyed["quantization"] == "to make":
        lines.append(
            f"  int8 model:       made first, once for this OUTPUT, by static quantization "
            f"calibrated on up to {surveyed['calibration_rows']} rows of the corpus (minutes "
            "for a large model), and kept in OUTPUT; the estimate below is of the unquantized "
            "model"
        )
    elif surveyed["quantization"] == "kept":
        lines.append("  int8 model:       the one OUTPUT holds (made by an earlier run)")
    if estimate["rows_per_second"]:
        lines.append(
            f"  estimate:         {estimate['seconds'] / 60:.1f} min of encoding for one replica "
            f"at {estimate['rows_per_second']:.1f} rows/s (measured here on "
            f"{estimate['device']}, {estimate['sample_rows']} rows drawn from all those to "
            "embed, scaled by their length); n replicas take about 1/n"
        )
    return "\n".join(lines)
