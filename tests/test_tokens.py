"""Tokenized once: the read stage makes each text's token ids, the replica feeds them to the
model as they are, and the vectors are sentence-transformers' own."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedder import Replica, ReplicaSpec, tokens
from embedder.tokens import TextTokenizer, TokenizerSpec, cached_text_tokenizer
from jobs.pipeline.placement import Node, Placement, place_replicas
from jobs.pipeline.stages import pipeline_dataset
from tests.conftest import REPO, local_ray, reference_vectors, write_jsonl
from tests.test_commit import run_here, stage_spec


@pytest.fixture(scope="module")
def replica(model_path):
    return Replica(ReplicaSpec(source=model_path, source_is_local=True, dim=384, device="cpu"))


def test_the_replica_checked_the_tokenizer_against_the_models_own(replica):
    assert replica.tokenizer_identity and replica.tokenized_by == ""
    assert replica.describe()["tokenizer"] == replica.tokenizer_identity


def test_the_read_stage_ids_are_the_models_own_tokenizers(model_path):
    """Ids and the count of texts cut at the cap, as the model's own tokenizer gives them with
    its truncation, for texts of every kind (and with a prompt in front)."""
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(model_path)
    texts = [
        "plain words",
        "",
        "   ",
        "Ünïcödé, naïve café, straße",
        "中文文本和日本語のテキスト",
        "emoji 🚀🔥 and tabs\tand\nnewlines",
        "def f(x):\n    return x ** 2  # code",
        "word " * 300,
    ]
    for prompt in ("", "query: "):
        tokenizer = TextTokenizer.of(own, 128, prompt)
        tokens = tokenizer.tokenize(texts)
        expected = own([prompt + t for t in texts], truncation=True, max_length=128)
        assert [list(row) for row in tokens.rows()] == expected["input_ids"]
        assert tokens.truncated == 1


def test_every_text_is_tokenized_once_in_the_read_stage_and_never_by_the_replica(
    tmp_path, replica, bare_model, monkeypatch
):
    texts = [f"text number {i} " + "word " * (i % 37) for i in range(40)] + ["x " * 400]
    write_jsonl(
        tmp_path / "in" / "docs" / "a.jsonl",
        [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)],
    )
    seen: list[str] = []
    parallelism: set[str | None] = set()
    real_tokenize = TextTokenizer.tokenize

    def counting(self, batch):
        seen.extend(batch)
        parallelism.add(os.environ.get("TOKENIZERS_PARALLELISM"))
        return real_tokenize(self, batch)

    def refuse(*args, **kwargs):
        raise AssertionError("the replica tokenized a text")

    monkeypatch.setattr(TextTokenizer, "tokenize", counting)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # as a worker may find it
    monkeypatch.setattr(replica.model, "preprocess", refuse)
    monkeypatch.setattr(replica.model, "encode", refuse)
    spec = dataclasses.replace(
        stage_spec(tmp_path), block_rows=16, tokenizer=replica.text_tokenizer
    )
    before = replica.stats.truncated_texts
    tally = run_here(spec, replica)
    assert tally.rows == len(texts)
    assert sorted(seen) == sorted(texts)  # each text once, by the read stage's tokenizer
    assert parallelism == {"false"}  # on the read task's one thread
    assert replica.stats.truncated_texts - before == 1  # the 400-word text, counted
    tables = [pq.read_table(p) for p in sorted((tmp_path / "out").rglob("*.parquet"))]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    ours = np.vstack([np.asarray(t.column("embedding").to_pylist()) for t in tables])
    reference = reference_vectors(bare_model, [texts[int(i[1:])] for i in ids], 384)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999


def test_the_tokenizer_reaches_a_read_task_pickled_and_needs_no_transformers_there(
    tmp_path, replica
):
    """Loaded once where the weights are, it travels as the fast tokenizer's JSON: a read
    task needs neither the weights nor transformers (seconds of import per worker), and
    tokenizes exactly as the replica's own copy."""
    texts = ["query: déjà vu", "def f(x):\n    return x", "word " * 300]
    (tmp_path / "tokenizer.pickle").write_bytes(pickle.dumps(replica.text_tokenizer))
    script = (
        "import pickle\n"
        f"data = open({str(tmp_path / 'tokenizer.pickle')!r}, 'rb').read()\n"
        "tokenizer = pickle.loads(data)\n"
        "assert pickle.loads(data) is tokenizer  # built once per process, not per task\n"
        f"tokens = tokenizer.tokenize({texts!r})\n"
        "print(tokenizer.identity, tokens.truncated, tokens.ids.to_pylist())\n"
    )
    ours = replica.text_tokenizer.tokenize(texts)
    identity, truncated, ids = run_without_transformers(script).split(" ", 2)
    assert identity == replica.tokenizer_identity
    assert (int(truncated), ids.strip()) == (ours.truncated, str(ours.ids.to_pylist()))


def test_the_read_stage_tokenizer_is_kept_per_weights_and_rebuilt_without_transformers(
    tmp_path, monkeypatch, replica, model_path
):
    """Building it imports transformers (about 2 s of the driver's CPU, on every run): kept on
    this machine under the weights' digest and the spec, the next run rebuilds the very same
    tokenizer from what was kept, without transformers."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = []
    load = tokens.load_text_tokenizer
    monkeypatch.setattr(tokens, "load_text_tokenizer", lambda *a: built.append(a) or load(*a))
    spec, digest = replica.spec.tokenizer_spec(), replica.weights.digest
    first = cached_text_tokenizer(Path(model_path), spec, digest)
    assert first.identity == replica.tokenizer_identity and len(built) == 1
    entries = tmp_path / "cache" / "matryoshka-embed" / "tokenizers"
    [entry] = entries.glob("*.json")

    script = (
        "from pathlib import Path\n"
        "from embedder.tokens import TokenizerSpec, cached_text_tokenizer\n"
        f"spec = TokenizerSpec({spec.max_tokens!r}, {spec.prompt!r}, {spec.prompt_name!r})\n"
        f"tokenizer = cached_text_tokenizer(Path({model_path!r}), spec, {digest!r})\n"
        "print(tokenizer.identity)\n"
    )
    assert run_without_transformers(script).strip() == replica.tokenizer_identity

    # Another spec is another entry; an entry that does not read is made again.
    shorter = cached_text_tokenizer(Path(model_path), TokenizerSpec(max_tokens=64), digest)
    assert shorter.limit == 64 and len(list(entries.glob("*.json"))) == 2 and len(built) == 2
    entry.write_text("{not json")
    again = cached_text_tokenizer(Path(model_path), spec, digest)
    assert again.identity == replica.tokenizer_identity and len(built) == 3
    assert json.loads(entry.read_text())["state"][1] == replica.max_seq_length
    assert not list(entries.glob(".*"))  # no scratch file left

    # A model whose tokenization the job does not mirror is kept as such.
    lowercasing = tmp_path / "lowercasing"
    lowercasing.mkdir()
    (lowercasing / "modules.json").write_text(
        json.dumps([{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"}])
    )
    (lowercasing / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": True}))
    for _ in range(2):
        assert cached_text_tokenizer(lowercasing, spec, "sha256:lowercasing") is None
    assert len(built) == 4

    # A cache that cannot be written costs the next run the build, never this one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(entry))  # a file: no folder goes there
    unkept = cached_text_tokenizer(Path(model_path), spec, digest)
    assert unkept.identity == replica.tokenizer_identity and len(built) == 5


def run_without_transformers(script: str) -> str:
    """Run `script` in a fresh interpreter; its output, once it is sure that neither
    transformers nor torch was imported."""
    script += (
        "import sys\nassert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_ids_from_another_tokenizer_are_not_used(tmp_path, replica, bare_model):
    """A read stage without the tokenizer (or with another one) sends texts: the replica then
    tokenizes them itself, and the vectors are the same."""
    texts = ["one text", "another text, longer than the first"]
    write_jsonl(
        tmp_path / "in" / "docs" / "a.jsonl",
        [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)],
    )
    tally = run_here(stage_spec(tmp_path), replica)  # no tokenizer in the stage spec
    assert tally.rows == 2
    table = pq.read_table(next((tmp_path / "out").rglob("*.parquet")))
    ours = np.asarray(table.column("embedding").to_pylist())
    order = [texts[int(i[1:])] for i in table.column("id").to_pylist()]
    assert np.sum(ours * reference_vectors(bare_model, order, 384), axis=1).min() >= 0.9999


@pytest.mark.parametrize(
    "placement",
    [Placement(1, 0, 1, 2), Placement(2, 1, 1, 1), place_replicas([Node(2, 1)])],
    ids=["cpu replica of one CPU", "gpu replicas", "a gpu replica and one CPU left"],
)
def test_the_read_stage_runs_in_its_own_tasks_not_in_the_replicas(tmp_path, placement, capsys):
    """Ray Data fuses a task stage into the actor stage after it when their remote arguments
    match, as a CPU replica of one CPU's do: every block would then be read and tokenized on
    the replica's CPU, between its encodings. The plan Ray Data runs keeps them apart."""
    with local_ray(num_cpus=4, num_gpus=2):
        replica_spec = ReplicaSpec(source="unused", source_is_local=True, dim=8, device="cpu")
        with warnings.catch_warnings(record=True) as notices:
            warnings.simplefilter("always")
            dataset = pipeline_dataset(
                [{"work": "{}"}], stage_spec(tmp_path), replica_spec, placement, None
            )
        dataset.explain()
    # Ray's notice that ray_remote_args_fn will go is for this code, not the user's log.
    assert not [n for n in notices if "ray_remote_args_fn" in str(n.message)]
    plan = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(read_stage)]" in plan
    assert "ActorPoolMapOperator[MapBatches(EmbedBatches)]" in plan
    # What the read and write tasks ask of Ray is what the placement gave them (with one CPU
    # left beside the replicas: half of it each, one read at a time).
    write, _, read = stages_of(dataset)
    for stage in (read, write):
        assert stage.ray_remote_args["num_cpus"] == placement.io_cpus
    assert read.compute.size == placement.read_tasks


def stages_of(dataset) -> list:
    """The dataset's map stages, last first, as Ray Data's logical plan holds them (a private
    attribute of Ray 2.60, which pyproject.toml pins)."""
    stages, op = [], dataset._logical_plan.dag
    while op.input_dependencies:
        stages.append(op)
        op = op.input_dependencies[0]
    return stages
