"""prepare_job: what a run derives from its settings and the registry, before Ray starts."""

from __future__ import annotations

from jobs.pipeline.job import prepare_job, replica_spec_for
from jobs.pipeline.placement import Node, place_replicas
from jobs.pipeline.settings import EmbedSettings
from tests.conftest import write_jsonl


def test_the_registrys_max_tokens_caps_every_text_unless_the_run_sets_its_own(tmp_path, model_path):
    from embedder import Replica

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": "word " * 100}])
    registry_file = tmp_path / "models.toml"
    registry_file.write_text(
        f'[models."short-minilm"]\npath = "{model_path}"\nnative_dim = 384\n'
        'matryoshka = "none"\nmax_tokens = 32\n'
    )
    settings = EmbedSettings(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        model="short-minilm",
        registry_file=str(registry_file),
        device="cpu",
        dry_run=True,  # prepare only: OUTPUT is not claimed
    )
    job = prepare_job(settings)
    assert job.max_tokens == 32 and job.fingerprint["max_tokens"] == 32
    replica = Replica(replica_spec_for(job, place_replicas([Node(2)])))
    assert replica.max_seq_length == 32
    replica.embed(["word " * 100])
    assert replica.stats.truncated_texts == 1 and replica.stats.tokens == 32

    own = prepare_job(settings.model_copy(update={"max_tokens": 16}))
    assert own.max_tokens == 16 and own.fingerprint["max_tokens"] == 16
    assert not (tmp_path / "out").exists()
