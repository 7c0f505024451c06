"""Token-budget micro-batches: never over budget, every row once, vectors in input order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder import Replica, ReplicaSpec
from embedder.batching import (
    padded_length,
    padding_quantum,
    plan_fixed_shape_batches,
    plan_micro_batches,
)
from embedder.faults import turn_one_batch_to_nan
from tests.conftest import real_texts, reference_vectors


def test_micro_batches_never_exceed_the_budget_and_cover_every_row_once():
    rng = np.random.default_rng(7)
    lengths = [int(n) for n in rng.integers(1, 257, size=1000)] + list(range(1, 257))
    for budget in (256, 300, 1000, 4096, 8192):
        batches = plan_micro_batches(lengths, budget)
        assert all(b.longest * len(b.rows) <= budget for b in batches)
        assert all(b.longest == max(lengths[i] for i in b.rows) for b in batches)
        rows = [i for b in batches for i in b.rows]
        assert sorted(rows) == list(range(len(lengths)))


def test_sorting_by_length_cuts_padding():
    lengths = [1, 256] * 100
    batches = plan_micro_batches(lengths, 4096)
    padded = sum(b.padded_tokens for b in batches)
    real = sum(lengths)
    assert padded <= 1.15 * real  # fixed batches of 16 mixed texts would pad to 2x real


def test_row_cap_and_bad_budgets():
    assert all(len(b.rows) <= 3 for b in plan_micro_batches([1] * 10, 1000, max_rows=3))
    with pytest.raises(ValueError, match="does not fit"):
        plan_micro_batches([10, 300], 256)
    with pytest.raises(ValueError, match="positive integer"):
        plan_micro_batches([1], 0)


def test_padded_length_depends_on_the_length_alone_and_fits_the_model():
    for max_length in (256, 512, 8192, 510):
        widths = {n: padded_length(n, max_length) for n in range(1, max_length + 1)}
        assert all(n <= w <= max_length for n, w in widths.items())
        assert all(max_length % padding_quantum(n, max_length) == 0 for n in widths)
        # The tokenizer pads the longest row of a batch up to a multiple of the width's
        # quantum: that must land on the width itself for every length that maps to it.
        for n, w in widths.items():
            quantum = padding_quantum(w, max_length)
            assert -(-n // quantum) * quantum == w
    assert padded_length(120, 256) == 128 and padded_length(129, 256) == 160
    assert padded_length(300, 512) == 320 and padded_length(1, 256) == 16


def test_fixed_shape_batches_have_one_shape_per_width_whatever_the_block():
    rng = np.random.default_rng(3)
    big = [int(n) for n in rng.integers(1, 257, size=700)]
    small = big[:9] + [17, 17, 200]
    shapes = {}
    for lengths in (big, small, big[::-1]):
        batches = plan_fixed_shape_batches(lengths, 1024, 256, max_rows=256)
        assert sorted(i for b in batches for i in b.rows) == list(range(len(lengths)))
        for b in batches:
            assert {padded_length(lengths[i], 256) for i in b.rows} == {b.longest}
            assert b.encoded_rows == b.fill_to and b.padded_tokens <= 1024
            assert shapes.setdefault(b.longest, b.fill_to) == b.fill_to
    assert shapes[16] == 64 and shapes[256] == 4
    assert plan_fixed_shape_batches([5] * 10, 1024, 256, max_rows=3)[0].fill_to == 3


@pytest.fixture(scope="module")
def mixed_length_texts():
    """From one line to far past the model's 256 tokens, in no particular order."""
    paragraphs = real_texts(120)
    return [p if i % 3 else p.splitlines()[0] for i, p in enumerate(paragraphs)] + ["x " * 900]


def make_replica(model_path, **extra) -> Replica:
    spec = ReplicaSpec(
        source=model_path,
        source_is_local=True,
        dim=384,
        device="cpu",
        **extra,
    )
    return Replica(spec)


def test_replica_returns_vectors_in_input_order_equal_to_unsorted_encoding(
    model_path, bare_model, mixed_length_texts
):
    replica = make_replica(model_path, max_batch_tokens=1024)
    seen_batches = []

    def watch(module, args):
        seen_batches.append(args[0]["input_ids"].numel())  # rows x padded width

    ours = replica.embed(mixed_length_texts)
    reference = reference_vectors(bare_model, mixed_length_texts, 384)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999
    assert replica.stats.batches > 1
    assert replica.stats.padded_tokens <= replica.stats.batches * 1024
    assert replica.stats.truncated_texts >= 1  # the "x " * 900 text, at least

    replica.model.register_forward_pre_hook(watch)
    replica.embed(mixed_length_texts[:40])
    assert seen_batches and max(seen_batches) <= 1024


def test_fixed_shape_batches_reach_the_model_in_the_planned_shapes(model_path, mixed_length_texts):
    """The tokenizer's own padding must give each batch exactly its planned width."""
    replica = make_replica(model_path, fixed_shape_batches=True)
    assert replica.max_batch_tokens == 1024  # the fixed-shape default on CPU
    seen = []
    replica.model.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0]["input_ids"].shape))
    )
    lengths = replica.token_lengths(mixed_length_texts)
    planned = plan_fixed_shape_batches(lengths, 1024, replica.max_seq_length, 256)
    replica.embed(mixed_length_texts)
    assert seen == [(b.fill_to, b.longest) for b in planned]
    assert replica.stats.filler_rows == sum(b.filler_rows for b in planned) > 0


def test_a_fake_out_of_memory_on_the_first_try_splits_the_batch_and_finishes(
    model_path, bare_model, mixed_length_texts
):
    replica = make_replica(model_path, max_batch_tokens=8192)
    calls = {"n": 0}

    def out_of_memory_once(module, args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    replica.model.register_forward_pre_hook(out_of_memory_once)
    ours = replica.embed(mixed_length_texts)
    assert replica.stats.oom_retries == 1 and replica.max_batch_tokens == 4096
    reference = reference_vectors(bare_model, mixed_length_texts, 384)
    assert ours.shape[0] == len(mixed_length_texts)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999


def test_nan_under_reduced_precision_is_redone_in_fp32_and_counted(
    model_path, bare_model, mixed_length_texts
):
    """A forward hook on the real bf16 model turns one micro-batch's output to NaN once."""
    replica = make_replica(model_path, dtype="bf16", max_batch_tokens=2048)
    fired = turn_one_batch_to_nan(replica)
    texts = mixed_length_texts[:30]
    ours = replica.embed(texts)
    assert fired["done"] and replica.stats.nan_redone_rows > 0
    assert replica.fp32_model is not None
    assert np.isfinite(ours).all()
    reference = reference_vectors(bare_model, texts, 384)
    assert np.sum(ours * reference, axis=1).min() >= 0.99


def test_a_nan_batch_is_redone_in_fp32_in_the_same_fixed_shape(model_path, mixed_length_texts):
    """The fp32 redo of a fixed-shape batch encodes the whole batch again, filler included, so
    the redone rows are bitwise what an fp32 replica gives them in any composition."""
    texts = mixed_length_texts[:40]
    replica = make_replica(model_path, dtype="bf16", fixed_shape_batches=True)
    fired = turn_one_batch_to_nan(replica)
    ours = replica.embed(texts)
    first = plan_fixed_shape_batches(replica.token_lengths(texts), 1024, 256, 256)[0]
    assert fired["done"] and replica.stats.nan_redone_rows == len(first.rows)  # filler not counted
    in_fp32 = make_replica(model_path, fixed_shape_batches=True)
    redone = list(first.rows)
    np.testing.assert_array_equal(
        ours[redone], in_fp32.embed([texts[i] for i in redone][::-1])[::-1]
    )
