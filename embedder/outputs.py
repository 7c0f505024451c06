"""From one full-width vector per text to every output column: several Matryoshka widths
(each re-normalized) and their quantized forms, all from one forward pass.

Quantization always comes after truncation and re-normalization. int8/uint8 use ranges
calibrated once per run (per width, one range for all components: see calibration_ranges) and
passed in, so every batch and every replica of one corpus shares one scale;
sentence-transformers on its own would take the ranges from each batch.

With --rotate pca, a column narrower than the model's native dim is cut from the vector rotated
into the corpus's principal axes; a full-width column is the replica's vector unrotated (an
orthogonal rotation changes no full-width dot product). Documents, reused rows and queries all
go through `base_vectors` then `output_vectors`, so they get the same floats.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from embedder.importing import import_sentence_transformers
from embedder.rotation import rotate
from embedder.vectors import truncate_and_normalize

# float32 is always written; any other precision adds its codes beside the floats.
Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
QUANTIZED = get_args(Precision)[1:]
CALIBRATED = ("int8", "uint8")


def vector_column(dim: int, several: bool) -> str:
    """`embedding` for a single width, `embedding_<dim>` when several are written."""
    return f"embedding_{dim}" if several else "embedding"


def quantized_column(dim: int, several: bool, precision: str) -> str:
    return f"{vector_column(dim, several)}_{precision}"


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None) -> np.ndarray:
    """sentence-transformers' own quantization, with fixed ranges for int8/uint8."""
    import_sentence_transformers()
    from sentence_transformers.util.quantization import quantize_embeddings

    if precision in CALIBRATED and ranges is None:
        raise ValueError(f"{precision} needs calibrated ranges; none were given")
    return quantize_embeddings(vectors, precision=precision, ranges=ranges)


def calibration_ranges(
    vectors: np.ndarray, dims: list[int], *, rotation: np.ndarray | None = None
) -> dict[str, list[list[float]]]:
    """Per width: [minimums, maximums] for sentence-transformers' int8/uint8 quantization,
    one range shared by every component: the smallest and largest value of the sample's
    vectors as `output_vectors` writes them at that width (`vectors` and `rotation` as there).

    One range, not one per component as sentence-transformers calibrates by default: codes
    with a step of their own per component weight each component by 1/step^2 in an integer dot
    product, so components that vary little count as much as those that carry the vector.
    Measured with all-miniLM-l6 on the built-in code-search set (int8 dot-product search,
    share of full-dim float32 nDCG@10 kept): 384 dims 0.948 per component, 1.002 shared; 96
    dims 0.794 against 0.882; after --rotate pca, whose components differ in scale by design,
    0.669 against 1.002 at 384 dims.
    """
    ranges = {}
    for dim, truncated in float_columns(vectors, dims, rotation).items():
        low, high = float(truncated.min()), float(truncated.max())
        ranges[str(dim)] = [[low] * dim, [high] * dim]
    return ranges


def base_vectors(
    full: np.ndarray,
    rotation: np.ndarray | None,
    widest: int,
    *,
    rotate_full_width: bool = True,
) -> np.ndarray:
    """The vector every output column of a row is derived from, and what a later run reuses
    for an unchanged row (its widest written column). Without a rotation, the replica's
    vector as it is (the replica already truncated it to the widest dim and re-normalized it).

    With one (`full` is then the replica's native-dim vector): when the widest dim is narrower
    than the native dim, `full` rotated by the rotation's first `widest` columns (all a
    truncation to `widest` keeps of a full rotation), re-normalized. When it is the native dim,
    with `rotate_full_width=False`, `full` as it is: an orthogonal rotation changes no
    full-width dot product, so the full-width column needs none, and `output_vectors`, given
    the same `rotation`, rotates it for the narrower columns only. The default
    (`rotate_full_width=True`) is the earlier layout, every column rotated, kept for callers
    that do not pass the rotation on to `output_vectors` (and for OUTPUTs written that way:
    jobs.pipeline.calibration.rotates_full_width).
    """
    if rotation is None:
        return full
    if widest == rotation.shape[0] and not rotate_full_width:
        return full
    return truncate_and_normalize(rotate(full, rotation[:, :widest]), widest)


def float_columns(
    base: np.ndarray, dims: list[int], rotation: np.ndarray | None = None
) -> dict[int, np.ndarray]:
    """Width -> the float32 unit vectors written at that width, in the order of `dims`: the
    base truncated and re-normalized. With a rotation and a native-width base (base_vectors'
    `rotate_full_width=False`), a width narrower than native is cut from the base rotated by
    the rotation's first columns instead: one product, as wide as the widest of those widths,
    serves them all."""
    native = base.shape[1]
    narrower = [dim for dim in dims if dim < native]
    rotated = None
    if rotation is not None and rotation.shape[0] == native and narrower:
        rotated = rotate(base, rotation[:, : max(narrower)])
    return {
        dim: truncate_and_normalize(rotated if rotated is not None and dim < native else base, dim)
        for dim in dims
    }


def output_columns(dims: list[int], precision: str) -> list[str]:
    """The vector columns a run writes, widest float first, each followed by its quantized
    form."""
    several = len(dims) > 1
    names = []
    for dim in dims:
        names.append(vector_column(dim, several))
        if precision != "float32":
            names.append(quantized_column(dim, several, precision))
    return names


def output_vectors(
    base: np.ndarray,
    dims: list[int],
    precision: str,
    ranges: dict[str, Any] | None,
    *,
    rotation: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Column name -> matrix for every width and, unless float32, its quantized form.
    `rotation`: only with a base from base_vectors(..., rotate_full_width=False), whose
    narrower columns it rotates (float_columns)."""
    several = len(dims) > 1
    columns: dict[str, np.ndarray] = {}
    for dim, vectors in float_columns(base, dims, rotation).items():
        columns[vector_column(dim, several)] = vectors
        if precision != "float32":
            dim_ranges = np.asarray(ranges[str(dim)]) if precision in CALIBRATED else None
            columns[quantized_column(dim, several, precision)] = quantize(
                vectors, precision, dim_ranges
            )
    return columns
