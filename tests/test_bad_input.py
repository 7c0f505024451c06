"""Bad input is counted and set aside with a reason; it never crashes the run or escapes OUTPUT."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import read_output, real_texts, run_job_cli, write_jsonl


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def build_bad_corpus(root: Path) -> tuple[set[str], dict[str, str]]:
    """Good rows (ids returned) and one of each kind of bad input (row -> expected reason)."""
    texts = [t.splitlines()[0][:80] for t in real_texts(60)]
    good = set()
    for f in range(2):
        records = [{"id": f"g{f}-{i}", "text": texts[f * 30 + i]} for i in range(30)]
        write_jsonl(root / "docs" / f"good-{f}.jsonl", records)
        good |= {r["id"] for r in records}
    long_text = "token " * 2000  # far past the model's 256 tokens: truncated, counted, kept
    lines = [
        json.dumps({"id": "long-1", "text": long_text}).encode(),
        b'{"id": "broken", "text": ',
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"id": "null-text", "text": None}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "blank", "text": " \t\n "}).encode(),
        json.dumps({"id": "number", "text": 12}).encode(),
        json.dumps({"id": "list", "text": ["a"]}).encode(),
        b'{"id": "latin1", "text": "caf\xe9"}',
        json.dumps({"id": "g0-3", "text": "same id as a row of good-0.jsonl"}).encode(),
        json.dumps({"id": "dup-here", "text": "first"}).encode(),
        json.dumps({"id": "dup-here", "text": "second"}).encode(),
        json.dumps({"id": "slash", "text": "x", "collection": "a/b"}).encode(),
        json.dumps({"id": "dots", "text": "x", "collection": ".."}).encode(),
        json.dumps({"id": "escape", "text": "x", "collection": "../../escaped"}).encode(),
        json.dumps({"id": "abs", "text": "x", "collection": "/tmp/escaped"}).encode(),
        json.dumps({"id": "nul", "text": "x", "collection": "a\u0000b"}).encode(),
        b"[1, 2, 3]",
        # Well-formed JSON Arrow cannot hold as it is: half an emoji, a number beyond 64 bits.
        json.dumps({"id": "cut-emoji", "text": "half an emoji \ud83d"}).encode(),
        json.dumps({"id": "huge", "text": "a number beyond 64 bits", "n": 2**64}).encode(),
    ]
    (root / "mixed").mkdir()
    (root / "mixed" / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good |= {"long-1", "dup-here", "huge"}
    # A byte-order mark before the first row of a file is not part of it.
    (root / "docs" / "bom.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"id": "bom-1", "text": texts[0]}).encode() + b"\n"
    )
    good.add("bom-1")
    expected_reasons = {
        "mixed/bad.jsonl:1": "malformed JSON",
        "mixed/bad.jsonl:2": "missing text column",
        "mixed/bad.jsonl:3": "null text",
        "mixed/bad.jsonl:4": "empty or whitespace-only text",
        "mixed/bad.jsonl:5": "empty or whitespace-only text",
        "mixed/bad.jsonl:6": "text is not a string",
        "mixed/bad.jsonl:7": "text is not a string",
        "mixed/bad.jsonl:8": "invalid UTF-8",
        "mixed/bad.jsonl:9": "duplicate id: first seen in docs/good-0.jsonl row 3",
        "mixed/bad.jsonl:11": "duplicate id: first seen in mixed/bad.jsonl row 10",
        "mixed/bad.jsonl:12": "invalid collection name 'a/b'",
        "mixed/bad.jsonl:13": "invalid collection name '..'",
        "mixed/bad.jsonl:14": "invalid collection name '../../escaped'",
        "mixed/bad.jsonl:15": "invalid collection name '/tmp/escaped'",
        "mixed/bad.jsonl:16": "invalid collection name",
        "mixed/bad.jsonl:17": "not a JSON object",
        "mixed/bad.jsonl:18": "the text is not valid Unicode: a lone surrogate \\ud83d",
        "tables/corrupt.parquet:0": "unreadable file",
        "zipped/cut.jsonl.gz:0": "unreadable file",
        "bad name!/a.jsonl:0": "invalid collection name 'bad name!'",
    }
    (root / "tables").mkdir()
    (root / "tables" / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    pq.write_table(
        pa.table({"id": ["t1"], "text": ["a fine parquet row"]}), root / "tables" / "ok.parquet"
    )
    good.add("t1")
    (root / "zipped").mkdir()
    data = gzip.compress(
        b"".join(json.dumps({"text": f"z{i}"}).encode() + b"\n" for i in range(50))
    )
    (root / "zipped" / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    write_jsonl(root / "bad name!" / "a.jsonl", [{"id": "weird-folder", "text": "x"}])
    return good, expected_reasons


def test_every_bad_row_is_set_aside_with_its_reason_and_the_run_succeeds(tmp_path):
    root = tmp_path / "in"
    good, expected_reasons = build_bad_corpus(root)
    output = tmp_path / "out"
    before = tree(tmp_path)

    result = run_job_cli(
        [str(root), str(output), "all-miniLM-l6", "--max-rejected-fraction", "0.5"]
    )
    # Every row is written or set aside, but two files could not be decoded at all: their rows
    # are unknown, so the run says so with exit 3 whatever the rejected fraction.
    assert result.returncode == 3, result.stderr[-3000:]
    assert "2 input file(s) could not be decoded" in result.stderr

    embedded = {i for t in read_output(output).values() for i in t.column("id").to_pylist()}
    assert embedded == good
    rejected = {}
    for path in (output / "_rejected").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            rejected[f"{record['file']}:{record['row']}"] = record["reason"]
    assert set(rejected) == set(expected_reasons)
    for where, reason in expected_reasons.items():
        assert rejected[where].startswith(reason), (where, rejected[where])

    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_rejected"] == len(expected_reasons)
    assert manifest["rows_in_output"] == len(good)
    assert manifest["files_rejected"] == 2 and manifest["files_unread"] == []
    assert [(f["file"], f["from_row"]) for f in manifest["rejected_files"]] == [
        ("tables/corrupt.parquet", 0),
        ("zipped/cut.jsonl.gz", 0),
    ]
    assert manifest["rows_truncated_to_max_tokens"] == 1
    assert manifest["rejected_by_reason"]["duplicate id"] == 2
    # Nothing was written outside OUTPUT; inside it, only collection folders and job files.
    assert {p for p in tree(tmp_path) - before if not p.startswith("out")} == set()
    top = {p.name for p in output.iterdir()}
    assert top == {
        "_manifest.json",
        "_fingerprint.json",
        "_rejected",
        "collection=docs",
        "collection=mixed",
        "collection=tables",
    }


def test_too_many_rejections_exit_3_after_writing_everything(tmp_path):
    root = tmp_path / "in"
    build_bad_corpus(root)
    output = tmp_path / "out"
    result = run_job_cli([str(root), str(output), "all-miniLM-l6"])
    assert result.returncode == 3, result.stderr[-2000:]
    assert "max-rejected-fraction" in result.stderr
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_rejected"] > 0.01 * (
        manifest["rows_rejected"] + manifest["rows_in_output"]
    )


def test_one_corrupt_file_among_good_ones_is_a_rejected_file_and_exit_3(tmp_path):
    root = tmp_path / "in"
    write_jsonl(root / "docs" / "good.jsonl", [{"id": "a", "text": "a fine row"}])
    (root / "docs" / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08 cut short")
    output = tmp_path / "out"
    result = run_job_cli([str(root), str(output), "all-miniLM-l6", "--max-rejected-fraction", "1"])
    assert result.returncode == 3, result.stderr[-3000:]
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["files_rejected"] == 1 and manifest["rows_in_output"] == 1
    assert manifest["rejected_files"][0]["file"] == "docs/broken.jsonl.gz"
    assert re.search(r"^  files set aside\s+1\b", result.stdout, re.M)


def test_a_corpus_whose_only_file_cannot_be_read_exits_1_naming_it(tmp_path):
    """A storage failure on every file: nothing to embed, and not a crash."""
    folder = tmp_path / "in" / "docs"
    folder.mkdir(parents=True)
    (folder / "a.jsonl").symlink_to(tmp_path / "vanished.jsonl")  # listed, then unreadable
    output = tmp_path / "out"
    result = run_job_cli([str(tmp_path / "in"), str(output), "all-miniLM-l6"])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "could not read docs/a.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    manifest = json.loads((output / "_manifest.json").read_text())
    assert [f["file"] for f in manifest["files_unread"]] == ["docs/a.jsonl"]
    assert manifest["rows_in_output"] == manifest["rows_embedded"] == 0
