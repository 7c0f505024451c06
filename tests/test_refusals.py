"""Runs the policy refuses: exit code 2 before any work, with a message that says what to do."""

from __future__ import annotations

import pytest

from tests.conftest import job_env, run_job_cli, write_jsonl


@pytest.fixture()
def tiny_corpus(tmp_path):
    write_jsonl(tmp_path / "in" / "docs" / "a.jsonl", [{"id": "1", "text": "hello"}])
    return tmp_path / "in"


def refused(args, env=None):
    result = run_job_cli(args, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    # Refused before any work: Ray never started.
    assert "Started a local Ray instance" not in result.stderr
    return result.stderr


def test_dim_above_native_names_the_native_dim(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    message = refused([str(tiny_corpus), str(out), "all-miniLM-l6", "512"])
    assert "native dim 384" in message
    assert not out.exists()


def test_unknown_model_lists_the_registry(tiny_corpus, tmp_path):
    message = refused([str(tiny_corpus), str(tmp_path / "out"), "no-such-model"])
    assert "unknown model 'no-such-model'" in message
    for name in ("all-miniLM-l6", "jina-embeddings-v4", "bge-m3", "qdrant-minilm-onnx"):
        assert name in message
    assert "--registry-file" in message


def test_truncating_a_non_matryoshka_model_needs_the_flag(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    message = refused([str(tiny_corpus), str(out), "all-miniLM-l6", "128"])
    assert "not trained for Matryoshka" in message
    assert "--allow-non-matryoshka" in message
    assert not out.exists()


def test_env_configured_truncation_is_refused_the_same_way(tiny_corpus, tmp_path):
    env = job_env(
        EMBED_INPUT=str(tiny_corpus),
        EMBED_OUTPUT=str(tmp_path / "out"),
        EMBED_MODEL="ALL-MINILM-L6",  # names match without regard to case
        EMBED_DIM="128",
    )
    assert "--allow-non-matryoshka" in refused([], env=env)


def test_remote_code_models_need_opt_in_and_a_pinned_revision(tiny_corpus, tmp_path):
    base = [str(tiny_corpus), str(tmp_path / "out"), "jina-embeddings-v4", "256"]
    assert "--trust-remote-code" in refused(base)
    assert "--revision" in refused([*base, "--trust-remote-code"])


def test_missing_arguments_and_bad_values_are_named(tiny_corpus, tmp_path):
    assert "missing MODEL" in refused([str(tiny_corpus), str(tmp_path / "out")])
    message = refused([str(tiny_corpus), str(tmp_path / "o"), "all-miniLM-l6", "--dtype", "fp8"])
    assert "--dtype" in message and "fp8" in message


def test_missing_input_and_non_empty_output(tiny_corpus, tmp_path):
    assert "does not exist" in refused([str(tmp_path / "nope"), str(tmp_path / "o"), "bge-small"])
    out = tmp_path / "used"
    (out / "collection=x").mkdir(parents=True)
    (out / "collection=x" / "part.parquet").write_bytes(b"old")
    assert "--overwrite" in refused([str(tiny_corpus), str(out), "all-miniLM-l6"])
    assert (out / "collection=x" / "part.parquet").read_bytes() == b"old"


def test_a_leased_output_is_refused_naming_the_holder_and_nothing_is_written(tiny_corpus, tmp_path):
    import datetime as dt
    import json
    import os
    import socket

    from jobs.pipeline.lease import process_start, this_machine

    out = tmp_path / "out"
    out.mkdir()
    now = dt.datetime.now(dt.UTC).isoformat()
    # A live run on this machine (this test's own process): refused at once.
    holder = {"run_id": "the-other-run", "host": socket.gethostname(), "pid": os.getpid(),
              "process_start": process_start(os.getpid()), **this_machine(),
              "started_at": now, "heartbeat_at": now}  # fmt: skip
    (out / "_lease.json").write_text(json.dumps(holder))
    message = refused([str(tiny_corpus), str(out), "all-miniLM-l6"])
    assert f"held by run the-other-run (host {socket.gethostname()}, pid {os.getpid()}" in message
    assert "last heartbeat" in message
    assert [p.name for p in out.iterdir()] == ["_lease.json"]
    assert json.loads((out / "_lease.json").read_text()) == holder


def test_output_equal_to_inside_or_containing_input_is_refused_before_anything_is_touched(
    tiny_corpus, tmp_path
):
    """`python -m jobs.embed corpus corpus MODEL --overwrite` must never delete the corpus."""
    from jobs.pipeline.job import main

    before = {p: p.read_bytes() for p in tiny_corpus.rglob("*") if p.is_file()}
    cases = [
        (str(tiny_corpus), "is INPUT"),
        (str(tiny_corpus / "vectors"), "lies inside INPUT"),
        (str(tiny_corpus / "docs" / ".." / "out"), "lies inside INPUT"),
    ]
    for output, where in cases:
        for extra in ([], ["--overwrite"]):
            assert main([str(tiny_corpus), output, "all-miniLM-l6", *extra]) == 2
    outer = tmp_path / "outer"
    (outer / "corpus" / "docs").mkdir(parents=True)
    (outer / "corpus" / "docs" / "a.jsonl").write_text('{"id": "1", "text": "hello"}\n')
    assert main([str(outer / "corpus"), str(outer), "all-miniLM-l6", "--overwrite"]) == 2
    assert (outer / "corpus" / "docs" / "a.jsonl").exists()
    assert {p: p.read_bytes() for p in tiny_corpus.rglob("*") if p.is_file()} == before


def test_the_refusal_names_how_output_and_input_overlap(tiny_corpus, tmp_path):
    message = refused([str(tiny_corpus), str(tiny_corpus / "out"), "all-miniLM-l6", "--overwrite"])
    assert f"OUTPUT '{tiny_corpus / 'out'}' lies inside INPUT '{tiny_corpus}'" in message
    message = refused([str(tmp_path / "in" / "docs"), str(tmp_path), "all-miniLM-l6"])
    assert f"contains INPUT '{tmp_path / 'in' / 'docs'}'" in message


def test_overwrite_never_removes_files_the_job_did_not_write(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    (out / "collection=docs").mkdir(parents=True)
    (out / "_fingerprint.json").write_text("{}")
    (out / "collection=docs" / "part-0123456789abcdef-000000000.parquet").write_bytes(b"job's")
    (out / "notes.txt").write_text("the user's own")
    (out / "collection=docs" / "part.parquet").write_bytes(b"someone else's")
    message = refused([str(tiny_corpus), str(out), "all-miniLM-l6", "--overwrite"])
    assert "holds 2 file(s) this job did not write" in message
    assert "collection=docs/part.parquet, notes.txt" in message
    assert (out / "notes.txt").read_text() == "the user's own"
    assert (out / "collection=docs" / "part-0123456789abcdef-000000000.parquet").exists()
