"""int8 ranges: one sample per OUTPUT, recorded before any block, read back on a resume."""

from __future__ import annotations

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.outputs import calibration_ranges
from jobs.pipeline.calibration import load_or_calibrate, sample_texts
from jobs.pipeline.folders import CALIBRATION, InputFolder, OutputFolder
from jobs.pipeline.reading import Columns
from tests.conftest import write_jsonl


def test_the_sample_is_the_first_valid_rows_in_file_order_and_reading_stops_there(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in ("one", "", "two")])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "three"}, {"text": "four"}])
    (tmp_path / "c.jsonl.gz").write_bytes(b"not gzip at all")  # never reached
    folder = InputFolder(str(tmp_path))
    assert sample_texts(folder, folder.list_files(), Columns(), 3, 2) == ["one", "two", "three"]
    assert sample_texts(folder, folder.list_files()[:2], Columns(), 99, 2) == [
        "one", "two", "three", "four",
    ]  # fmt: skip


def test_ranges_are_calibrated_once_then_read_back(tmp_path, model_path):
    output = OutputFolder(str(tmp_path / "out"))
    replica = Replica(ReplicaSpec(source=model_path, source_is_local=True, dim=384, device="cpu"))
    texts = ["a short text", "def f(x):\n    return x + 1", "Another sentence, longer."]
    calibration = load_or_calibrate(output, lambda: texts, [384, 64], replica.embed, "int8", "none")
    assert calibration["rows"] == 3 and set(calibration["ranges"]) == {"384", "64"}
    minimums, maximums = np.asarray(calibration["ranges"]["64"])
    assert minimums.shape == (64,) and (minimums <= maximums).all()
    assert output.read_json(CALIBRATION) == calibration

    def must_not_run(*_):
        raise AssertionError("a resumed run must not calibrate again")

    again = load_or_calibrate(output, must_not_run, [384, 64], must_not_run, "int8", "none")
    assert again == calibration
    assert load_or_calibrate(output, must_not_run, [384], must_not_run, "float32", "none") is None


def test_the_rotation_is_orthogonal_keeps_full_dim_dot_products_and_is_read_back(
    tmp_path, model_path
):
    from embedder.outputs import base_vectors
    from embedder.rotation import rotate
    from jobs.pipeline.calibration import load_rotation
    from jobs.pipeline.folders import ROTATION
    from tests.conftest import real_texts

    output = OutputFolder(str(tmp_path / "out"))
    replica = Replica(ReplicaSpec(source=model_path, source_is_local=True, dim=384, device="cpu"))
    texts = real_texts(120)
    record = load_or_calibrate(output, lambda: texts, [384, 64], replica.embed, "int8", "pca")
    assert record["rotation"] == {"method": "pca", "file": ROTATION, "dim": 384}
    rotation = load_rotation(output, record)
    assert rotation.shape == (384, 384)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(384), atol=1e-5)
    vectors = replica.embed(texts)
    rotated = rotate(vectors, rotation)
    np.testing.assert_allclose(rotated @ rotated.T, vectors @ vectors.T, atol=1e-5)
    # The first axes carry the most: the sample's energy is front-loaded after rotation.
    share = (rotated[:, :64] ** 2).sum() / (rotated**2).sum()
    assert share > 64 / 384 + 0.2
    # The int8 ranges were taken after the rotation.
    expected = calibration_ranges(base_vectors(vectors, rotation, 384), [384, 64])
    np.testing.assert_allclose(record["ranges"]["64"], expected["64"], atol=1e-6)
