"""Several widths and quantized columns from one forward pass, calibrated once per run."""

from __future__ import annotations

import numpy as np

from embedder.outputs import calibration_ranges, output_vectors, quantize
from tests.conftest import run_job_cli


def unit_rows(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_every_width_is_renormalized_and_quantized_with_the_given_ranges():
    from sentence_transformers.util.quantization import quantize_embeddings

    full = unit_rows(50, 64)
    ranges = calibration_ranges(full[:20], [64, 16])
    columns = output_vectors(full, [64, 16], "int8", ranges)
    assert set(columns) == {
        "embedding_64",
        "embedding_64_int8",
        "embedding_16",
        "embedding_16_int8",
    }
    np.testing.assert_allclose(np.linalg.norm(columns["embedding_16"], axis=1), 1.0, atol=1e-6)
    expected = quantize_embeddings(
        columns["embedding_16"], precision="int8", ranges=np.asarray(ranges["16"])
    )
    np.testing.assert_array_equal(columns["embedding_16_int8"], expected)
    # The same ranges for any slice of the corpus: one corpus, one scale.
    halves = [output_vectors(part, [64, 16], "int8", ranges) for part in (full[:25], full[25:])]
    joined = np.concatenate([h["embedding_16_int8"] for h in halves])
    np.testing.assert_array_equal(joined, columns["embedding_16_int8"])


def test_binary_packs_eight_dims_a_byte_like_sentence_transformers():
    from sentence_transformers.util.quantization import quantize_embeddings

    full = unit_rows(10, 32)
    columns = output_vectors(full, [32], "ubinary", None)
    assert columns["embedding_ubinary"].shape == (10, 4)
    np.testing.assert_array_equal(
        columns["embedding_ubinary"], quantize_embeddings(full, precision="ubinary")
    )
    assert quantize(full, "binary", None).dtype == np.int8


def test_width_and_precision_mistakes_are_refused(mixed_corpus, tmp_path):
    root, out = str(mixed_corpus["root"]), str(tmp_path / "out")
    both = run_job_cli([root, out, "all-miniLM-l6", "128", "--dims", "384,128"])
    assert both.returncode == 2 and "not both" in both.stderr
    odd = run_job_cli([root, out, "all-miniLM-l6", "--dims", "384,100", "--precision", "binary",
                       "--allow-non-matryoshka"])  # fmt: skip
    assert odd.returncode == 2 and "multiple of 8" in odd.stderr
    too_wide = run_job_cli([root, out, "all-miniLM-l6", "--dims", "512,128"])
    assert too_wide.returncode == 2 and "native dim 384" in too_wide.stderr


def test_int8_of_one_text_does_not_depend_on_its_batch(model_path):
    """One scale for the whole corpus, and one vector per text: in fixed-shape batches (what
    the job uses whenever it quantizes) the same texts embedded in other batch compositions,
    or by another replica, give bitwise the same floats and so the same codes. Per-batch
    calibration, sentence-transformers' default, moves a large share of the codes."""
    from sentence_transformers.util.quantization import quantize_embeddings

    from embedder import Replica, ReplicaSpec
    from tests.conftest import real_texts

    spec = ReplicaSpec(
        source=model_path, source_is_local=True, dim=384, device="cpu",
        fixed_shape_batches=True,
    )  # fmt: skip
    replica, other_replica = Replica(spec), Replica(spec)
    texts = [t if i % 3 else t.splitlines()[0] for i, t in enumerate(real_texts(90))]
    together = replica.embed(texts)
    shuffle = np.random.default_rng(5).permutation(len(texts))
    compositions = {
        "in sevens": np.concatenate([replica.embed(texts[i : i + 7]) for i in range(0, 90, 7)]),
        "reversed": replica.embed(texts[::-1])[::-1],
        "one by one": np.concatenate([replica.embed([t]) for t in texts[:20]]),
        "another replica, shuffled": other_replica.embed([texts[i] for i in shuffle])[
            np.argsort(shuffle)
        ],
    }
    ranges = calibration_ranges(together, [384, 128])
    codes = output_vectors(together, [384, 128], "int8", ranges)
    for name, vectors in compositions.items():
        np.testing.assert_array_equal(vectors, together[: len(vectors)], err_msg=name)
        theirs = output_vectors(vectors, [384, 128], "int8", ranges)
        for column in ("embedding_384_int8", "embedding_128_int8"):
            np.testing.assert_array_equal(theirs[column], codes[column][: len(vectors)])
    per_batch = np.concatenate(
        [quantize_embeddings(truncate(together[i : i + 7], 128), "int8") for i in range(0, 90, 7)]
    )
    assert (per_batch != codes["embedding_128_int8"]).mean() > 0.2


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    from embedder.vectors import truncate_and_normalize

    return truncate_and_normalize(vectors, dim)
