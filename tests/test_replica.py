"""The replica with the real all-MiniLM-L6-v2, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder import EmbeddingError, Replica, ReplicaSpec
from tests.conftest import real_texts, reference_vectors


@pytest.fixture(scope="module")
def texts():
    return real_texts(40)


def make_replica(model_path, dim=384, **extra) -> Replica:
    spec = ReplicaSpec(source=model_path, source_is_local=True, dim=dim, **extra)
    return Replica(spec)


@pytest.mark.parametrize("dim", [384, 128, 32])
def test_replica_equals_sentence_transformers(model_path, bare_model, texts, dim):
    replica = make_replica(model_path, dim=dim, device="cpu")
    ours = replica.embed(texts)
    reference = reference_vectors(bare_model, texts, dim)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), dim)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999
    assert replica.stats.rows == len(texts) and replica.stats.tokens > len(texts)


def test_long_texts_are_truncated_and_counted(model_path):
    replica = make_replica(model_path, device="cpu")
    replica.embed(["word " * 1000, "short text"])
    assert replica.stats.truncated_texts == 1
    assert replica.stats.tokens <= 256 + 10


def test_a_model_that_yields_nan_fails_loudly(model_path, texts):
    replica = make_replica(model_path, device="cpu")
    with torch.no_grad():
        first_layer = next(replica.model.parameters())
        first_layer.fill_(float("nan"))  # a real forward pass now produces NaN
    with pytest.raises(EmbeddingError, match="NaN"):
        replica.embed(texts[:4])


def test_bf16_on_cpu_stays_close_to_fp32(model_path, bare_model, texts):
    replica = make_replica(model_path, device="cpu", dtype="bf16")
    assert replica.describe()["dtype"] == "bf16"
    ours = replica.embed(texts)
    reference = reference_vectors(bare_model, texts, 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.sum(ours * reference, axis=1).min() >= 0.99


def test_the_document_prompt_is_applied(model_path, bare_model, texts):
    replica = make_replica(model_path, device="cpu", document_prompt="passage: ")
    ours = replica.embed(texts[:8])
    with_prompt = bare_model.encode(texts[:8], prompt="passage: ", normalize_embeddings=True)
    without = bare_model.encode(texts[:8], normalize_embeddings=True)
    assert np.sum(ours * with_prompt, axis=1).min() >= 0.9999
    assert np.sum(ours * without, axis=1).min() < 0.9999  # the prompt changed the vectors


def test_out_of_memory_halves_the_token_budget_and_keeps_the_one_that_worked(
    model_path, bare_model, texts
):
    """A CPU box cannot run out of GPU memory, so the model raises CUDA's OOM error above 1024
    padded tokens per forward pass; the vectors still come from the real model."""
    replica = make_replica(model_path, device="cpu", max_batch_tokens=8192)

    def small_memory(module, args):
        if args[0]["input_ids"].numel() > 1024:  # rows x padded width
            raise torch.OutOfMemoryError("CUDA out of memory (simulated cap)")

    replica.model.register_forward_pre_hook(small_memory)
    ours = replica.embed(texts)
    assert replica.max_batch_tokens == 1024 and replica.stats.oom_retries >= 3
    reference = reference_vectors(bare_model, texts, 384)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999
    retries = replica.stats.oom_retries
    replica.embed(texts)
    assert replica.stats.oom_retries == retries  # the working budget was kept


def test_out_of_memory_on_a_single_text_is_raised(model_path, texts):
    replica = make_replica(model_path, device="cpu")

    def always_out_of_memory(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    replica.model.register_forward_pre_hook(always_out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        replica.embed(texts[:2])


@pytest.fixture(scope="module")
def larger_model(tmp_path_factory, model_path) -> str:
    """A BERT of 80M parameters built here from a config (random weights, MiniLM's
    tokenizer), saved in fp32 like most checkpoints: big enough for memory to be measured."""
    import json
    import shutil
    from pathlib import Path

    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert-80m")
    shutil.copytree(
        model_path, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors")
    )
    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_hidden_layers=8, intermediate_size=3072)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    pooling = Path(folder) / "1_Pooling" / "config.json"
    pooling.write_text(
        json.dumps(json.loads(pooling.read_text()) | {"word_embedding_dimension": 768})
    )
    return str(folder)


MEMORY_PROBE = """
import sys, threading, time
import sentence_transformers, torch  # imported before the baseline: not part of the load
from embedder import Replica, ReplicaSpec

def anonymous_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

peak, done = [anonymous_kib()], threading.Event()
def sample():
    while not done.is_set():
        peak.append(anonymous_kib())
        time.sleep(0.002)
base = anonymous_kib()
sampler = threading.Thread(target=sample)
sampler.start()
replica = Replica(ReplicaSpec(source=sys.argv[1], source_is_local=True, dim=768, device="cpu",
                              dtype="bf16"))
done.set()
sampler.join()
params = sum(p.numel() for p in replica.model.parameters())
dtypes = sorted({str(p.dtype) for p in replica.model.parameters()})
# The dtype transformers built the weights in (casting afterwards leaves it float32).
loaded_in = replica.model[0].auto_model.config.dtype
print(params, (max(peak) - base) * 1024, ",".join(dtypes), loaded_in)
"""


def test_a_bf16_load_never_holds_an_fp32_copy(larger_model):
    """Built straight in bf16 by transformers (its config records the dtype it loaded in;
    loading in fp32 and casting leaves float32 there), and the memory the load allocates
    stays near the bf16 weights, far from an fp32 copy plus the bf16 one. Measured as
    anonymous memory: the checkpoint's pages are memory-mapped and read either way. On a CPU
    the old load-then-cast did not hold an fp32 copy either (the fp32 weights stayed mapped
    file pages, 173 MiB allocated against 174 now); on a GPU it did, since moving the model to
    the device materializes the fp32 weights there: benchmarks/gpu_check.py measures that."""
    import subprocess
    import sys

    from tests.conftest import REPO, plain_env

    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, larger_model],
        cwd=REPO, env=plain_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    params, allocated, dtypes, loaded_in = probe.stdout.split()
    params, allocated = int(params), int(allocated)
    bf16_size, fp32_size = params * 2, params * 4
    assert dtypes == "torch.bfloat16" and loaded_in == "torch.bfloat16"
    assert allocated < fp32_size, (allocated, fp32_size)
    assert allocated < 0.6 * (fp32_size + bf16_size)
    print(
        f"bf16 load of {params} parameters allocated {allocated / 2**20:.0f} MiB "
        f"(bf16 weights {bf16_size / 2**20:.0f} MiB, fp32 {fp32_size / 2**20:.0f} MiB)"
    )


def test_the_replica_reports_its_peak_memory(model_path):
    replica = make_replica(model_path, device="cpu")
    peak = replica.peak_memory()
    assert peak["peak_memory_of"] == "rss" and peak["peak_memory_bytes"] > 50 * 2**20
