"""Queries made exactly like the index: QueryEncoder from OUTPUT's manifest, and jobs.search."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jobs.query import ManifestError, QueryEncoder
from tests.conftest import REPO, job_env, read_output, real_texts, run_job_cli, write_jsonl

QUERIES = [
    "how do I pretty-print JSON from the shell?",
    "parse command line options",
    "read a CSV file with a custom delimiter",
]


@pytest.fixture(scope="module")
def prompted_run(tmp_path_factory, model_path):
    """A run of a model whose registry entry has its own document and query prompts, written
    with two widths and int8 codes."""
    root = tmp_path_factory.mktemp("prompted")
    texts = [t.splitlines()[0][:200] for t in real_texts(40)]
    # Metadata named like two of the run's output columns: kept as input_<name>.
    records = [
        {"id": f"d{i}", "text": t, "embedding_128": [i], "embedding_384_int8": f"m{i}"}
        for i, t in enumerate(texts)
    ]
    write_jsonl(root / "in" / "docs" / "a.jsonl", records)
    registry_file = root / "models.toml"
    registry_file.write_text(
        f'[models."prompted-minilm"]\npath = "{model_path}"\nnative_dim = 384\n'
        'matryoshka = "unknown"\nmax_tokens = 256\ndocument_prompt = "passage: "\n'
        'query_prompt = "query: "\n'
    )
    output = root / "out"
    result = run_job_cli(
        [str(root / "in"), str(output), "prompted-minilm", "--registry-file", str(registry_file),
         "--dims", "384,128", "--precision", "int8"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    registry_file.unlink()  # the query side must not need it
    return output


def test_input_columns_named_like_output_columns_are_kept_apart(prompted_run):
    table = read_output(prompted_run)["docs"]
    rows = {row["id"]: row for row in table.to_pylist()}
    assert rows["d3"]["input_embedding_128"] == [3]
    assert rows["d3"]["input_embedding_384_int8"] == "m3"
    assert len(rows["d3"]["embedding_128"]) == 128
    assert len(table.column_names) == len(set(table.column_names))


def test_stored_rows_are_reproduced_exactly_from_the_output_alone(prompted_run):
    table = read_output(prompted_run)["docs"]
    encoder = QueryEncoder.from_output(str(prompted_run))
    assert encoder.columns == [
        "embedding_384", "embedding_384_int8", "embedding_128", "embedding_128_int8",
    ]  # fmt: skip
    again = encoder.encode(table.column("text").to_pylist(), as_documents=True)
    for dim in (384, 128):
        stored = np.asarray(table.column(f"embedding_{dim}").to_pylist(), dtype=np.float32)
        assert np.sum(stored * again[f"embedding_{dim}"], axis=1).min() >= 0.9999
        codes = np.asarray(table.column(f"embedding_{dim}_int8").to_pylist(), dtype=np.int8)
        np.testing.assert_array_equal(again[f"embedding_{dim}_int8"], codes)


def test_queries_get_the_query_prompt_the_dims_and_the_stored_ranges(prompted_run, bare_model):
    from sentence_transformers.util.quantization import quantize_embeddings

    manifest = json.loads((prompted_run / "_manifest.json").read_text())
    assert manifest["query_prompt"] == "query: " and manifest["prompt"] == "passage: "
    encoder = QueryEncoder.from_output(str(prompted_run))
    ours = encoder.encode(QUERIES)
    for dim in (384, 128):
        reference = bare_model.encode(
            QUERIES, prompt="query: ", truncate_dim=dim, normalize_embeddings=True
        )
        assert np.sum(ours[f"embedding_{dim}"] * reference, axis=1).min() >= 0.9999
        ranges = np.asarray(manifest["calibration"]["ranges"][str(dim)])
        np.testing.assert_array_equal(
            ours[f"embedding_{dim}_int8"],
            quantize_embeddings(ours[f"embedding_{dim}"], precision="int8", ranges=ranges),
        )
    as_documents = encoder.encode(QUERIES, as_documents=True)["embedding_384"]
    assert np.sum(as_documents * ours["embedding_384"], axis=1).max() < 0.999  # other prompt


def test_a_manifest_of_another_layout_names_what_is_missing(tmp_path):
    (tmp_path / "_manifest.json").write_text(json.dumps({"manifest_version": 1, "dims": [384]}))
    with pytest.raises(ManifestError) as refused:
        QueryEncoder.from_output(str(tmp_path))
    message = str(refused.value)
    assert "manifest version 1" in message and "registry_entry" in message
    assert "fingerprint" in message and "Rerun the job" in message
    with pytest.raises(ManifestError, match="not a finished job's OUTPUT"):
        QueryEncoder.from_output(str(tmp_path / "empty"))


def search_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.search", *args],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_search_prints_the_hits_numpy_finds(demo_output):
    result = search_cli(str(demo_output), QUERIES[0], "-k", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    rank, score, collection, identifier = lines[0].split()[:4]
    # The same search with numpy over every stored vector.
    tables = read_output(demo_output)
    ids = [i for t in tables.values() for i in t.column("id").to_pylist()]
    matrix = np.concatenate(
        [np.asarray(t.column("embedding").to_pylist(), dtype=np.float32) for t in tables.values()]
    )
    query = QueryEncoder.from_output(str(demo_output)).encode([QUERIES[0]])["embedding"][0]
    found = matrix @ query
    assert (rank, identifier) == ("1", ids[int(np.argmax(found))])
    assert float(score) == pytest.approx(float(found.max()), abs=1e-4)
    collection_of = {i: name for name, t in tables.items() for i in t.column("id").to_pylist()}
    assert collection == collection_of[identifier]


def test_search_refuses_a_column_or_collection_output_does_not_have(demo_output):
    column = search_cli(str(demo_output), "x", "--column", "embedding_128")
    assert column.returncode == 2
    assert "no column 'embedding_128'; its vector columns: ['embedding']" in column.stderr
    collection = search_cli(str(demo_output), "x", "--collection", "nope")
    assert collection.returncode == 2
    assert "its collections: ['code', 'docs', 'faq']" in collection.stderr


def test_search_of_int8_codes_with_rescoring_finds_the_float_top_hit(prompted_run):
    from jobs.pipeline.folders import OutputFolder
    from jobs.retrieval.search import search

    encoder = QueryEncoder.from_output(str(prompted_run))
    output = OutputFolder(str(prompted_run))
    for text in QUERIES:
        query = {name: vectors[0] for name, vectors in encoder.encode([text]).items()}
        floats = search(output, query, "embedding_384", k=5)
        codes = search(output, query, "embedding_384_int8", k=5, rescore=20)
        assert [h.id for h in codes] == [h.id for h in floats]
        assert [h.score for h in codes] == pytest.approx([h.score for h in floats], abs=1e-6)
