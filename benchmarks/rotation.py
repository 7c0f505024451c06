"""`python -m benchmarks.rotation`: what `--rotate pca` costs per row on one CPU, before and
after issue 20.

For each model width -> written width (384->64, 1024->256, 2048->256, 4096->1024, and
2048->2048, a full-width column): the rows per second of deriving that column from the
replica's native-width vectors (the rotation and the truncation and re-normalization), with
BLAS pinned to one thread:

  old   every row rotated by the whole native x native rotation, one float64 einsum without
        optimization (row by row), then truncated (embedder/rotation.py before issue 20)
  new   embedder.outputs as the job calls it: only the rotation's first columns, a float64
        BLAS product of integers (embedder.rotation.rotate); a full-width column not rotated

Each measurement runs in its own process, once as numpy's OpenBLAS picks its kernels for this
CPU and once each with OPENBLAS_CORETYPE=Haswell and =Prescott (read when numpy loads, so it
cannot be set from inside): the new results must be bitwise the same under all three (a
digest of them is printed), the speed need not. The matrices are random with unit columns:
the time does not depend on orthogonality.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHAPES = ((384, 64), (1024, 256), (2048, 256), (4096, 1024), (2048, 2048))
CORETYPES = (None, "Haswell", "Prescott")
BLOCK = 2048  # rows per call of the new code: one block of the job's default size
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and those of its flags that matter for these products."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown", []
    name = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name, [flag for flag in SPEED_FLAGS if flag in flags]


def blas() -> str:
    import numpy as np
    from threadpoolctl import threadpool_info

    found = [
        f"{i['internal_api']} {i['version']} ({i.get('architecture', '?')} kernels, "
        f"{i['threading_layer']})"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    return f"numpy {np.__version__}, " + ("; ".join(found) or "no BLAS found by threadpoolctl")


def rows_per_second(derive, rows, repeats: int) -> float:
    derive(rows[:8])  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        derive(rows)
        best = min(best, time.perf_counter() - start)
    return len(rows) / best


def measure() -> dict:
    """In this process (BLAS as OPENBLAS_CORETYPE left it): rows/s old and new per shape,
    and a digest of the new columns."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from embedder.outputs import base_vectors, float_columns
    from embedder.vectors import truncate_and_normalize

    def old(full, rotation, dim):
        rows, axes = full.astype(np.float64), rotation.astype(np.float64)
        rotated = np.einsum("ij,jk->ik", rows, axes, optimize=False).astype(np.float32)
        return truncate_and_normalize(rotated, dim)

    def new(full, rotation, dim):
        base = base_vectors(full, rotation, dim, rotate_full_width=False)
        return float_columns(base, [dim], rotation)[dim]

    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    results = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for native, dim in SHAPES:
            full = rng.normal(size=(BLOCK, native)).astype(np.float32)
            full /= np.linalg.norm(full, axis=1, keepdims=True)
            rotation = rng.normal(size=(native, native)).astype(np.float32)
            rotation /= np.linalg.norm(rotation, axis=0, keepdims=True)
            old_rows = full[: max(16, BLOCK * 384 * 384 // native**2)]
            written = new(full, rotation, dim)
            digest.update(written.tobytes())
            results[f"{native}->{dim}"] = {
                "old": rows_per_second(lambda r: old(r, rotation, dim), old_rows, 2),
                "new": rows_per_second(lambda r: new(r, rotation, dim), full, 3),
            }
    return {"blas": blas(), "shapes": results, "digest": digest.hexdigest()[:16]}


def run_measurement(coretype: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.rotation", "--measure"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    name, flags = cpu()
    print(f"CPU: {name}, {os.cpu_count()} CPUs; flags: {', '.join(flags) or 'none of'} "
          f"({', '.join(SPEED_FLAGS)} looked for)")  # fmt: skip
    runs = {coretype: run_measurement(coretype) for coretype in CORETYPES}
    for coretype, run in runs.items():
        print(f"OPENBLAS_CORETYPE={coretype or '(unset)'}: {run['blas']}")
    print()
    header = "| model -> written dims | old (einsum, native x native) |"
    header += "".join(f" new, CORETYPE {c or 'unset'} |" for c in CORETYPES) + " new / old |"
    print(header)
    print("|---" * (3 + len(CORETYPES)) + "|")
    for shape in runs[None]["shapes"]:
        old = runs[None]["shapes"][shape]["old"]
        cells = [f"{runs[c]['shapes'][shape]['new']:,.0f}" for c in CORETYPES]
        ratio = runs[None]["shapes"][shape]["new"] / old
        print(f"| {shape} | {old:,.0f} | " + " | ".join(cells) + f" | {ratio:,.0f}x |")
    print()
    old_by = {c: [f"{s['old']:,.0f}" for s in runs[c]["shapes"].values()] for c in CORETYPES}
    print("old rows/s under each CORETYPE (einsum uses no BLAS): " + json.dumps(old_by))
    digests = {c or "unset": runs[c]["digest"] for c in CORETYPES}
    same = len(set(digests.values())) == 1
    print(f"digest of the new columns: {digests} ({'bitwise the same' if same else 'DIFFER'})")


if __name__ == "__main__":
    main()
