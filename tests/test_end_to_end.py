"""The whole job as a user runs it: CLI and env-only, real Ray, real model, Parquet read back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import job_env, read_output, reference_vectors, run_job_cli

MANIFEST_FIELDS = {
    "model",
    "hf_id",
    "revision",
    "weights",
    "native_dim",
    "dim",
    "matryoshka",
    "truncation_verified",
    "normalized",
    "prompt",
    "dtype",
    "devices",
    "replicas",
    "per_replica",
    "rows_embedded",
    "rows_skipped",
    "rows_rejected",
    "timings",
    "tokens_per_second",
    "settings",
}


def run_cli_ok(corpus_root, output, *extra, env=None):
    result = run_job_cli([str(corpus_root), str(output), "all-miniLM-l6", *extra], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def cli_runs(mixed_corpus, tmp_path_factory):
    """One CLI run at the native dim and one truncated to 128, shared by the tests below."""
    out = tmp_path_factory.mktemp("out")
    run_cli_ok(mixed_corpus["root"], out / "d384")
    run_cli_ok(mixed_corpus["root"], out / "d128", "128", "--allow-non-matryoshka")
    return {384: out / "d384", 128: out / "d128"}


@pytest.mark.parametrize("dim", [384, 128])
def test_every_row_once_with_its_collection_and_metadata(cli_runs, mixed_corpus, dim):
    tables = read_output(cli_runs[dim])
    expected = mixed_corpus["expected"]
    assert set(tables) == {"docs", "code", "tables", "default", "faq"}
    ids = [i for t in tables.values() for i in t.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == set(expected)
    for collection, table in tables.items():
        for row_id in table.column("id").to_pylist():
            assert expected[row_id]["collection"] == collection
    docs = {r["id"]: r for r in tables["docs"].to_pylist()}
    assert docs["doc-3"]["lang"] == "en" and docs["doc-3"]["page"] == 3
    assert tables["faq"].column("page").to_pylist()[0].startswith("p")
    # Each collection has its own columns, not the union of all collections'.
    assert "page" not in tables["code"].column_names and "path" not in tables["docs"].column_names
    code_paths = {r["path"] for r in tables["code"].to_pylist()}
    assert code_paths == {f"src/m{i}.py" for i in range(10)}
    # Parquet metadata keeps its exact types.
    source_schema = mixed_corpus["parquet_schema"]
    for name in ("score", "count", "tags"):
        assert tables["tables"].schema.field(name).type == source_schema.field(name).type


@pytest.mark.parametrize("dim", [384, 128])
def test_vectors_match_sentence_transformers_and_are_unit_length(
    cli_runs, mixed_corpus, bare_model, dim
):
    expected = mixed_corpus["expected"]
    for table in read_output(cli_runs[dim]).values():
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), dim)
        ids = table.column("id").to_pylist()
        ours = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
        reference = reference_vectors(bare_model, [expected[i]["text"] for i in ids], dim)
        assert ours.shape == (len(ids), dim)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        cosines = np.sum(ours * reference, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosines.min() >= 0.9999, cosines.min()


@pytest.mark.parametrize("dim", [384, 128])
def test_manifest_holds_the_design_fields(cli_runs, mixed_corpus, dim):
    manifest = json.loads((cli_runs[dim] / "_manifest.json").read_text())
    assert MANIFEST_FIELDS <= set(manifest)
    assert manifest["dim"] == dim and manifest["native_dim"] == 384
    assert manifest["rows_embedded"] == len(mixed_corpus["expected"])
    assert manifest["rows_skipped"] == 0 and manifest["rows_rejected"] == 0
    assert manifest["normalized"] is True
    assert manifest["truncation_verified"] is (dim == 384)
    assert manifest["replicas"] == 1 and manifest["per_replica"][0]["device"] == "cpu"
    assert manifest["devices"] == ["cpu"] and manifest["manifest_version"] == 3
    replica = manifest["per_replica"][0]
    assert replica["peak_memory_of"] == "rss" and replica["peak_memory_bytes"] > 100 * 2**20
    # Fed the read stage's token ids: the replica never tokenized a text.
    assert replica["tokenizer"] and replica["tokenizes_texts_because"] == ""
    assert replica["tokenize_seconds"] == 0
    assert 0 <= replica["waited_for_input_seconds"] <= replica["fed_seconds"]
    assert 0 < replica["fed_seconds"] <= replica["alive_seconds"]
    assert manifest["dtype"] == "fp32"
    assert manifest["settings"]["dim"] == (None if dim == 384 else 128)


def test_env_only_run_gives_the_same_output_as_the_cli(cli_runs, mixed_corpus, tmp_path):
    output = tmp_path / "env-run"
    env = job_env(
        EMBED_INPUT=str(mixed_corpus["root"]),
        EMBED_OUTPUT=str(output),
        EMBED_MODEL="all-miniLM-l6",
        EMBED_DIM="128",
        EMBED_ALLOW_NON_MATRYOSHKA="1",
    )
    result = run_job_cli([], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    env_tables, cli_tables = read_output(output), read_output(cli_runs[128])
    assert set(env_tables) == set(cli_tables)
    for name, cli_table in cli_tables.items():
        env_table = env_tables[name].sort_by("id")
        cli_table = cli_table.sort_by("id")
        assert env_table.column("id").equals(cli_table.column("id"))
        np.testing.assert_allclose(
            np.asarray(env_table.column("embedding").to_pylist()),
            np.asarray(cli_table.column("embedding").to_pylist()),
            atol=1e-6,
        )
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["settings"]["input"] == str(mixed_corpus["root"])
