"""INPUT and OUTPUT folders: finding corpus files, OUTPUT's layout, atomic writes, stale files."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.pipeline.folders import InputError, InputFolder, OutputFolder
from jobs.pipeline.units import BlockId, InputFile
from tests.conftest import write_jsonl


def test_input_folder_finds_every_format_at_any_depth(tmp_path):
    write_jsonl(tmp_path / "docs" / "a.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "docs" / "x" / "y" / "b.json", [{"text": "x"}])
    write_jsonl(tmp_path / "code" / "c.jsonl.gz", [{"text": "x"}], compress=True)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "code" / "d.parquet")
    write_jsonl(tmp_path / "top.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "_rejected" / "e.jsonl", [{"text": "x"}])  # job output: skipped
    write_jsonl(tmp_path / ".cache" / "f.jsonl", [{"text": "x"}])  # hidden: skipped
    (tmp_path / "docs" / "notes.txt").write_text("not corpus")
    input_files = InputFolder(str(tmp_path)).list_files()
    found = {(f.relpath, f.collection, f.fmt) for f in input_files}
    assert found == {
        ("code/c.jsonl.gz", "code", "jsonl"),
        ("code/d.parquet", "code", "parquet"),
        ("docs/a.jsonl", "docs", "jsonl"),
        ("docs/x/y/b.json", "docs", "jsonl"),
        ("top.jsonl", "default", "jsonl"),
    }
    assert input_files == InputFolder(str(tmp_path)).list_files()  # stable order


def test_input_folder_refuses_missing_or_empty_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        InputFolder(str(tmp_path / "missing")).list_files()
    with pytest.raises(InputError, match="no corpus files"):
        InputFolder(str(tmp_path)).list_files()


def test_a_folder_resolves_a_relative_path_and_travels_without_its_filesystem(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    folder = OutputFolder("out")
    assert folder.uri == str(tmp_path / "out")
    folder.write_json("_manifest.json", {"a": 1})
    copy = pickle.loads(pickle.dumps(folder))
    assert copy._resolved is None  # re-resolved on the worker's side
    assert copy.read_json("_manifest.json") == {"a": 1}
    assert copy.read_json("_missing.json") is None


def test_block_file_names_are_built_and_parsed_by_one_type():
    block_id = BlockId("0123456789abcdef", 4096)
    relpath = OutputFolder.block_file("docs", block_id)
    assert relpath == "collection=docs/part-0123456789abcdef-000004096.parquet"
    committed = OutputFolder.parse_block_file(relpath)
    assert (committed.block_id, committed.collection) == (block_id, "docs")
    assert BlockId.parse(str(block_id)) == block_id
    for other in (
        "collection=docs/notes.parquet",
        "docs/part-0123456789abcdef-000004096.parquet",
        "_rejected/x.jsonl",
        "collection=docs/.part-0123456789abcdef-000004096.parquet",
    ):
        assert OutputFolder.parse_block_file(other) is None  # fmt: skip
    assert InputFile("docs/a.jsonl", "docs", "jsonl").block_of(5000, 2048) == BlockId(
        InputFile("docs/a.jsonl", "docs", "jsonl").path_hash, 4096
    )


def test_atomic_writes_leave_no_temp_file_and_replace_the_old_content(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    relpath = OutputFolder.block_file("docs", BlockId("0" * 16, 0))
    output.write_parquet(relpath, pa.table({"x": [1]}))
    output.write_parquet(relpath, pa.table({"x": [2, 3]}))
    assert pq.read_table(tmp_path / "out" / relpath).column("x").to_pylist() == [2, 3]
    assert output.files().keys() == {relpath}


def test_committed_files_are_grouped_by_block(tmp_path):
    output = OutputFolder(str(tmp_path))
    a, b = InputFile("a.jsonl", "docs", "jsonl"), InputFile("b.jsonl", "docs", "jsonl")
    for collection, block_id in (
        ("docs", a.block_of(0, 10)),
        ("faq", a.block_of(0, 10)),
        ("docs", a.block_of(10, 10)),
        ("docs", b.block_of(0, 10)),
    ):
        output.write_bytes(OutputFolder.block_file(collection, block_id), b"x")  # fmt: skip
    output.write_json("_manifest.json", {})
    committed = output.committed_files()
    assert set(committed) == {a.block_of(0, 10), a.block_of(10, 10), b.block_of(0, 10)}
    assert sorted(c.collection for c in committed[a.block_of(0, 10)]) == ["docs", "faq"]
    assert [c.relpath for c in committed[b.block_of(0, 10)]] == [
        OutputFolder.block_file("docs", b.block_of(0, 10))
    ]


def test_rejections_round_trip_and_a_retry_overwrites(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    block_id = InputFile("docs/a.jsonl", "docs", "jsonl").block_of(0, 10)
    records = [{"file": "docs/a.jsonl", "row": 0, "reason": "malformed JSON", "raw": "nope\n"}]
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    relpath = output.write_rejections(block_id, lines)
    assert output.write_rejections(block_id, lines) == relpath
    assert relpath == f"_rejected/part-{block_id}.jsonl"
    assert list(output.read_rejections()) == records


def test_remove_stale_keeps_what_is_current_and_the_run_records(tmp_path):
    output = OutputFolder(str(tmp_path))
    current = OutputFolder.block_file("docs", BlockId("a" * 16, 0))
    stale = [
        OutputFolder.block_file("docs", BlockId("a" * 16, 10)),  # a block the file lost
        OutputFolder.block_file("faq", BlockId("b" * 16, 0)),  # an input file that is gone
        "_rejected/bbbbbbbbbbbbbbbb-b.jsonl.jsonl",  # rejections of a file that has none now
        "collection=docs/.part-aaaaaaaaaaaaaaaa-000000020.parquet.tmp-1234",  # a crashed write
    ]
    records = ["_fingerprint.json", "_calibration.json", "_manifest.json", "notes/readme.txt"]
    for relpath in [current, *stale, *records]:
        output.write_bytes(relpath, b"x")
    kept_rejections = "_rejected/aaaaaaaaaaaaaaaa-a.jsonl.jsonl"
    output.write_bytes(kept_rejections, b"{}\n")
    removed = output.remove_stale({current, kept_rejections})
    assert sorted(removed) == sorted(stale)
    assert set(output.files()) == {current, kept_rejections, *records}


def test_clearing_removes_the_jobs_files_only(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    jobs_files = [
        "_manifest.json", "_fingerprint.json", "_calibration.json", "_rotation.npy",
        "_rejected/0123456789abcdef-a.jsonl",
        "collection=docs/part-0123456789abcdef-000000000.parquet",
        "collection=docs/.part-0123456789abcdef-000000000.parquet.tmp-12-34",
        "_lease.takeover-dead.json", "._lease.json.tmp-1-2",
    ]  # fmt: skip
    others = ["README.md", "collection=docs/part.parquet", "_rejected/notes.txt"]
    for relpath in jobs_files + others + ["_lease.json"]:
        output.write_bytes(relpath, b"x")
    assert output.foreign_files() == sorted(others)
    assert sorted(output.clear()) == sorted(jobs_files)
    assert set(output.files()) == {*others, "_lease.json"}
