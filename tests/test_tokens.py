"""Tokenized once: the read stage makes each text's token ids, the replica feeds them to the
model as they are, and the vectors are sentence-transformers' own."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedder import Replica, ReplicaSpec
from embedder.tokens import TextTokenizer
from jobs.pipeline.placement import Placement
from jobs.pipeline.stages import pipeline_dataset
from tests.conftest import REPO, local_ray, reference_vectors, write_jsonl
from tests.test_commit import run_here, stage_spec


@pytest.fixture(scope="module")
def replica(model_path):
    return Replica(ReplicaSpec(source=model_path, source_is_local=True, dim=384, device="cpu"))


def test_the_replica_checked_the_tokenizer_against_the_models_own(replica):
    assert replica.tokenizer_identity and replica.tokenized_by == ""
    assert replica.describe()["tokenizer"] == replica.tokenizer_identity


def test_every_text_is_tokenized_once_in_the_read_stage_and_never_by_the_replica(
    tmp_path, replica, bare_model, monkeypatch
):
    texts = [f"text number {i} " + "word " * (i % 37) for i in range(40)] + ["x " * 400]
    write_jsonl(
        tmp_path / "in" / "docs" / "a.jsonl",
        [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)],
    )
    seen: list[str] = []
    real_tokenize = TextTokenizer.tokenize

    def counting(self, batch):
        seen.extend(batch)
        return real_tokenize(self, batch)

    def refuse(*args, **kwargs):
        raise AssertionError("the replica tokenized a text")

    monkeypatch.setattr(TextTokenizer, "tokenize", counting)
    monkeypatch.setattr(replica.model, "preprocess", refuse)
    monkeypatch.setattr(replica.model, "encode", refuse)
    spec = dataclasses.replace(
        stage_spec(tmp_path), block_rows=16, tokenizer=replica.text_tokenizer
    )
    before = replica.stats.truncated_texts
    tally = run_here(spec, replica)
    assert tally.rows == len(texts)
    assert sorted(seen) == sorted(texts)  # each text once, by the read stage's tokenizer
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
        "import pickle, sys\n"
        f"data = open({str(tmp_path / 'tokenizer.pickle')!r}, 'rb').read()\n"
        "tokenizer = pickle.loads(data)\n"
        "assert pickle.loads(data) is tokenizer  # built once per process, not per task\n"
        f"tokens = tokenizer.tokenize({texts!r})\n"
        "print(tokenizer.identity, tokens.truncated, tokens.ids.to_pylist())\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ours = replica.text_tokenizer.tokenize(texts)
    identity, truncated, ids = result.stdout.split(" ", 2)
    assert identity == replica.tokenizer_identity
    assert (int(truncated), ids.strip()) == (ours.truncated, str(ours.ids.to_pylist()))


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
    [Placement(1, 0, 1, 2), Placement(2, 1, 1, 1)],
    ids=["cpu replica of one CPU", "gpu replicas"],
)
def test_the_read_stage_runs_in_its_own_tasks_not_in_the_replicas(tmp_path, placement, capsys):
    """Ray Data fuses a task stage into the actor stage after it when their remote arguments
    match, as a CPU replica of one CPU's do: every block would then be read and tokenized on
    the replica's CPU, between its encodings. The plan Ray Data runs keeps them apart."""
    with local_ray(num_cpus=4, num_gpus=2):
        replica_spec = ReplicaSpec(source="unused", source_is_local=True, dim=8, device="cpu")
        dataset = pipeline_dataset(
            [{"work": "{}"}], stage_spec(tmp_path), replica_spec, placement, None
        )
        dataset.explain()
    plan = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(read_stage)]" in plan
    assert "ActorPoolMapOperator[MapBatches(EmbedBatches)]" in plan
