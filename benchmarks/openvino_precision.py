"""`python -m benchmarks.openvino_precision`: which precision `--backend openvino` should run in
on this CPU, the evidence behind `--dtype auto` (embedder.graphs.auto_openvino_precision).

The replica alone (no Ray) over the same stdlib rows as `make bench`, in blocks of 2048:
torch fp32, OpenVINO with the fp32 graph in fp32 and in bf16, and the int8 graph (NNCF,
calibrated on 100 other rows) in fp32 and in bf16; alternating, best of 3. Prints each one's
rows/s, its ratio to torch fp32, the precision OpenVINO reports it compiled in, its cosine per
row to torch fp32, and what `--dtype auto` picks here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.corpus import sample, stdlib_chunks
from benchmarks.throughput import cpu_flags, machine, minilm_spec, time_alternating


def specs(calibration: list[str], scratch: Path) -> dict:
    from jobs.quality.backends import with_int8_model

    openvino = minilm_spec(backend="openvino", dtype="fp32", max_tokens=256)
    int8 = with_int8_model(openvino, calibration, scratch)
    return {
        "torch fp32": minilm_spec(dtype="fp32", max_tokens=256),
        "openvino fp32 graph in fp32": openvino,
        "openvino fp32 graph in bf16": dataclasses.replace(openvino, dtype="bf16"),
        "openvino int8 graph in fp32": int8,
        "openvino int8 graph in bf16": dataclasses.replace(int8, dtype="bf16"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1600)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from embedder import Replica
    from embedder.graphs import choose_openvino_precision

    chunks = stdlib_chunks()
    texts, calibration = sample(chunks, args.rows), sample(chunks, 100, seed=1)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ov-"))
    try:
        replicas = {name: Replica(spec) for name, spec in specs(calibration, scratch).items()}
        best, vectors = time_alternating(replicas, texts, rounds=3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"Machine: {machine()}; flags: {cpu_flags()}.")
    print(f"{args.rows} rows, blocks of 2048, best of 3, alternating.\n")
    print("| replica | rows/s | vs torch fp32 | compiled in | cosine to torch fp32, min / mean |")
    print("|---|---|---|---|---|")
    for name, replica in replicas.items():
        cosine = np.sum(vectors[name] * vectors["torch fp32"], axis=1)
        print(
            f"| {name} | {args.rows / best[name]:.1f} | {best['torch fp32'] / best[name]:.2f}x | "
            f"{replica.describe()['inference_precision']} | "
            f"{cosine.min():.5f} / {cosine.mean():.5f} |"
        )
    picks = [choose_openvino_precision("auto", int8) for int8 in (False, True)]
    print(f"\n`--dtype auto` here: {picks[0]} for the fp32 graph, {picks[1]} for the int8 graph.")


if __name__ == "__main__":
    main()
