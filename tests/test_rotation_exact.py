"""The rotation product (embedder.rotation.rotate) and what is rotated (embedder.outputs),
without a model: a row's rotated vector is bitwise the same whatever rows share its call,
however many BLAS threads compute it, because every operation of the float64 product is exact.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from embedder.outputs import base_vectors, calibration_ranges, float_columns, output_vectors
from embedder.rotation import SUM_BITS, pca_rotation, rotate, to_integers
from embedder.vectors import truncate_and_normalize


def unit_rows(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).normal(size=(rows, dim))
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


@cache
def orthogonal(dim: int, seed: int = 1) -> np.ndarray:
    """A rotation as pca_rotation gives one: float32, orthogonal, columns of uneven spread."""
    sample = unit_rows(3 * dim, dim, seed) * np.linspace(3.0, 0.1, dim, dtype=np.float32)
    rotation = pca_rotation(sample)
    rotation.flags.writeable = False  # shared by the tests
    return rotation


@pytest.fixture(scope="module")
def wide():
    """5,000 rows of a 2048-dim model and the rotation's first 256 columns."""
    return unit_rows(5000, 2048), orthogonal(2048)[:, :256]


def test_a_rows_rotated_vector_is_bitwise_the_same_in_any_call(wide):
    from threadpoolctl import threadpool_limits

    rows, axes = wide
    together = rotate(rows, axes)
    assert together.dtype == np.float32 and together.shape == (5000, 256)
    rng = np.random.default_rng(7)
    shuffle = rng.permutation(len(rows))
    picked = rng.choice(len(rows), 40, replace=False)
    sizes = [1, 3, 7, 16, 37, 63, 64, 65, 127, 129, 500]
    chunks, start, i = [], 0, 0
    while start < len(rows):
        size = sizes[i % len(sizes)]
        chunks.append(rotate(rows[start : start + size], axes))
        start, i = start + size, i + 1
    # A picked row among random others, at every position of a 9-row call.
    among = np.stack(
        [
            rotate(np.insert(unit_rows(8, 2048, seed=100 + int(p)), p % 9, rows[p], axis=0), axes)[
                p % 9
            ]
            for p in picked
        ]
    )
    compositions = {
        "one by one": (np.concatenate([rotate(rows[[p]], axes) for p in picked]), picked),
        "odd-sized calls": (np.concatenate(chunks), slice(None)),
        "shuffled": (rotate(rows[shuffle], axes)[np.argsort(shuffle)], slice(None)),
        "reversed": (rotate(rows[::-1], axes)[::-1], slice(None)),
        "a subset": (rotate(rows[picked], axes), picked),
        "among other rows": (among, picked),
        "Fortran order, float64": (rotate(np.asfortranarray(rows, np.float64), axes), slice(None)),
    }
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            compositions[f"{threads} BLAS thread(s)"] = (rotate(rows, axes), slice(None))
    for name, (got, which) in compositions.items():
        np.testing.assert_array_equal(got, together[which], err_msg=name)


def test_every_operation_of_the_product_is_exact(wide):
    """The float64 product of the integers equals their exact integer product (int64, no
    BLAS): nothing was rounded before the one rounding to float32."""
    rows, axes = wide
    native = axes.shape[0]
    bits = SUM_BITS - (native - 1).bit_length()
    row_ints, _ = to_integers(rows[:64], (bits + 1) // 2, axis=1)
    axis_ints, _ = to_integers(axes, bits // 2, axis=0)
    assert np.abs(row_ints).max() <= 2 ** ((bits + 1) // 2)
    assert np.abs(axis_ints).max() <= 2 ** (bits // 2)
    assert native * 2 ** ((bits + 1) // 2) * 2 ** (bits // 2) <= 2**52  # every partial sum
    exact = row_ints.astype(np.int64) @ axis_ints.astype(np.int64)
    np.testing.assert_array_equal(row_ints @ axis_ints, exact.astype(np.float64))


@pytest.mark.parametrize("native, width", [(384, 64), (2048, 256)])
def test_the_rotated_vector_is_close_to_the_float64_product(native, width):
    rows, rotation = unit_rows(2000, native, seed=3), orthogonal(native)
    got = rotate(rows, rotation[:, :width])
    want = rows.astype(np.float64) @ rotation[:, :width].astype(np.float64)
    assert np.abs(got - want).max() < 4e-7  # a few float32 epsilons of a unit vector
    # A row scaled by a power of two rotates to the same vector scaled: nothing depends on
    # the rows' length.
    np.testing.assert_array_equal(
        rotate(rows * 2.0**-20, rotation), rotate(rows, rotation) * 2.0**-20
    )


def test_a_columns_values_do_not_depend_on_the_other_columns():
    rows, rotation = unit_rows(300, 384, seed=4), orthogonal(384)
    whole = rotate(rows, rotation)
    for width in (1, 64, 200):
        np.testing.assert_array_equal(rotate(rows, rotation[:, :width]), whole[:, :width])
    np.testing.assert_array_equal(rotate(rows, rotation[:, 100:164]), whole[:, 100:164])


def test_a_bad_row_spoils_no_other():
    rows, rotation = unit_rows(20, 384, seed=5), orthogonal(384)[:, :64]
    clean = rotate(rows, rotation)
    bad = rows.copy()
    bad[3], bad[7], bad[11, 5] = 0.0, np.nan, np.inf
    got = rotate(bad, rotation)
    assert (got[3] == 0).all() and np.isnan(got[7]).all() and not np.isfinite(got[11]).all()
    keep = np.setdiff1d(np.arange(20), [3, 7, 11])
    np.testing.assert_array_equal(got[keep], clean[keep])
    assert rotate(rows[:0], rotation).shape == (0, 64)


def test_the_full_width_column_is_not_rotated_and_the_narrower_ones_are():
    """dims 384,128,64 on a 384-dim model: the 384 column is the replica's vector, the others
    are cut from it rotated by the rotation's first 128 columns. A row reused from the written
    384 column gives bitwise the same columns as the fresh row."""
    full, rotation = unit_rows(50, 384, seed=6), orthogonal(384)
    dims = [384, 128, 64]
    base = base_vectors(full, rotation, 384, rotate_full_width=False)
    assert base is full
    columns = output_vectors(base, dims, "float32", None, rotation=rotation)
    np.testing.assert_array_equal(columns["embedding_384"], truncate_and_normalize(full, 384))
    rotated = rotate(full, rotation[:, :128])
    for dim in (128, 64):
        np.testing.assert_array_equal(
            columns[f"embedding_{dim}"], truncate_and_normalize(rotated, dim)
        )
    # Rotated indeed, and the narrow columns keep what the full rotation keeps.
    assert np.abs(columns["embedding_64"] - truncate_and_normalize(full, 64)).max() > 0.1
    old = truncate_and_normalize(rotate(full, rotation), 384)
    np.testing.assert_allclose(columns["embedding_64"], truncate_and_normalize(old, 64), atol=1e-6)
    reused = output_vectors(columns["embedding_384"], dims, "float32", None, rotation=rotation)
    for name, matrix in columns.items():
        np.testing.assert_array_equal(reused[name], matrix, err_msg=name)


def test_a_truncated_widest_column_needs_only_the_rotations_first_columns():
    """dims 256,64 on a 2048-dim model: every column rotated, from a 2048 x 256 product, and
    bitwise what the whole 2048 x 2048 rotation truncated gives."""
    full, rotation = unit_rows(30, 2048, seed=8), orthogonal(2048)
    base = base_vectors(full, rotation, 256, rotate_full_width=False)
    np.testing.assert_array_equal(base, base_vectors(full, rotation, 256))  # either layout
    np.testing.assert_array_equal(base, truncate_and_normalize(rotate(full, rotation), 256))
    # The rotation changes nothing further: the base is already rotated.
    with_rotation = output_vectors(base, [256, 64], "float32", None, rotation=rotation)
    without = output_vectors(base, [256, 64], "float32", None)
    for name, matrix in without.items():
        np.testing.assert_array_equal(with_rotation[name], matrix, err_msg=name)


def test_ranges_are_taken_on_exactly_the_vectors_written():
    full, rotation = unit_rows(200, 384, seed=9), orthogonal(384)
    base = base_vectors(full, rotation, 384, rotate_full_width=False)
    ranges = calibration_ranges(base, [384, 64], rotation=rotation)
    written = float_columns(base, [384, 64], rotation)
    for dim, vectors in written.items():
        low, high = np.asarray(ranges[str(dim)])
        assert (low == vectors.min()).all() and (high == vectors.max()).all()
    columns = output_vectors(base, [384, 64], "int8", ranges, rotation=rotation)
    assert columns["embedding_64_int8"].min() == -128 and columns["embedding_64_int8"].max() == 127


def test_the_calibration_records_what_is_rotated_and_refuses_to_resume_the_earlier_layout(
    tmp_path,
):
    from jobs.pipeline.calibration import load_or_calibrate, load_rotation, rotates_full_width
    from jobs.pipeline.folders import CALIBRATION, OutputError, OutputFolder

    sample = unit_rows(500, 384, seed=10)
    output = OutputFolder(str(tmp_path / "out"))
    record = load_or_calibrate(
        output, lambda: ["x"] * 500, [384, 64], lambda _: sample, "int8", "pca"
    )
    assert record["rotated_dims"] == [64] and not rotates_full_width(record)
    rotation = load_rotation(output, record)
    base = base_vectors(sample, rotation, 384, rotate_full_width=False)
    assert record["ranges"] == calibration_ranges(base, [384, 64], rotation=rotation)
    # An OUTPUT calibrated before `rotated_dims` rotated its 384 column too: not resumed...
    earlier = {k: v for k, v in record.items() if k != "rotated_dims"}
    output.write_json(CALIBRATION, earlier)
    assert rotates_full_width(earlier) and not rotates_full_width({"rows": 3, "ranges": {}})
    with pytest.raises(OutputError, match="earlier layout"):
        load_or_calibrate(output, None, [384, 64], None, "int8", "pca")
    # ...unless every column it writes is narrower than the model: then both layouts agree.
    assert load_or_calibrate(output, None, [256, 64], None, "int8", "pca") == earlier
