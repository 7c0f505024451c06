"""Truncate, re-normalize, and refuse vectors that must never be written."""

from __future__ import annotations

import numpy as np

# Below this norm a vector carries no direction: normalizing it would write noise or NaN.
MIN_NORM = 1e-6


class EmbeddingError(RuntimeError):
    """A batch produced vectors that must not be written (NaN, inf, or all zero)."""


def truncate_and_normalize(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Keep the first `dim` components and scale each row back to unit length, as float32.

    Matryoshka truncation must re-normalize: a sliced unit vector is shorter than 1 and
    dot-product search over it silently ranks by length. Raises EmbeddingError rather than
    return a NaN or zero vector.
    """
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D matrix of vectors, got shape {matrix.shape}")
    if not 0 < dim <= matrix.shape[1]:
        raise ValueError(f"dim must be in 1..{matrix.shape[1]}, got {dim}")
    # Norms in float64: float32 rounding on 4096-wide vectors is visible at the 1e-7 level.
    head = matrix[:, :dim].astype(np.float64)
    check_finite_nonzero(head)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return (head / norms).astype(np.float32)


def bad_rows(matrix: np.ndarray) -> np.ndarray:
    """Positions of rows that are NaN/inf or have (near) zero length."""
    not_finite, zero = row_problems(matrix)
    return np.union1d(not_finite, zero)


def row_problems(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows with NaN/inf, finite rows of (near) zero length)."""
    finite = np.isfinite(matrix).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    return np.flatnonzero(~finite), np.flatnonzero(finite & (norms < MIN_NORM))


def check_finite_nonzero(matrix: np.ndarray) -> None:
    """Raise EmbeddingError naming the rows that are NaN/inf or have (near) zero length."""
    not_finite, zero = row_problems(matrix)
    problems = []
    if not_finite.size:
        problems.append(f"{not_finite.size} row(s) with NaN/inf (first: row {not_finite[0]})")
    if zero.size:
        problems.append(f"{zero.size} all-zero row(s) (first: row {zero[0]})")
    if problems:
        raise EmbeddingError(
            "refusing to write this batch: " + "; ".join(problems) + f" of {len(matrix)}"
        )
