"""int8 ranges: one sample per OUTPUT, recorded before any block, read back on a resume."""

from __future__ import annotations

import numpy as np

from embedder import Replica, ReplicaSpec
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
    calibration = load_or_calibrate(output, lambda: texts, [384, 64], replica.embed)
    assert calibration["rows"] == 3 and set(calibration["ranges"]) == {"384", "64"}
    minimums, maximums = np.asarray(calibration["ranges"]["64"])
    assert minimums.shape == (64,) and (minimums <= maximums).all()
    assert output.read_json(CALIBRATION) == calibration

    def must_not_run(*_):
        raise AssertionError("a resumed run must not calibrate again")

    assert load_or_calibrate(output, must_not_run, [384, 64], must_not_run) == calibration
