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
    real_encode = replica.model.encode

    def encode_with_small_memory(inputs, batch_size, **kwargs):
        if len(inputs) * max(replica.token_lengths(inputs)) > 1024:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated cap)")
        return real_encode(inputs, batch_size=batch_size, **kwargs)

    replica.model.encode = encode_with_small_memory
    ours = replica.embed(texts)
    assert replica.max_batch_tokens == 1024 and replica.stats.oom_retries >= 3
    reference = reference_vectors(bare_model, texts, 384)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999
    retries = replica.stats.oom_retries
    replica.embed(texts)
    assert replica.stats.oom_retries == retries  # the working budget was kept


def test_out_of_memory_on_a_single_text_is_raised(model_path, texts):
    replica = make_replica(model_path, device="cpu")

    def always_out_of_memory(inputs, batch_size, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    replica.model.encode = always_out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        replica.embed(texts[:2])
