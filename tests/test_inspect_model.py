"""jobs.inspect_model: a registry entry from what a local model folder says about itself."""

from __future__ import annotations

import json
import subprocess
import sys

from registry import Registry
from tests.conftest import REPO, plain_env


def inspect(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.inspect_model", str(path), "--name", "mine"],
        cwd=REPO, env=plain_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def load_entry(entry: str, tmp_path):
    """The printed entry, pasted into a registry file and loaded as users would."""
    registry_file = tmp_path / "models.toml"
    registry_file.write_text(entry)
    return Registry.load(registry_file).get("mine")


def test_a_folder_without_hints_becomes_an_unknown_entry_that_loads(model_path, tmp_path):
    result = inspect(model_path)
    assert result.returncode == 0, result.stderr
    spec = load_entry(result.stdout, tmp_path)
    curated = Registry.load().get("all-miniLM-l6")
    assert (spec.native_dim, spec.max_tokens) == (curated.native_dim, curated.max_tokens)
    assert spec.matryoshka_dims == curated.matryoshka_dims == ()
    assert spec.document_prompt_label() == curated.document_prompt_label() == ""
    assert spec.query_prompt_name == curated.query_prompt_name == ""
    assert spec.matryoshka == "unknown"  # no hints: the curated registry decides
    assert spec.model_source() == (str(model_path), True)
    assert spec.pooling == "mean, normalized"


def test_matryoshka_hints_and_prompts_are_read(tmp_path):
    folder = tmp_path / "mrl-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"hidden_size": 768, "is_matryoshka": True, "torch_dtype": "bfloat16",
                    "matryoshka_dimensions": [768, 512, 256, 128, 64]})
    )  # fmt: skip
    (folder / "README.md").write_text("---\ntags:\n- loss:MatryoshkaLoss\n---\n# A model\n")
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "search_query: ", "document": "search_document: "}})
    )
    result = inspect(folder)
    assert result.returncode == 0, result.stderr
    spec = load_entry(result.stdout, tmp_path)
    assert spec.matryoshka == "confirmed"
    assert spec.matryoshka_dims == (64, 128, 256, 512, 768)
    assert (spec.document_prompt_name, spec.query_prompt_name) == ("document", "query")
    assert spec.card_dtype == "bf16"
    assert "MatryoshkaLoss" in spec.notes and "is_matryoshka" in spec.notes


def test_a_hub_id_is_not_fetched():
    result = inspect("org/not-a-local-folder")
    assert result.returncode == 2 and "download the model first" in result.stderr


def test_a_trainer_card_with_matryoshka_loss_and_dims_is_proposed_as_confirmed(tmp_path):
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    (folder / "README.md").write_text(
        "---\ntags:\n- sentence-transformers\n- loss:MatryoshkaLoss\n---\n"
        'Trained with MatryoshkaLoss:\n```json\n{"matryoshka_dims": [1024, 512, 256, 64]}\n```\n'
    )
    result = inspect(folder)
    assert result.returncode == 0, result.stderr
    spec = load_entry(result.stdout, tmp_path)
    assert spec.matryoshka == "confirmed"
    assert spec.matryoshka_dims == (64, 256, 512, 1024)
