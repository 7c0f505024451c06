"""Reading an input file as blocks: valid rows with their metadata, every other row set aside
with its file, row and reason, blocks cut by source row."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.pipeline.blocks import read_blocks
from jobs.pipeline.folders import InputFolder
from jobs.pipeline.reading import Columns
from jobs.pipeline.units import InputFile, file_format
from tests.conftest import write_jsonl


def blocks_of(path, relpath, collection="docs", columns=Columns(), block_rows=3, excluded=None):
    """The file at `path`, placed at `relpath` under a fresh INPUT, read as blocks."""
    root = path.parent / "input"
    target = root / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    input_file = InputFile(relpath, collection, file_format(relpath))
    return list(read_blocks(InputFolder(str(root)), input_file, columns, block_rows, excluded))


def read(path, relpath, collection="docs", columns=Columns(), block_rows=3):
    """All valid rows as one table (None when there are none) and all rejections."""
    blocks = blocks_of(path, relpath, collection, columns, block_rows)
    tables = [b.rows for b in blocks if b.rows.num_rows]
    table = pa.concat_tables(tables) if tables else None
    return table, [r for b in blocks for r in b.rejections]


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
    # One block: a metadata key has one Arrow type per block (the unit written as one file).
    table, rejections = read(path, "docs/docs.jsonl", block_rows=16)
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


def test_metadata_types_come_from_the_kept_rows_only(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(
        path,
        [
            {"id": "1", "text": "a", "page": 1},
            {"id": "2", "text": "", "page": "two", "only_here": True},  # rejected: empty
            {"id": "3", "text": "c", "page": 3},
        ],
    )
    table, rejections = read(path, "docs/a.jsonl")
    assert table.schema.field("page").type == pa.int64()
    assert "only_here" not in table.column_names
    assert [r.row for r in rejections] == [1]


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
    table, rejections = read(path, "tables/t.parquet", collection="tables")
    assert table.column("id").to_pylist() == ["a", "c"]
    assert table.schema.field("when").type == pa.timestamp("ms")
    assert table.column("input_embedding").to_pylist() == [[0.1], [0.1]]
    assert {r.row for r in rejections} == {1, 3}


def test_parquet_texts_ids_and_collections_of_other_types(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array([10, 11, 12], pa.int64()),
                "text": pa.array(["fine", "ok", None], pa.large_string()),
                "collection": pa.array(["faq", "a/b", None]).dictionary_encode(),
            }
        ),
        path,
    )
    table, rejections = read(path, "tables/t.parquet", collection="tables")
    assert table.to_pylist() == [{"id": "10", "text": "fine", "collection": "faq", "_row": 0}]
    assert {r.row: r.reason.split(":")[0] for r in rejections} == {
        1: "invalid collection name 'a/b'",
        2: "null text in column 'text'",
    }
    numbers = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": pa.array([1, None], pa.int32())}), numbers)
    table, rejections = read(numbers, "tables/n.parquet", collection="tables")
    assert table is None
    assert [r.reason for r in rejections] == [
        "text is not a string but int",
        "null text in column 'text'",
    ]


def test_excluded_rows_are_set_aside_with_the_reason_given(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"id": str(i), "text": f"t{i}"} for i in range(5)])
    blocks = blocks_of(path, "docs/a.jsonl", excluded={3: "duplicate id: first seen in x row 0"})
    assert [r for b in blocks for r in b.rows.column("id").to_pylist()] == ["0", "1", "2", "4"]
    (rejection,) = [r for b in blocks for r in b.rejections]
    assert (rejection.row, rejection.id, rejection.reason) == (
        3,
        "3",
        "duplicate id: first seen in x row 0",
    )


def test_corrupt_files_are_rejected_whole(tmp_path):
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    table, rejections = read(bad_parquet, "x/bad.parquet")
    assert table is None
    assert len(rejections) == 1 and rejections[0].reason.startswith("unreadable file")
    bad_gzip = tmp_path / "bad.jsonl.gz"
    bad_gzip.write_bytes(gzip.compress(b'{"text": "a"}\n')[:-12])
    _, rejections = read(bad_gzip, "x/bad.jsonl.gz")
    assert rejections and "unreadable" in rejections[-1].reason


def test_blocks_follow_source_rows_and_carry_their_own_rejections(tmp_path):
    path = tmp_path / "a.jsonl"
    records = [{"id": str(i), "text": "x" if i % 4 else " "} for i in range(10)]
    write_jsonl(path, records)
    blocks = blocks_of(path, "a.jsonl", block_rows=4)
    assert [b.rows.column("id").to_pylist() for b in blocks] == [
        ["1", "2", "3"],
        ["5", "6", "7"],
        ["9"],
    ]
    assert [str(b.id).rsplit("-", 1)[1] for b in blocks] == ["000000000", "000000004", "000000008"]
    assert [[r.row for r in b.rejections] for b in blocks] == [[0], [4], [8]]


def test_parquet_row_groups_that_straddle_blocks_still_give_one_table_per_block(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(23)]}), path, row_group_size=5)
    blocks = blocks_of(path, "t.parquet", block_rows=7)
    assert len({b.id for b in blocks}) == len(blocks) == 4
    assert sum(b.rows.num_rows for b in blocks) == 23
    for block in blocks:
        rows = block.rows.column("_row").to_pylist()
        assert all(block.id.first_row <= r < block.id.first_row + 7 for r in rows)


def test_a_file_cut_short_hands_on_the_blocks_before_the_cut(tmp_path):
    """A Parquet file whose third row group is corrupt: two blocks, then one rejection that
    covers the rest of the file."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(30)]}), path, row_group_size=10)
    data = bytearray(path.read_bytes())
    metadata = pq.read_metadata(path)
    corrupt_at = metadata.row_group(2).column(0).data_page_offset
    data[corrupt_at : corrupt_at + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    blocks = blocks_of(path, "t.parquet", block_rows=10)
    assert [b.rows.num_rows for b in blocks] == [10, 10, 0]
    (cut,) = blocks[-1].rejections
    assert cut.row == 20 and cut.reason.startswith("file unreadable from row 20 on")


def test_a_packed_block_does_not_carry_the_rows_after_it(tmp_path):
    from jobs.pipeline.envelopes import pack

    packed = []
    for last in ("w", "an edit in the next block"):
        path = tmp_path / f"{len(packed)}.jsonl"
        write_jsonl(path, [{"id": str(i), "text": t} for i, t in enumerate(["x", "y", "z", last])])
        blocks = blocks_of(path, f"docs/{len(packed)}/a.jsonl", block_rows=2)
        packed.append(pack(blocks[0].rows))
    assert packed[0] == packed[1]


def test_a_block_whose_every_row_is_rejected_has_the_columns_of_any_other(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"id": "1", "text": ""}, {"id": "2", "text": " "}, {"id": "3", "text": "x"}])
    blocks = blocks_of(path, "docs/a.jsonl", block_rows=2)
    assert [b.rows.num_rows for b in blocks] == [0, 1]
    assert set(blocks[0].rows.column_names) >= {"id", "text", "collection", "_row"}


# -- values Arrow cannot hold, and files read in bounded pieces ------------------------------

SURROGATE = "\ud83d"  # half of an emoji: JSON can spell it, UTF-8 and Arrow cannot hold it


def awkward_lines() -> list[bytes]:
    """Well-formed JSON that Arrow cannot take as it is, each kind once (json.dumps writes a
    lone surrogate as its escape, as a splitter's output would)."""
    import json

    records = [
        {"id": "ok", "text": "fine", "n": 1},
        {"id": "cut-text", "text": f"an emoji cut in half {SURROGATE}"},
        {"id": f"cut-id-{SURROGATE}", "text": "fine"},
        {"id": "cut-collection", "text": "fine", "collection": f"docs{SURROGATE}"},
        {"id": "cut-key", "text": "fine", f"k{SURROGATE}": 1},
        {"id": "big", "text": "fine", "n": 2**64, "title": f"cut {SURROGATE} title"},
        {"id": 2**70, "text": "an id beyond 64 bits is text like any other"},
    ]
    return [json.dumps(r).encode() for r in records] + [b"[" * 5000 + b"]" * 5000]


def test_values_arrow_cannot_hold_are_rejected_or_kept_as_text_never_a_failed_file(tmp_path):
    import json

    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join(awkward_lines()) + b"\n")
    table, rejections = read(path, "docs/a.jsonl", block_rows=16)
    assert table.column("id").to_pylist() == ["ok", "big", str(2**70)]
    reasons = {r.row: r.reason for r in rejections}
    assert reasons[1].startswith("the text is not valid Unicode: a lone surrogate \\ud83d")
    assert reasons[2].startswith("the id is not valid Unicode")
    assert reasons[3].startswith("invalid collection name 'docs\\ud83d'")
    assert reasons[4].startswith("a key is not valid Unicode")
    assert reasons[7] == "malformed JSON: nested too deeply"
    # An integer beyond 64 bits makes its column JSON text; a cut emoji in a metadata string
    # is kept as its escape, which reads back as it was written.
    assert table.column("n").to_pylist() == ["1", str(2**64), None]
    assert table.column("title").to_pylist() == [None, "cut \\ud83d title", None]
    assert json.loads('"' + table.column("title")[1].as_py() + '"') == f"cut {SURROGATE} title"
    # The rejection list can be written as UTF-8: the raw previews carry escapes.
    for rejection in rejections:
        json.dumps(rejection.as_record(), ensure_ascii=False).encode("utf-8")


def test_the_duplicate_scan_takes_the_same_rows_as_the_reader(tmp_path):
    from jobs.pipeline.duplicates import find_corpus_duplicates, scan_here

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_bytes(b"\n".join(awkward_lines()) + b"\n")
    write_jsonl(tmp_path / "docs" / "b.jsonl", [{"id": "big", "text": "again"}])
    folder = InputFolder(str(tmp_path))
    scan = find_corpus_duplicates(folder, folder.list_files(), Columns(), 16, scan_here)
    assert scan.unread == {}
    assert scan.excluded == {
        "docs/b.jsonl": {"0": "duplicate id: first seen in docs/a.jsonl row 5"}
    }


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + b'{"id": "first", "text": "kept"}\n{"id": "2", "text": "x"}\n'
    )
    table, rejections = read(path, "docs/a.jsonl")
    assert table.column("id").to_pylist() == ["first", "2"] and rejections == []


def test_json_lines_are_read_a_block_at_a_time_and_only_what_is_asked(tmp_path):
    from jobs.pipeline.reading import read_rows

    write_jsonl(tmp_path / "docs" / "a.jsonl", [{"text": f"t{i}", "tag": i} for i in range(10)])
    folder = InputFolder(str(tmp_path))
    (input_file,) = folder.list_files()
    batches = list(read_rows(folder, input_file, Columns(), 3))
    assert [b.end_row for b in batches] == [3, 6, 9, 10]
    assert [b.checked.num_rows for b in batches] == [3, 3, 3, 1]
    assert batches[1].metadata_of([0, 2]).to_pylist() == [{"tag": 3}, {"tag": 5}]
    # Without metadata (the duplicate scan, the calibration sample) no record is kept.
    bare = list(read_rows(folder, input_file, Columns(), 3, metadata=False))
    assert [b.checked for b in bare] == [b.checked for b in batches]
    assert bare[1].metadata_of([0, 2]).num_columns == 0


def test_parquet_without_metadata_reads_only_the_checked_columns(tmp_path):
    from jobs.pipeline.reading import read_rows

    big = ["x" * 1000] * 50
    pq.write_table(pa.table({"id": [str(i) for i in range(50)], "text": ["t"] * 50, "blob": big}),
                   tmp_path / "t.parquet")  # fmt: skip
    folder = InputFolder(str(tmp_path))
    (input_file,) = folder.list_files()
    (with_metadata,) = read_rows(folder, input_file, Columns(), 64)
    (bare,) = read_rows(folder, input_file, Columns(), 64, metadata=False)
    assert with_metadata.metadata_of([0]).column_names == ["blob"]
    assert bare.metadata_of([0]).num_columns == 0
    assert bare.checked == with_metadata.checked


def test_only_storage_failures_are_storage_read_errors():
    import io

    import pytest

    from jobs.pipeline.folders import StorageReadError, _GuardedReads

    class Failing(io.RawIOBase):
        def __init__(self, error):
            self.error = error

        def read(self, size=-1):
            raise self.error

    with pytest.raises(StorageReadError):
        _GuardedReads(Failing(ConnectionResetError("reset by peer")), "a.jsonl").read(10)
    with pytest.raises(MemoryError):
        _GuardedReads(Failing(MemoryError()), "a.jsonl").read(10)
    with pytest.raises(ZeroDivisionError):
        _GuardedReads(Failing(ZeroDivisionError()), "a.jsonl").read(10)


def test_every_metadata_column_gets_an_output_name_of_its_own():
    columns = Columns(text="body", vectors=("embedding_384", "embedding_384_int8"))
    names = [
        "text", "embedding_384", "embedding_384_int8", "_row", "input_text",
        "input_input_text", "embedding", "embedding_128", "input_page", "page", "row",
    ]  # fmt: skip
    renamed = [columns.output_name(n) for n in names]
    assert renamed == [
        "input_text", "input_embedding_384", "input_embedding_384_int8", "input_row",
        "input_input_text", "input_input_input_text", "embedding", "embedding_128",
        "input_page", "page", "row",
    ]  # fmt: skip
    assert len(set(renamed)) == len(renamed)
    written = {"id", "text", "embedding_384", "embedding_384_int8"}
    assert not written & set(renamed)


def test_a_pack_keeps_each_collections_metadata_types_and_every_files_rows(tmp_path):
    from jobs.pipeline.blocks import read_planned
    from jobs.pipeline.packing import plan_blocks

    root = tmp_path / "in"
    write_jsonl(root / "docs" / "a.jsonl", [{"id": "a", "text": "x", "page": 1}])
    write_jsonl(root / "docs" / "b.jsonl", [{"id": "b", "text": "y", "page": 2, "lang": "en"}])
    # Routed to faq, where `page` is text: docs keeps its integers.
    routed = [{"id": "c", "text": "z", "page": "p3", "collection": "faq"}, {"text": ""}]
    write_jsonl(root / "docs" / "c.jsonl", routed)
    # `page` a list in a file of the same collection: that collection's page is JSON text.
    write_jsonl(root / "notes" / "d.jsonl", [{"id": "d", "text": "w", "page": 4}])
    write_jsonl(root / "notes" / "e.jsonl", [{"id": "e", "text": "v", "page": [5]}])
    folder = InputFolder(str(root))
    files = folder.list_files()
    planned = plan_blocks(files, {f.relpath: 2 for f in files}, block_rows=1000)
    assert [len(b.segments) for b in planned] == [3, 2]  # one pack per collection folder
    blocks = [block for _, block in read_planned(folder, planned, Columns(), 1000, {})]
    parts = {p.column("collection")[0].as_py(): p for b in blocks for p in b.collection_parts()}
    assert parts["docs"].column("page").to_pylist() == [1, 2]
    assert parts["docs"].column("lang").to_pylist() == [None, "en"]
    assert parts["faq"].column("page").to_pylist() == ["p3"]
    assert parts["notes"].column("page").to_pylist() == ["4", "[5]"]
    (rejection,) = blocks[0].rejections
    assert (rejection.file, rejection.row) == ("docs/c.jsonl", 1)
    assert blocks[0].rows.column("id").to_pylist() == ["a", "b", "c"]
