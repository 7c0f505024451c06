"""int8 ranges: one sample per OUTPUT, recorded before any block, read back on a resume."""

from __future__ import annotations

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.outputs import calibration_ranges
from jobs.pipeline.calibration import load_or_calibrate, sample_texts
from jobs.pipeline.duplicates import find_corpus_duplicates, scan_here
from jobs.pipeline.folders import CALIBRATION, InputFolder, OutputFolder
from jobs.pipeline.reading import Columns
from tests.conftest import write_jsonl


def drawn(folder: InputFolder, rows: int) -> list[str]:
    """The job's calibration sample of `rows` rows: drawn by the duplicate scan, then read."""
    files = folder.list_files()
    scan = find_corpus_duplicates(folder, files, Columns(), 4, scan_here, sample_rows=rows)
    return sample_texts(folder, files, Columns(), 4, scan.sample)


def test_the_sample_is_spread_over_the_whole_corpus_whatever_the_file_order(tmp_path):
    # Ten collections of 40 rows, read collection by collection: the first 50 rows in file
    # order would all come from the first two.
    for c in range(10):
        records = [{"id": f"c{c}-{r}", "text": f"text {c}.{r}"} for r in range(40)]
        write_jsonl(tmp_path / "a" / f"coll{c}" / "rows.jsonl", records)
    sample = drawn(InputFolder(str(tmp_path / "a")), 50)
    assert len(sample) == len(set(sample)) == 50
    from_collection = {t.split()[1].split(".")[0] for t in sample}
    assert len(from_collection) >= 8
    # The same rows in other files, in another order: the same sample.
    for c in range(10):
        records = [{"id": f"c{c}-{r}", "text": f"text {c}.{r}"} for r in range(40)][::-1]
        write_jsonl(tmp_path / "b" / f"{9 - c}" / "x.jsonl", records[:20])
        write_jsonl(tmp_path / "b" / f"{c}" / "y.jsonl", records[20:])
    assert sorted(drawn(InputFolder(str(tmp_path / "b")), 50)) == sorted(sample)


def test_the_sample_takes_valid_first_occurrences_and_all_there_are(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": str(i), "text": t} for i, t in enumerate("xy z")])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "0", "text": "a repeat"}, {"text": "no id"}])
    (tmp_path / "c.jsonl.gz").write_bytes(b"not gzip at all")  # nothing of it is sampled
    assert sorted(drawn(InputFolder(str(tmp_path)), 99)) == ["no id", "x", "y", "z"]


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
