"""--rotate pca: one rotation per OUTPUT, the same rotated vector for a text whichever replica,
block or resumed run embedded it, and queries rotated the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import local_ray, read_output, reference_vectors


@pytest.fixture(scope="module")
def rotated_run(mixed_corpus, tmp_path_factory):
    """Two replicas on logical GPUs, blocks of four rows, two widths, int8 codes, rotated; then
    one block file deleted and the run resumed."""
    from jobs.pipeline.job import prepare_job, run_job
    from jobs.pipeline.settings import EmbedSettings

    output = tmp_path_factory.mktemp("rotated") / "out"
    settings = EmbedSettings(
        input=str(mixed_corpus["root"]),
        output=str(output),
        model="all-miniLM-l6",
        device="cpu",
        dims="384,64",
        precision="int8",
        rotate="pca",
        block_rows=4,
        allow_non_matryoshka=True,
    )
    with local_ray(num_cpus=3, num_gpus=2):
        first, code = run_job(prepare_job(settings))
        assert code == 0
        before = {p.relative_to(output): p.read_bytes() for p in output.glob("collection=*/*")}
        lost = sorted(output.glob("collection=docs/*.parquet"))[0]
        lost.unlink()
        resumed, code = run_job(prepare_job(settings))
        assert code == 0
    return {"output": output, "first": first, "resumed": resumed, "before": before, "lost": lost}


def test_the_rotation_is_fitted_once_and_recorded(rotated_run, mixed_corpus):
    output, first = rotated_run["output"], rotated_run["first"]
    assert first["replicas"] == 2 and all(r["rows"] > 0 for r in first["per_replica"])
    assert first["calibration"]["rotation"] == {
        "method": "pca",
        "file": "_rotation.npy",
        "dim": 384,
    }
    assert first["calibration"]["rows"] == len(mixed_corpus["expected"])
    assert first["fingerprint"]["rotate"] == "pca"
    assert rotated_run["resumed"]["calibration"] == first["calibration"]  # reused, not refitted
    # One block to redo: one replica loaded its model, not one per GPU.
    assert rotated_run["resumed"]["replicas"] == 1
    assert (output / "_rotation.npy").exists()


def test_full_dim_dot_products_are_unchanged_by_the_rotation(rotated_run, mixed_corpus, bare_model):
    tables = read_output(rotated_run["output"])
    ids = [i for t in tables.values() for i in t.column("id").to_pylist()]
    stored = np.concatenate(
        [
            np.asarray(t.column("embedding_384").to_pylist(), dtype=np.float32)
            for t in tables.values()
        ]
    )
    plain = reference_vectors(bare_model, [mixed_corpus["expected"][i]["text"] for i in ids], 384)
    np.testing.assert_allclose(stored @ stored.T, plain @ plain.T, atol=1e-5)
    # The full-width column is not rotated (an orthogonal rotation would change none of its
    # dot products); the 64 column is.
    np.testing.assert_allclose(stored, plain, atol=1e-5)
    narrow = np.concatenate(
        [
            np.asarray(t.column("embedding_64").to_pylist(), dtype=np.float32)
            for t in tables.values()
        ]
    )
    plain_64 = reference_vectors(bare_model, [mixed_corpus["expected"][i]["text"] for i in ids], 64)
    assert np.abs(narrow - plain_64).max() > 0.1  # rotated indeed


def test_a_text_gets_the_same_rotated_vector_whichever_replica_block_or_rerun(
    rotated_run, mixed_corpus, model_path
):
    """Every written column equals, bitwise, what a lone replica gives for the whole corpus in
    one call in another order, rotated with the stored matrix; and the block that was deleted
    and embedded again by the resumed run came back byte for byte."""
    import io

    import pyarrow.parquet as pq
    import torch

    from embedder import Replica, ReplicaSpec
    from embedder.outputs import base_vectors, output_vectors
    from jobs.pipeline.calibration import load_rotation
    from jobs.pipeline.folders import OutputFolder

    output, lost = rotated_run["output"], rotated_run["lost"]
    lost_before = rotated_run["before"][lost.relative_to(output)]
    # The resumed run embedded that block's rows again, and nothing else...
    block_rows = pq.read_metadata(io.BytesIO(lost_before)).num_rows
    assert rotated_run["resumed"]["rows_embedded"] == block_rows
    # ...and wrote them back byte for byte.
    assert lost.read_bytes() == lost_before
    tables = read_output(output)
    ids = [i for t in tables.values() for i in t.column("id").to_pylist()]
    manifest = json.loads((output / "_manifest.json").read_text())
    rotation = load_rotation(OutputFolder(str(output)), manifest["calibration"])
    threads = torch.get_num_threads()
    spec = ReplicaSpec(
        source=model_path, source_is_local=True, dim=384, device="cpu",
        fixed_shape_batches=True, cpu_threads=1,  # as the job's replicas had
    )  # fmt: skip
    try:
        alone = Replica(spec).embed([mixed_corpus["expected"][i]["text"] for i in ids][::-1])[::-1]
    finally:
        torch.set_num_threads(threads)
    want = output_vectors(
        base_vectors(alone, rotation, 384, rotate_full_width=False),
        [384, 64],
        "int8",
        manifest["calibration"]["ranges"],
        rotation=rotation,
    )
    for name, matrix in want.items():
        written = [row for t in tables.values() for row in t.column(name).to_pylist()]
        np.testing.assert_array_equal(np.asarray(written, dtype=matrix.dtype), matrix, err_msg=name)


def test_queries_are_rotated_the_same_way(rotated_run, mixed_corpus, bare_model):
    from embedder.rotation import rotate
    from embedder.vectors import truncate_and_normalize
    from jobs.pipeline.calibration import load_rotation
    from jobs.pipeline.folders import OutputFolder
    from jobs.query import QueryEncoder

    output = rotated_run["output"]
    encoder = QueryEncoder.from_output(str(output))
    table = read_output(output)["docs"]
    again = encoder.encode(table.column("text").to_pylist(), as_documents=True)
    for name in ("embedding_64", "embedding_64_int8"):
        stored = np.asarray(table.column(name).to_pylist(), dtype=again[name].dtype)
        if name.endswith("int8"):
            np.testing.assert_array_equal(again[name], stored)
        else:
            assert np.sum(again[name] * stored, axis=1).min() >= 0.9999
    questions = ["how are arguments parsed?", "what does a deque do?"]
    rotation = load_rotation(OutputFolder(str(output)), encoder.manifest["calibration"])
    full = bare_model.encode(questions, normalize_embeddings=True)
    expected = truncate_and_normalize(rotate(full, rotation), 64)
    assert np.sum(encoder.encode(questions)["embedding_64"] * expected, axis=1).min() >= 0.9999
