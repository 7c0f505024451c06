"""An orthogonal rotation into a corpus's principal axes, for models not trained for
Matryoshka truncation.

Truncating such a model keeps its first dims, which carry no more information than any others.
Rotated first into the principal axes of the corpus's own vectors (uncentred, so the rotation
is orthogonal and full-dim dot products do not change), the first dims are the most
informative ones, and truncation keeps much more. The rotation is fitted once per OUTPUT and
applied to every document and every query.
"""

from __future__ import annotations

import io

import numpy as np


def pca_rotation(vectors: np.ndarray) -> np.ndarray:
    """The principal axes of `vectors` (uncentred) as the columns of an orthogonal matrix,
    most variance first. Each axis's largest component is made positive, so the same sample
    always gives the same matrix."""
    sample = np.asarray(vectors, dtype=np.float64)
    second_moment = sample.T @ sample / max(len(sample), 1)
    eigenvalues, eigenvectors = np.linalg.eigh(second_moment)
    axes = eigenvectors[:, np.argsort(eigenvalues, kind="stable")[::-1]]
    largest = np.argmax(np.abs(axes), axis=0)
    signs = np.sign(axes[largest, np.arange(axes.shape[1])])
    return (axes * signs).astype(np.float32)


def rotate(vectors: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """`vectors` in the rotated axes, float32, each row computed on its own.

    Not a BLAS matrix product: its blocking depends on the batch's shape and thread count, and
    the rotated coordinates near zero (beyond the sample's rank, where large terms cancel) then
    differ in the last bits with what a text was batched with. einsum without optimization sums
    each output in one fixed order, so a text's rotated vector is bitwise the same in any
    block and replica (tested). It costs 55 ms per 2048 rows at 384 dims on one core, about
    15 s at 4096 dims: small next to encoding on a CPU, noticeable next to a fast GPU.
    """
    rows = np.asarray(vectors, dtype=np.float64)
    axes = np.asarray(rotation, dtype=np.float64)
    return np.einsum("ij,jk->ik", rows, axes, optimize=False).astype(np.float32)


def to_bytes(rotation: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rotation, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
