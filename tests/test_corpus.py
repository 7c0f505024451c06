"""Finding corpus files and reading them: collections, ids, metadata, and bad input set aside."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.pipeline.corpus import (
    Columns,
    InputError,
    Shard,
    ShardReader,
    plan_shards,
    read_rejections,
    write_rejections,
)
from tests.conftest import write_jsonl


def read(path, relpath, fmt="jsonl", collection="docs", columns=Columns()):
    shard = Shard(str(path), relpath, collection, fmt)
    reader = ShardReader(shard, columns, block_rows=3)
    tables = list(reader.tables())
    table = pa.concat_tables(tables) if tables else None
    return table, reader.rejections


def test_plan_shards_finds_every_format_at_any_depth(tmp_path):
    write_jsonl(tmp_path / "docs" / "a.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "docs" / "x" / "y" / "b.json", [{"text": "x"}])
    write_jsonl(tmp_path / "code" / "c.jsonl.gz", [{"text": "x"}], compress=True)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "code" / "d.parquet")
    write_jsonl(tmp_path / "top.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "_rejected" / "e.jsonl", [{"text": "x"}])  # job output: skipped
    write_jsonl(tmp_path / ".cache" / "f.jsonl", [{"text": "x"}])  # hidden: skipped
    (tmp_path / "docs" / "notes.txt").write_text("not corpus")
    shards = plan_shards(str(tmp_path))
    found = {(s.relpath, s.collection, s.fmt) for s in shards}
    assert found == {
        ("code/c.jsonl.gz", "code", "jsonl"),
        ("code/d.parquet", "code", "parquet"),
        ("docs/a.jsonl", "docs", "jsonl"),
        ("docs/x/y/b.json", "docs", "jsonl"),
        ("top.jsonl", "default", "jsonl"),
    }
    assert shards == plan_shards(str(tmp_path))  # stable order


def test_plan_shards_refuses_missing_or_empty_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        plan_shards(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no corpus files"):
        plan_shards(str(tmp_path))


def test_bad_json_lines_are_set_aside_with_file_row_and_reason(tmp_path):
    lines = [
        b'{"id": "ok1", "text": "fine", "tag": 1}',
        b"{not json",
        b'["a", "list"]',
        b'{"id": "n1", "text": null}',
        b'{"id": "m1"}',
        b'{"id": "e1", "text": "   \\n "}',
        b'{"id": "i1", "text": 42}',
        b'{"id": "u1", "text": "\xff\xfe bad bytes"}',
        b"",
        b'{"id": "c1", "text": "x", "collection": "../escape"}',
        b'{"id": "c2", "text": "x", "collection": "a/b"}',
        b'{"id": "ok2", "text": "also fine", "tag": "mixed type"}',
    ]
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    table, rejections = read(path, "docs/docs.jsonl")
    assert table.column("id").to_pylist() == ["ok1", "ok2"]
    reasons = {r.row: r.reason for r in rejections}
    assert all(r.file == "docs/docs.jsonl" for r in rejections)
    assert reasons[1].startswith("malformed JSON")
    assert reasons[2] == "not a JSON object but list"
    assert reasons[3] == "null text in column 'text'"
    assert reasons[4] == "missing text column 'text'"
    assert reasons[5] == "empty or whitespace-only text"
    assert reasons[6] == "text is not a string but int"
    assert reasons[7].startswith("invalid UTF-8")
    assert reasons[9].startswith("invalid collection name '../escape'")
    assert reasons[10].startswith("invalid collection name 'a/b'")
    assert 8 not in reasons  # a blank line is not a row
    # Mixed-type metadata survives as JSON text instead of failing the file.
    assert table.column("tag").to_pylist() == ["1", '"mixed type"']


def test_ids_are_derived_from_file_and_row_when_missing(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"text": "a"}, {"id": 7, "text": "b"}, {"text": "c"}])
    table, _ = read(path, "docs/a.jsonl")
    assert table.column("id").to_pylist() == ["docs/a.jsonl:0", "7", "docs/a.jsonl:2"]


def test_custom_text_and_id_columns(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"chunk_id": "k1", "body": "hello", "text": "meta"}])
    table, _ = read(path, "a.jsonl", columns=Columns(text="body", id="chunk_id"))
    row = table.to_pylist()[0]
    assert (row["id"], row["text"]) == ("k1", "hello")
    assert "body" not in table.column_names and "chunk_id" not in table.column_names
    assert row["input_text"] == "meta"  # kept, under a name that cannot collide


def test_parquet_keeps_metadata_types_and_rejects_bad_rows(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c", "d"],
                "text": ["one", None, "three", ""],
                "when": pa.array([1, 2, 3, 4], pa.timestamp("ms")),
                "embedding": [[0.1]] * 4,  # reserved: the job writes its own
            }
        ),
        path,
    )
    table, rejections = read(path, "tables/t.parquet", fmt="parquet", collection="tables")
    assert table.column("id").to_pylist() == ["a", "c"]
    assert table.schema.field("when").type == pa.timestamp("ms")
    assert table.column("input_embedding").to_pylist() == [[0.1], [0.1]]
    assert {r.row for r in rejections} == {1, 3}


def test_corrupt_files_are_rejected_whole(tmp_path):
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    table, rejections = read(bad_parquet, "x/bad.parquet", fmt="parquet")
    assert table is None
    assert len(rejections) == 1 and rejections[0].reason.startswith("unreadable file")
    bad_gzip = tmp_path / "bad.jsonl.gz"
    bad_gzip.write_bytes(gzip.compress(b'{"text": "a"}\n')[:-12])
    _, rejections = read(bad_gzip, "x/bad.jsonl.gz")
    assert rejections and "unreadable" in rejections[-1].reason


def test_rejections_round_trip_under_output(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"nope\n")
    shard = Shard(str(path), "docs/a.jsonl", "docs", "jsonl")
    reader = ShardReader(shard, Columns())
    assert list(reader.tables()) == []
    write_rejections(str(tmp_path / "out"), shard, reader.rejections)
    write_rejections(str(tmp_path / "out"), shard, reader.rejections)  # a retry overwrites
    records = read_rejections(str(tmp_path / "out"))
    assert records == [
        {"file": "docs/a.jsonl", "row": 0, "reason": records[0]["reason"], "raw": "nope\n"}
    ]


def labels_per_table(tables):
    return [set(t.column("_block").to_pylist()) for t in tables]


def test_blocks_follow_source_rows_and_each_label_is_in_one_table(tmp_path):
    path = tmp_path / "a.jsonl"
    records = [{"id": str(i), "text": "x" if i % 4 else " "} for i in range(10)]
    write_jsonl(path, records)
    shard = Shard(str(path), "a.jsonl", "docs", "jsonl")
    tables = list(ShardReader(shard, Columns(), block_rows=4).tables())
    assert [t.column("id").to_pylist() for t in tables] == [["1", "2", "3"], ["5", "6", "7"], ["9"]]
    assert [labels.pop().rsplit("-", 1)[1] for labels in labels_per_table(tables)] == [
        "000000000",
        "000000004",
        "000000008",
    ]


def test_parquet_row_groups_that_straddle_blocks_still_give_one_table_per_block(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(23)]}), path, row_group_size=5)
    shard = Shard(str(path), "t.parquet", "docs", "parquet")
    tables = list(ShardReader(shard, Columns(), block_rows=7).tables())
    labels = labels_per_table(tables)
    assert all(len(s) == 1 for s in labels)
    assert len({s.pop() for s in labels}) == len(tables) == 4
    assert sum(t.num_rows for t in tables) == 23
