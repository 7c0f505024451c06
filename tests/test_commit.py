"""The commit protocol without Ray: whose OUTPUT it is, which blocks are done, redone or
partly reused, and what is stale. The stages run here in order, one envelope at a time, with
the real model; jobs.pipeline.stages.run_pipeline runs the same functions on Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedder import Replica, ReplicaSpec
from jobs.pipeline import commit, duplicates
from jobs.pipeline.envelopes import to_table
from jobs.pipeline.folders import FINGERPRINT, InputFolder, OutputFolder
from jobs.pipeline.manifest import Tally
from jobs.pipeline.reading import Columns
from jobs.pipeline.stages import StageSpec, embed_block, read_stage, write_stage
from jobs.pipeline.work import plan_work
from tests.conftest import reference_vectors, write_jsonl

FINGERPRINT_A = {"hf_id": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384}


@pytest.fixture(scope="module")
def replica(model_path):
    return Replica(ReplicaSpec(source=model_path, source_is_local=True, dim=384, device="cpu"))


def make_input(root) -> None:
    """Two files; the second routes two of its rows to another collection."""
    write_jsonl(
        root / "docs" / "a.jsonl", [{"id": f"a{i}", "text": f"alpha {i}"} for i in range(7)]
    )
    routed = [{"id": f"b{i}", "text": f"beta {i}"} for i in range(4)]
    routed[1]["collection"] = routed[3]["collection"] = "faq"
    write_jsonl(root / "docs" / "b.jsonl", routed)


def stage_spec(tmp_path, fingerprint=FINGERPRINT_A) -> StageSpec:
    return StageSpec(
        input=InputFolder(str(tmp_path / "in")),
        output=OutputFolder(str(tmp_path / "out")),
        columns=Columns(),
        block_rows=3,
        drop_text=False,
        fingerprint_id=commit.fingerprint_id(fingerprint),
        dims=(384,),
    )


def run_here(spec: StageSpec, replica: Replica, excluded=None) -> Tally:
    """One run in this process, as a run does it: the duplicate scan (its decisions replaced
    by `excluded` when given), the plan, the stages, then the stale-file sweep."""
    input_files = spec.input.list_files()
    scan = duplicates.find_corpus_duplicates(
        spec.input, input_files, spec.columns, spec.block_rows, duplicates.scan_here
    )
    if excluded is not None:
        scan.excluded = excluded
    work = plan_work(input_files, scan, spec.output, spec.fingerprint_id, spec.block_rows)
    results = list(work.done)
    for item in work.items:
        for table in read_stage(pa.table({"work": [item.as_row()["work"]]}), spec):
            for envelope in table.to_pylist():
                if envelope["block"]:
                    envelope = embed_block(envelope, replica, spec)
                results += write_stage(to_table([envelope]), spec).to_pylist()
    tally = Tally.of(results)
    spec.output.remove_stale(tally.current_files())
    return tally


def footer_of(output: OutputFolder, relpath: str) -> dict[bytes, bytes]:
    return pq.read_metadata(output.path(relpath)).metadata


def output_rows(output: OutputFolder) -> dict[str, dict]:
    rows = {}
    relpaths = [c.relpath for files in output.committed_files().values() for c in files]
    for relpath in relpaths:
        for row in pq.read_table(output.path(relpath)).to_pylist():
            assert row["id"] not in rows, f"{row['id']} written twice"
            rows[row["id"]] = row | {"relpath": relpath}
    return rows


# -- claiming OUTPUT -------------------------------------------------------------------------


def test_a_fresh_output_is_claimed_and_a_rerun_with_the_same_settings_resumes(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    assert commit.claim_output(output, FINGERPRINT_A, write=False) is None
    assert not output.exists()  # a dry run writes nothing
    assert commit.claim_output(output, FINGERPRINT_A) is None
    assert output.read_json(FINGERPRINT) == FINGERPRINT_A
    assert commit.claim_output(output, dict(FINGERPRINT_A)) == FINGERPRINT_A


def test_other_settings_are_refused_naming_each_difference(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    commit.claim_output(output, FINGERPRINT_A)
    other = FINGERPRINT_A | {"dim": 128, "prompt": "query: "}
    with pytest.raises(commit.FingerprintMismatch) as refused:
        commit.claim_output(output, other)
    message = str(refused.value)
    assert "dim: OUTPUT has 384, this run 128" in message
    assert "prompt: OUTPUT has None, this run 'query: '" in message
    assert "--overwrite" in message
    assert output.read_json(FINGERPRINT) == FINGERPRINT_A


def test_files_without_a_fingerprint_are_not_taken_over(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    output.write_bytes("collection=x/part.parquet", b"old")
    with pytest.raises(commit.FingerprintMismatch, match="did not write"):
        commit.claim_output(output, FINGERPRINT_A)
    assert not output.exists(FINGERPRINT)


# -- blocks: done, redone, reused ------------------------------------------------------------


def test_first_run_writes_every_block_and_a_rerun_skips_them_all(tmp_path, replica, bare_model):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    first = run_here(spec, replica)
    assert (first.rows, first.embedded, first.skipped) == (11, 11, 0)
    # a.jsonl: blocks 0, 3, 6; b.jsonl: blocks 0 (docs + faq) and 3 (faq only)
    assert first.files_written == 6
    rows = output_rows(spec.output)
    assert set(rows) == {f"a{i}" for i in range(7)} | {f"b{i}" for i in range(4)}
    assert rows["b1"]["relpath"].startswith("collection=faq/")
    vectors = np.asarray([rows[i]["embedding"] for i in ("a0", "b3")], dtype=np.float32)
    np.testing.assert_allclose(
        vectors, reference_vectors(bare_model, ["alpha 0", "beta 3"], 384), atol=1e-5
    )
    footer = footer_of(spec.output, rows["a0"]["relpath"])
    assert footer[commit.FOOTER_FINGERPRINT] == spec.fingerprint_id.encode()
    mtimes = {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in spec.output.files()}

    again = run_here(spec, replica)
    assert (again.rows, again.embedded, again.skipped, again.files_written) == (11, 0, 11, 0)
    assert again.current_files() == first.current_files()
    assert {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in spec.output.files()} == mtimes


def test_an_edited_row_is_embedded_again_and_its_block_mates_reuse_their_vectors(
    tmp_path, replica, bare_model
):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    run_here(spec, replica)
    records = [{"id": f"a{i}", "text": f"alpha {i}"} for i in range(7)]
    records[4]["text"] = "an edited chunk"
    write_jsonl(tmp_path / "in" / "docs" / "a.jsonl", records)
    edited = run_here(spec, replica)
    assert (edited.embedded, edited.reused, edited.skipped) == (1, 2, 8)
    assert edited.files_written == 1  # only block 3 of a.jsonl
    # A new metadata key gives the rows of its block a new column (a JSON Lines file is read
    # block by block): that block is rewritten, and nothing is encoded.
    records[5]["lang"] = "en"
    write_jsonl(tmp_path / "in" / "docs" / "a.jsonl", records)
    metadata_edit = run_here(spec, replica)
    assert (metadata_edit.embedded, metadata_edit.reused, metadata_edit.files_written) == (0, 3, 1)
    rows = output_rows(spec.output)
    assert rows["a4"]["text"] == "an edited chunk" and rows["a5"]["lang"] == "en"
    np.testing.assert_allclose(
        rows["a4"]["embedding"],
        reference_vectors(bare_model, ["an edited chunk"], 384)[0],
        atol=1e-5,
    )


def test_a_block_missing_one_of_its_files_or_with_an_unreadable_one_is_redone(tmp_path, replica):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    run_here(spec, replica)
    rows = output_rows(spec.output)
    # A crash between the two files of b.jsonl's first block: its faq file is missing.
    (tmp_path / "out" / rows["b1"]["relpath"]).unlink()
    # A damaged file of a.jsonl's first block.
    (tmp_path / "out" / rows["a0"]["relpath"]).write_bytes(b"PAR1 damaged")
    redo = run_here(spec, replica)
    # b's first block reuses the vectors of its surviving docs file; the damaged one cannot.
    assert (redo.embedded, redo.reused, redo.skipped) == (3 + 1, 2, 5)
    assert set(output_rows(spec.output)) == set(rows)


def test_another_fingerprint_redoes_every_block_and_reuses_nothing(tmp_path, replica):
    make_input(tmp_path / "in")
    run_here(stage_spec(tmp_path), replica)
    other = run_here(stage_spec(tmp_path, FINGERPRINT_A | {"prompt": "passage: "}), replica)
    assert (other.embedded, other.reused, other.skipped) == (11, 0, 0)


def test_duplicates_and_bad_rows_are_rejected_and_listed_once_per_file(tmp_path, replica):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    excluded = {"docs/b.jsonl": {"2": "duplicate id: first seen in docs/a.jsonl row 0"}}
    (tmp_path / "in" / "docs" / "a.jsonl").open("a").write('{"id": "bad", "text": ""}\n')
    tally = run_here(spec, replica, excluded)
    assert tally.rejected == 2 and dict(tally.rejected_by_kind) == {
        "duplicate id": 1,
        "empty or whitespace-only text": 1,
    }
    assert len(tally.rejection_files) == 2
    listed = list(spec.output.read_rejections())
    assert {(r["file"], r["row"]) for r in listed} == {("docs/a.jsonl", 7), ("docs/b.jsonl", 2)}


# -- what is stale ---------------------------------------------------------------------------


def test_output_of_removed_rows_files_and_collections_leaves_output(tmp_path, replica):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    (tmp_path / "in" / "docs" / "a.jsonl").open("a").write('{"id": "bad", "text": ""}\n')
    run_here(spec, replica)
    # a.jsonl loses its last block and its bad row; b.jsonl's rows all stay in docs now.
    shorter = [{"id": f"a{i}", "text": f"alpha {i}"} for i in range(6)]
    write_jsonl(tmp_path / "in" / "docs" / "a.jsonl", shorter)
    unrouted = [{"id": f"b{i}", "text": f"beta {i}"} for i in range(4)]
    write_jsonl(tmp_path / "in" / "docs" / "b.jsonl", unrouted)
    tally = run_here(spec, replica)
    assert tally.embedded == 0  # every vector is reused
    rows = output_rows(spec.output)
    assert set(rows) == {f"a{i}" for i in range(6)} | {f"b{i}" for i in range(4)}
    assert all(r["relpath"].startswith("collection=docs/") for r in rows.values())
    assert not list(spec.output.read_rejections())
    # A whole input file removed: its output goes.
    (tmp_path / "in" / "docs" / "b.jsonl").unlink()
    run_here(spec, replica)
    assert set(output_rows(spec.output)) == {f"a{i}" for i in range(6)}


def test_reusable_vectors_ignore_files_of_another_fingerprint(tmp_path, replica):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    run_here(spec, replica)
    path_hash = spec.input.list_files()[0].path_hash
    files = [
        f
        for block, found in spec.output.committed_files().items()
        for f in found
        if block.path_hash == path_hash
    ]
    mine = commit.reusable_vectors(files, spec.fingerprint_id, "embedding", spec.output)
    assert mine.num_rows == 7 and mine.column("embedding").type == pa.list_(pa.float32(), 384)
    assert commit.reusable_vectors(files, "0" * 16, "embedding", spec.output) is None
    keys = json.loads(footer_of(spec.output, files[0].relpath)[commit.FOOTER_ROW_KEYS])
    assert keys == commit.row_keys(["a0", "a1", "a2"], ["alpha 0", "alpha 1", "alpha 2"])


class FailingInput(InputFolder):
    """INPUT whose storage fails for one file once its first bytes are read."""

    def __init__(self, uri: str, failing: str):
        super().__init__(uri)
        self.failing = failing

    def open(self, relpath: str, mode: str = "rb", **kwargs):
        handle = super().open(relpath, mode, **kwargs)
        if relpath != self.failing:
            return handle
        original = handle.read
        calls = {"n": 0}

        def read(size=-1):
            calls["n"] += 1
            if calls["n"] > 1:
                raise ConnectionResetError(104, "Connection reset by peer")
            return original(min(size, 40) if size and size > 0 else 40)

        handle.read = read
        return handle


def test_a_storage_failure_leaves_the_file_for_a_rerun_and_keeps_its_output(tmp_path, replica):
    make_input(tmp_path / "in")
    spec = stage_spec(tmp_path)
    (tmp_path / "in" / "docs" / "a.jsonl").open("a").write('{"id": "bad", "text": ""}\n')
    run_here(spec, replica)
    before = output_rows(spec.output)
    rejections_before = list(spec.output.read_rejections())

    failing = StageSpec(**{**spec.__dict__, "input": FailingInput(spec.input.uri, "docs/a.jsonl")})
    tally = run_here(failing, replica)
    assert set(tally.unread) == {"docs/a.jsonl"}
    assert "ConnectionResetError" in tally.unread["docs/a.jsonl"]
    assert tally.rejected == 0 and not tally.cut_files  # not bad input
    # Nothing of a.jsonl was removed as stale: its rows and its rejections wait for a rerun.
    assert output_rows(spec.output) == before
    assert list(spec.output.read_rejections()) == rejections_before


def test_a_corrupt_file_is_set_aside_whole_and_counted_as_a_file(tmp_path, replica):
    make_input(tmp_path / "in")
    (tmp_path / "in" / "docs" / "c.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    tally = run_here(stage_spec(tmp_path), replica)
    assert tally.rows == 11 and not tally.unread
    (cut,) = tally.cut_files
    assert (cut["file"], cut["from_row"]) == ("docs/c.jsonl.gz", 0)
    assert cut["reason"].startswith("unreadable file")


# -- small files, packed ---------------------------------------------------------------------


def make_small_files(root, count: int = 40) -> dict[str, str]:
    """`count` files of two rows each, one file per document: id -> text."""
    expected = {}
    for f in range(count):
        records = [{"id": f"d{f}-{r}", "text": f"document {f}, chunk {r}"} for r in range(2)]
        write_jsonl(root / "docs" / f"d{f:03d}.jsonl", records)
        expected.update({r["id"]: r["text"] for r in records})
    return expected


def test_small_files_share_blocks_and_an_edit_or_removal_touches_only_its_rows(
    tmp_path, replica, bare_model
):
    expected = make_small_files(tmp_path / "in")
    spec = StageSpec(**{**stage_spec(tmp_path).__dict__, "block_rows": 16})
    first = run_here(spec, replica)
    assert (first.rows, first.embedded) == (80, 80)
    assert 2 <= first.files_written <= 8  # 40 input files, about 16 rows per output file
    assert {i: r["text"] for i, r in output_rows(spec.output).items()} == expected

    # One row of one file edited: only that row is encoded; its pack alone is rewritten.
    edited = [{"id": "d17-0", "text": "document 17, chunk 0"}, {"id": "d17-1", "text": "edited"}]
    write_jsonl(tmp_path / "in" / "docs" / "d017.jsonl", edited)
    again = run_here(spec, replica)
    assert (again.embedded, again.files_written) == (1, 1)
    assert again.reused + again.embedded + again.skipped == 80 and again.reused >= 1
    rows = output_rows(spec.output)
    np.testing.assert_allclose(
        rows["d17-1"]["embedding"], reference_vectors(bare_model, ["edited"], 384)[0], atol=1e-5
    )

    # A file touched but unchanged: its pack is read again and found done; nothing written.
    (tmp_path / "in" / "docs" / "d005.jsonl").touch()
    touched = run_here(spec, replica)
    assert (touched.embedded, touched.reused, touched.files_written) == (0, 0, 0)

    # One file removed: its two rows leave OUTPUT, nothing is encoded, the rest stays.
    (tmp_path / "in" / "docs" / "d023.jsonl").unlink()
    removed = run_here(spec, replica)
    assert removed.embedded == 0 and removed.files_written <= 2
    assert set(output_rows(spec.output)) == set(expected) - {"d23-0", "d23-1"}
