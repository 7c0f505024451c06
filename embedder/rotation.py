"""An orthogonal rotation into a corpus's principal axes, for models not trained for
Matryoshka truncation.

Truncating such a model keeps its first dims, which carry no more information than any others.
Rotated first into the principal axes of the corpus's own vectors (uncentred, so the rotation
is orthogonal and full-dim dot products do not change), the first dims are the most
informative ones, and truncation keeps much more. The rotation is fitted once per OUTPUT; a
column narrower than the model's native dim is cut from the vector rotated by the rotation's
first columns, a full-width column is not rotated at all (embedder.outputs).
"""

from __future__ import annotations

import io

import numpy as np

# The rotation's product is computed on integers held in float64 (see `rotate`): the bits
# kept of a row and of an axis add up to SUM_BITS - ceil(log2(native dim)), so that no sum of
# `native` products of them exceeds 2**52 in magnitude: a double holds each one exactly.
SUM_BITS = 52


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
    """`vectors` (rows x native) times `rotation` (native x k: the whole rotation, or its
    first k columns for a k-dim output), float32; a row's result depends on that row alone.

    A BLAS product whose result does not depend on the batch: each row is scaled by a power of
    two (from its largest component) and rounded to an integer of at most a bits, each column
    of `rotation` likewise to b bits, with a + b + ceil(log2(native)) = SUM_BITS. Every
    product of two such integers and every partial sum of up to `native` of them is then an
    integer of magnitude at most 2**52, which float64 holds exactly: each multiplication and
    addition in the float64 product (dgemm) is exact, so the result is the exact sum whatever
    order, blocking, kernel, thread count or CPU the BLAS uses, and whatever rows share the
    call. It is then scaled back (by powers of two, exact) and rounded once to float32.

    A float32 BLAS product is not enough, even in fixed-shape calls: with OpenBLAS's Haswell
    kernels a row's bits depend on its position in the call. Rounding the inputs costs up to
    about 2e-7 on a component of a unit vector, about two float32 epsilons
    (tests/test_rotation_exact.py). A column's result does not depend on the other columns
    either: rotating by the first 64 columns gives bitwise the first 64 values of rotating by
    256.
    """
    rows = np.asarray(vectors)
    axes = np.asarray(rotation)
    if rows.ndim != 2 or axes.ndim != 2 or rows.shape[1] != axes.shape[0]:
        raise ValueError(f"cannot rotate {rows.shape} by {axes.shape}")
    native = axes.shape[0]
    bits = SUM_BITS - max(native - 1, 0).bit_length()  # SUM_BITS - ceil(log2(native))
    bits_rows, bits_axes = (bits + 1) // 2, bits // 2
    row_ints, row_scale = to_integers(rows, bits_rows, axis=1)
    axis_ints, axis_scale = to_integers(axes, bits_axes, axis=0)
    exact = row_ints @ axis_ints
    exact *= row_scale[:, None]
    exact *= axis_scale[None, :]
    return exact.astype(np.float32)


def to_integers(matrix: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """`matrix` as integers in float64 of at most `bits` bits (sign apart) along `axis` (a row
    each for axis=1, a column each for axis=0), each line scaled by a power of two from its
    largest absolute value, rounded to nearest; and the power of two that undoes the scaling
    per line. Largest values and powers of two are exact: a line's integers depend on that
    line alone."""
    largest = np.maximum(np.max(matrix, axis=axis), -np.min(matrix, axis=axis)).astype(np.float64)
    # 2**exponent > largest, so |value| * 2**(bits - exponent) < 2**bits.
    _, exponent = np.frexp(largest)
    exponent = np.where(np.isfinite(largest), exponent, 0)
    scale = np.ldexp(1.0, bits - exponent)
    ints = np.multiply(matrix, np.expand_dims(scale, axis), dtype=np.float64)
    np.rint(ints, out=ints)
    return ints, np.ldexp(1.0, exponent - bits)


def to_bytes(rotation: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rotation, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
