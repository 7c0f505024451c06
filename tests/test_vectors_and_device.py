"""Truncation, re-normalization, the NaN/zero guard, and device/precision choice."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.device import DeviceError, choose_dtype, resolve_device
from embedder.vectors import EmbeddingError, truncate_and_normalize


def test_truncate_then_renormalize_to_unit_length():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(5, 384))
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    out = truncate_and_normalize(full, 128)
    assert out.dtype == np.float32 and out.shape == (5, 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_rows_fail_the_batch(bad):
    matrix = np.ones((4, 8))
    matrix[2, 1] = bad
    with pytest.raises(EmbeddingError, match="1 row\\(s\\) with NaN/inf \\(first: row 2\\)"):
        truncate_and_normalize(matrix, 4)


def test_zero_prefix_fails_the_batch():
    matrix = np.ones((3, 8))
    matrix[1, :4] = 0.0  # non-zero overall, but all zero in the kept prefix
    with pytest.raises(EmbeddingError, match="all-zero row"):
        truncate_and_normalize(matrix, 4)


def test_dim_out_of_range_is_named():
    with pytest.raises(ValueError, match="dim must be in 1..8, got 9"):
        truncate_and_normalize(np.ones((1, 8)), 9)


def test_device_cpu_when_asked_or_when_no_gpu_was_assigned():
    assert resolve_device("cpu", gpus_assigned=True, cuda_available=True) == "cpu"
    assert resolve_device("auto", gpus_assigned=False, cuda_available=True) == "cpu"
    assert resolve_device("auto", gpus_assigned=None, cuda_available=False) == "cpu"
    assert resolve_device("auto", gpus_assigned=None, cuda_available=True) == "cuda"


def test_assigned_gpu_without_cuda_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(DeviceError, match="EMBED_DEVICE=cpu"):
        resolve_device("auto", gpus_assigned=True, cuda_available=False)
    with pytest.raises(DeviceError):
        resolve_device("cuda", gpus_assigned=None, cuda_available=False)


def test_precision_follows_the_hardware():
    assert choose_dtype("auto", "cpu", None) == "fp32"
    assert choose_dtype("auto", "cuda", (7, 5), "bf16") == "fp16"  # T4: no bf16
    assert choose_dtype("auto", "cuda", (8, 0), "bf16") == "bf16"  # A100, a bf16 model
    assert choose_dtype("auto", "cuda", (9, 0), "bf16") == "bf16"  # H100
    assert choose_dtype("auto", "cuda", (9, 0), "fp32") == "fp16"  # an fp32 model
    assert choose_dtype("bf16", "cpu", None) == "bf16"
    with pytest.raises(DeviceError, match="compute capability 8.0"):
        choose_dtype("bf16", "cuda", (7, 5))
