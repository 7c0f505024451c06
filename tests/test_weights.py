"""The weights a run used, pinned: resolved once, digested, and loaded only when they match."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedder import Replica, ReplicaSpec
from embedder.weights import WeightsMismatch, locate
from tests.conftest import REPO, plain_env


@pytest.fixture()
def model_copy(model_path, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_path, copy)
    return copy


def test_the_digest_covers_the_files_that_load_and_only_those(model_copy, tmp_path):
    weights = locate(str(model_copy), True)
    assert weights.digest.startswith("sha256:") and weights.revision == ""
    assert weights.files == 11  # configs, tokenizer, weights; not README.md, .gitattributes
    # Documentation and other runtimes' weights do not load: they change nothing.
    (model_copy / "README.md").write_text("new card")
    (model_copy / "onnx").mkdir()
    (model_copy / "onnx" / "model.onnx").write_bytes(b"onnx")
    (model_copy / "pytorch_model.bin").write_bytes(b"skipped beside safetensors")
    assert locate(str(model_copy), True).digest == weights.digest
    # The same files elsewhere are the same weights.
    moved = shutil.copytree(model_copy, tmp_path / "moved")
    assert locate(str(moved), True).digest == weights.digest
    # Any file that loads changes them.
    config = model_copy / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 128}))
    assert locate(str(model_copy), True).digest != weights.digest


def test_a_replica_loads_only_the_weights_it_pins(model_copy):
    pinned = locate(str(model_copy), True).digest
    spec = ReplicaSpec(str(model_copy), True, 384, device="cpu", weights_digest=pinned)
    assert Replica(spec).embed(["pinned"]).shape == (1, 384)
    (model_copy / "vocab.txt").write_text((model_copy / "vocab.txt").read_text() + "newword\n")
    with pytest.raises(WeightsMismatch, match=f"OUTPUT was made with {pinned}"):
        Replica(spec)


def test_a_hub_model_is_pinned_to_the_commit_of_its_snapshot(model_path, tmp_path):
    """The hub's cache, laid out as huggingface_hub keeps it (offline here): the revision a
    run resolves is the snapshot's commit, whatever branch name it was asked for."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--example--mini"
    shutil.copytree(model_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    program = (
        "from embedder.weights import locate; import json; w = locate('example/mini', False);"
        "print(json.dumps([w.revision, w.digest, w.folder]))"
    )
    found = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env=plain_env(HF_HUB_CACHE=str(tmp_path / "hub")),
        capture_output=True,
        text=True,
        check=True,
    )
    revision, digest, folder = json.loads(found.stdout)
    assert revision == commit and folder.endswith(commit)
    assert digest == locate(model_path, True).digest
