"""The attention a replica loads: flash attention 2 with unpadded inputs only where it applies,
SDPA on padded batches elsewhere, and a refused attention falling back instead of crashing."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.attention import (
    FLASH,
    FLASH_KERNEL_REPO,
    SDPA,
    Attention,
    choose_attention,
    flash_attention_available,
    load_with_attention,
    model_kwargs,
    switch_unpadding,
)
from tests.conftest import real_texts

T4, A100, H100 = (7, 5), (8, 0), (9, 0)


def test_a_t4_runs_sdpa_on_padded_batches():
    chosen = choose_attention("cuda", T4, False, "flash_attn", dtype="fp16")
    assert (chosen.implementation, chosen.unpadded) == (SDPA, False)
    assert chosen.describe() == "sdpa, padded (compute capability 7.5 < 8.0)"


@pytest.mark.parametrize("capability,dtype", [(A100, "fp16"), (A100, "bf16"), (H100, "bf16")])
def test_an_a100_or_h100_in_half_precision_runs_flash_attention_unpadded(capability, dtype):
    chosen = choose_attention("cuda", capability, False, "flash_attn", dtype=dtype)
    assert (chosen.implementation, chosen.unpadded) == (FLASH, True)
    assert chosen.describe() == "flash_attention_2, unpadded"
    assert "flash_attn" in chosen.reason  # the log says where flash attention came from


def test_the_cpu_runs_sdpa():
    chosen = choose_attention("cpu", None, False, True, dtype="fp32")
    assert (chosen.implementation, chosen.unpadded) == (SDPA, False)
    assert "CUDA" in chosen.reason


def test_fp32_on_an_a100_keeps_sdpa():
    chosen = choose_attention("cuda", A100, False, True, dtype="fp32")
    assert (chosen.implementation, chosen.unpadded) == (SDPA, False)
    assert "fp32" in chosen.reason


def test_fixed_shape_batches_on_an_h100_stay_padded():
    chosen = choose_attention("cuda", H100, True, True, dtype="fp16")
    assert (chosen.implementation, chosen.unpadded) == (SDPA, False)
    assert "fixed-shape" in chosen.reason


def test_an_h100_without_flash_attention_installed_runs_sdpa():
    chosen = choose_attention("cuda", H100, False, "", dtype="bf16")
    assert (chosen.implementation, chosen.unpadded) == (SDPA, False)
    assert "no flash attention 2" in chosen.reason


def test_a_run_can_ask_for_sdpa_and_asking_for_flash_never_overrides_a_hard_rule():
    assert choose_attention("cuda", H100, False, True, requested="sdpa").implementation == SDPA
    on_t4 = choose_attention("cuda", T4, False, True, requested=FLASH)
    assert on_t4.implementation == SDPA
    assert on_t4.reason.startswith("flash_attention_2 was asked for, but compute capability 7.5")
    assert choose_attention("cuda", H100, False, True, requested=FLASH).unpadded
    with pytest.raises(ValueError, match="attention must be one of"):
        choose_attention("cuda", H100, False, True, requested="flash")


def test_other_backends_keep_their_own_attention():
    chosen = choose_attention("cuda", H100, False, True, backend="onnx")
    assert (chosen.implementation, chosen.unpadded) == ("onnx", False)
    assert model_kwargs(chosen) == {}


def test_model_kwargs_name_the_attention_to_load():
    assert model_kwargs(Attention(FLASH, True, "")) == {"attn_implementation": FLASH}
    assert model_kwargs(Attention(SDPA, False, "")) == {"attn_implementation": SDPA}


def test_flash_attention_availability_is_answered_without_raising():
    import torch

    found = flash_attention_available()
    assert found in ("", "flash_attn", FLASH_KERNEL_REPO)
    if not torch.cuda.is_available():  # the CPU build of torch has neither flash_attn nor a kernel
        assert found == ""


@pytest.fixture(scope="module")
def loader(model_path):
    from sentence_transformers import SentenceTransformer

    def load(extra_model_kwargs: dict):
        return SentenceTransformer(
            model_path, device="cpu", local_files_only=True, model_kwargs=extra_model_kwargs
        )

    return load


@pytest.fixture(scope="module")
def sdpa_vectors(loader):
    return loader({"attn_implementation": SDPA}).encode(real_texts(40), convert_to_numpy=True)


def test_flash_attention_refused_on_the_cpu_falls_back_to_sdpa_with_equal_vectors(
    loader, sdpa_vectors
):
    # transformers refuses flash_attention_2 without flash_attn (and, on the CPU, without a GPU):
    # the run goes on with sdpa and says why.
    asked = Attention(FLASH, True, "asked for in a test")
    model, loaded = load_with_attention(loader, asked, check=lambda m: m.encode(["probe"]))
    assert (loaded.implementation, loaded.unpadded) == (SDPA, False)
    assert loaded.reason.startswith("flash_attention_2 failed: ImportError")
    assert loaded.describe().startswith("sdpa, padded (flash_attention_2 failed")
    np.testing.assert_array_equal(model.encode(real_texts(40), convert_to_numpy=True), sdpa_vectors)


def test_unpadding_asked_of_an_sdpa_model_is_reported_off(loader):
    model, loaded = load_with_attention(loader, Attention(SDPA, True, "a mistaken ask"))
    assert loaded.unpadded is False
    assert "cannot pack" in loaded.reason
    assert model[0].unpad_inputs is True and model[0].can_flatten_inputs is False
    assert switch_unpadding(model, False) is False
    assert model[0].unpad_inputs is False


def test_a_model_refusing_sdpa_loads_with_transformers_default(loader, sdpa_vectors):
    def no_sdpa(extra_model_kwargs: dict):
        # What transformers raises for an architecture without sdpa support.
        if extra_model_kwargs.get("attn_implementation") == SDPA:
            raise ValueError("BertModel does not support an attention implementation through sdpa")
        return loader(extra_model_kwargs)

    model, loaded = load_with_attention(no_sdpa, Attention(SDPA, False, "compute capability"))
    # The default transformers picks for BERT is sdpa itself: the config says what was loaded.
    assert loaded.implementation == SDPA
    assert loaded.reason.startswith("sdpa failed: ValueError: BertModel does not support")
    np.testing.assert_array_equal(model.encode(real_texts(40), convert_to_numpy=True), sdpa_vectors)


def test_a_model_that_cannot_load_at_all_still_raises(tmp_path):
    from sentence_transformers import SentenceTransformer

    asked = []

    def load(extra_model_kwargs: dict):
        asked.append(extra_model_kwargs)
        return SentenceTransformer(
            str(tmp_path), device="cpu", local_files_only=True, model_kwargs=extra_model_kwargs
        )

    with pytest.raises(ValueError, match="Unrecognized model"):  # an empty folder
        load_with_attention(load, Attention(FLASH, True, ""))
    # Flash attention, then sdpa, then transformers' default: the last failure is the one raised.
    assert asked == [{"attn_implementation": FLASH}, {"attn_implementation": SDPA}, {}]
