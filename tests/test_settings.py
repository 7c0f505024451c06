"""Settings: command line > EMBED_* > .env > defaults, pydantic-settings' own CLI, secrets
masked at any depth."""

from __future__ import annotations

import json

import pytest

from jobs.pipeline.settings import (
    EmbedSettings,
    SettingsError,
    describe_config,
    load_settings,
    mask_storage_options,
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No EMBED_* variable from outside, and a working directory without a .env file."""
    import os

    for name in list(os.environ):
        if name.startswith("EMBED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_command_line_beats_env_beats_dotenv_beats_default(clean_env, tmp_path):
    (tmp_path / ".env").write_text("EMBED_BATCH_SIZE=32\nEMBED_DEVICE=cuda\nEMBED_DTYPE=fp16\n")
    clean_env.setenv("EMBED_DEVICE", "cpu")
    clean_env.setenv("EMBED_DTYPE", "bf16")
    resolved = load_settings(["in", "out", "all-miniLM-l6", "128", "--dtype", "fp32"])
    settings, sources = resolved.settings, resolved.sources
    assert (settings.input, settings.output, settings.model, settings.dim) == (
        "in", "out", "all-miniLM-l6", 128,
    )  # fmt: skip
    assert (settings.dtype, sources["dtype"]) == ("fp32", "cli")
    assert (settings.device, sources["device"]) == ("cpu", "env")
    assert (settings.batch_size, sources["batch_size"]) == (32, ".env")
    assert (settings.block_rows, sources["block_rows"]) == (2048, "default")


def test_input_output_and_model_can_come_from_the_environment_alone(clean_env):
    clean_env.setenv("EMBED_INPUT", "s3://bucket/chunks")
    clean_env.setenv("EMBED_OUTPUT", "s3://bucket/vectors")
    clean_env.setenv("EMBED_MODEL", "bge-small")
    clean_env.setenv("EMBED_ALLOW_NON_MATRYOSHKA", "1")
    resolved = load_settings([])
    assert resolved.settings.input == "s3://bucket/chunks"
    assert resolved.settings.allow_non_matryoshka is True
    assert resolved.sources["model"] == "env"


def test_missing_positionals_and_bad_values_are_named(clean_env):
    with pytest.raises(SettingsError, match=r"missing MODEL \(argument, or EMBED_MODEL\)"):
        load_settings(["in", "out"])
    with pytest.raises(SettingsError) as refused:
        load_settings(["in", "out", "m", "--dtype", "fp8"])
    assert "--dtype" in str(refused.value) and "fp8" in str(refused.value)
    with pytest.raises(SettingsError, match="DIM"):
        load_settings(["in", "out", "m", "0"])
    with pytest.raises(SettingsError, match="unrecognized arguments: --colour"):
        load_settings(["in", "out", "m", "--colour", "red"])
    with pytest.raises(SettingsError, match="storage_options"):
        load_settings(["in", "out", "m", "--storage-options", "{not json"])


def test_boolean_flags_and_json_options(clean_env):
    settings = load_settings(
        ["in", "out", "m", "--drop-text", "--storage-options", '{"anon": true}', "--dry-run"]
    ).settings
    assert settings.drop_text and settings.dry_run and not settings.overwrite
    assert settings.storage_options == {"anon": True}
    assert load_settings(["in", "out", "m", "--no-drop-text"]).settings.drop_text is False


def test_settings_built_in_python_never_read_the_command_line(clean_env, monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--dtype", "fp8"])
    settings = EmbedSettings(input="in", output="out", model="m")
    assert settings.dtype == "auto" and settings.print_config is False


def test_secrets_are_masked_at_any_depth():
    options = {
        "key": "AKID",
        "secret": "s3cr3t",
        "endpoint_url": "http://minio:9000",
        "client_kwargs": {"region_name": "eu", "aws_secret_access_key": "s3cr3t"},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
    }
    assert mask_storage_options(options) == {
        "key": "***",
        "secret": "***",
        "endpoint_url": "http://minio:9000",
        "client_kwargs": {"region_name": "eu", "aws_secret_access_key": "***"},
        "config_kwargs": {"s3": {"addressing_style": "***"}},
    }


def test_print_config_shows_sources_and_no_secret(clean_env):
    clean_env.setenv(
        "EMBED_STORAGE_OPTIONS",
        json.dumps({"client_kwargs": {"aws_secret_access_key": "hunter2"}}),
    )
    resolved = load_settings(["in", "out", "m", "--print-config"])
    assert resolved.settings.print_config
    table = describe_config(resolved)
    assert "hunter2" not in table
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in table.splitlines()[1:]}
    assert rows["storage_options"][0] == "env" and '"***"' in rows["storage_options"][1]
    assert rows["model"] == ["cli", "m"]
    assert "print_config" not in resolved.settings.public_dict()  # never in the manifest
