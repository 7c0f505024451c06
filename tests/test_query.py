"""Queries made exactly like the index: QueryEncoder from OUTPUT's manifest, and jobs.search."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jobs.query import ManifestError, QueryEncoder
from tests.conftest import REPO, plain_env, read_output, real_texts, run_job_cli, write_jsonl

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
        cwd=REPO, env=plain_env(), capture_output=True, text=True, timeout=300,
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


# -- an OUTPUT from someone else: its manifest is data ----------------------------------------

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
def get_model_path():
    return {model!r}
"""


def crafted_output(demo_output, tmp_path, change) -> tuple:
    """A copy of the demo OUTPUT's manifest, changed by `change(manifest, output)`, and a
    marker file that any code planted in it would create."""
    output = tmp_path / "crafted"
    output.mkdir()
    manifest = json.loads((demo_output / "_manifest.json").read_text())
    marker = tmp_path / "code-ran"
    change(manifest, output, marker)
    (output / "_manifest.json").write_text(json.dumps(manifest))
    return output, marker


def plant_package(folder, name, marker, model_path) -> None:
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text(EVIL.format(marker=str(marker), model=model_path))


def test_a_package_the_manifest_names_is_never_imported(demo_output, tmp_path, model_path):
    def evil_package(manifest, output, marker):
        manifest["registry_entry"]["local_package"] = "evil_weights"
        plant_package(output, "evil_weights", marker, model_path)

    output, marker = crafted_output(demo_output, tmp_path, evil_package)
    with pytest.raises(ManifestError, match="'evil_weights' .* not the registry's own"):
        QueryEncoder.from_output(str(output))
    # python -m jobs.search has the current folder on sys.path: run from inside OUTPUT.
    result = subprocess.run(
        [sys.executable, "-m", "jobs.search", ".", "a query"],
        cwd=output, env=plain_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "not the registry's own" in result.stderr
    assert not marker.exists()


def test_the_registrys_own_package_is_not_imported_from_inside_output(
    demo_output, tmp_path, model_path
):
    """The registry's package name, shadowed by a package of that name shipped in OUTPUT."""

    def shadowing(manifest, output, marker):
        plant_package(output, manifest["registry_entry"]["local_package"], marker, model_path)

    output, marker = crafted_output(demo_output, tmp_path, shadowing)
    result = subprocess.run(
        [sys.executable, "-m", "jobs.search", ".", "a query"],
        cwd=output, env=plain_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "would be imported from inside OUTPUT" in result.stderr
    assert not marker.exists()


def test_files_the_manifest_names_must_lie_inside_output(demo_output, tmp_path):
    secret = tmp_path / "secret.npy"
    secret.write_bytes(b"not yours")
    for case, name in enumerate(("../secret.npy", str(secret), "file:///etc/hostname", "link.npy")):

        def rotation_elsewhere(manifest, output, marker, name=name):
            (output / "link.npy").symlink_to(secret)  # a link inside that points outside
            manifest["calibration"] = {"rows": 1, "rotation": {"method": "pca", "file": name}}

        (tmp_path / str(case)).mkdir()
        output, _ = crafted_output(demo_output, tmp_path / str(case), rotation_elsewhere)
        with pytest.raises(ManifestError, match="is not a file inside"):
            QueryEncoder.from_output(str(output))


def test_a_model_folder_inside_output_or_other_weights_are_refused(
    demo_output, tmp_path, model_path
):
    import shutil

    def model_inside(manifest, output, marker):
        shutil.copytree(model_path, output / "model")
        manifest["registry_entry"] |= {"path": str(output / "model"), "local_package": ""}

    (tmp_path / "a").mkdir()
    output, _ = crafted_output(demo_output, tmp_path / "a", model_inside)
    with pytest.raises(ManifestError, match="model folder inside OUTPUT"):
        QueryEncoder.from_output(str(output))

    def other_weights(manifest, output, marker):
        manifest["weights"]["digest"] = "sha256:" + "0" * 64

    (tmp_path / "b").mkdir()
    output, _ = crafted_output(demo_output, tmp_path / "b", other_weights)
    with pytest.raises(ManifestError, match="queries would not match OUTPUT's vectors"):
        QueryEncoder.from_output(str(output))


def test_remote_code_needs_the_revision_output_recorded(demo_output, tmp_path):
    from registry import PolicyError

    def remote_code(manifest, output, marker):
        manifest["registry_entry"] |= {"trust_remote_code": True, "local_package": ""}
        manifest["weights"]["revision"] = None

    output, _ = crafted_output(demo_output, tmp_path, remote_code)
    with pytest.raises(PolicyError, match="--trust-remote-code"):
        QueryEncoder.from_output(str(output))
    with pytest.raises(PolicyError, match="no revision is pinned"):
        QueryEncoder.from_output(str(output), trust_remote_code=True)
