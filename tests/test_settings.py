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

BASE = ["in", "out", "m"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No EMBED_* variable from outside, and a working directory without a .env file."""
    import os

    for name in list(os.environ):
        if name.startswith("EMBED_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def config_rows(table: str) -> dict[str, list[str]]:
    """The --print-config table as {setting: [source, value]}."""
    return {line.split()[0]: line.split(None, 2)[1:] for line in table.splitlines()[1:]}


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
    assert sources["dim"] == "cli" and sources["drop_text"] == "default"


def test_a_positional_on_the_command_line_beats_the_environment(clean_env, tmp_path):
    (tmp_path / ".env").write_text("EMBED_DIM=64\n")
    clean_env.setenv("EMBED_MODEL", "bge-small")
    resolved = load_settings(["in", "out", "all-miniLM-l6"])
    assert (resolved.settings.model, resolved.sources["model"]) == ("all-miniLM-l6", "cli")
    assert (resolved.settings.dim, resolved.sources["dim"]) == (64, ".env")


def test_input_output_and_model_can_come_from_the_environment_alone(clean_env):
    clean_env.setenv("EMBED_INPUT", "s3://bucket/chunks")
    clean_env.setenv("EMBED_OUTPUT", "s3://bucket/vectors")
    clean_env.setenv("EMBED_MODEL", "bge-small")
    clean_env.setenv("EMBED_ALLOW_NON_MATRYOSHKA", "1")
    resolved = load_settings([])
    assert resolved.settings.input == "s3://bucket/chunks"
    assert resolved.settings.allow_non_matryoshka is True
    assert resolved.sources["model"] == "env"
    assert resolved.settings.dim is None


def test_positionals_can_come_from_a_dotenv_file(clean_env, tmp_path):
    (tmp_path / ".env").write_text("EMBED_INPUT=in\nEMBED_OUTPUT=out\nEMBED_MODEL=bge-small\n")
    resolved = load_settings([])
    assert (resolved.settings.model, resolved.sources["model"]) == ("bge-small", ".env")


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


def test_every_missing_positional_is_named_at_once(clean_env):
    with pytest.raises(SettingsError) as refused:
        load_settings([])
    for name in ("INPUT", "OUTPUT", "MODEL"):
        assert f"missing {name} (argument, or EMBED_{name})" in str(refused.value)


def test_a_bad_literal_from_the_environment_names_the_variable_and_value(clean_env):
    clean_env.setenv("EMBED_PRECISION", "int4")
    with pytest.raises(SettingsError) as refused:
        load_settings(BASE)
    message = str(refused.value)
    assert "--precision (EMBED_PRECISION)" in message and "'int4'" in message
    assert "'ubinary'" in message  # the valid choices are listed


def test_boolean_flags_and_json_options(clean_env):
    settings = load_settings(
        ["in", "out", "m", "--drop-text", "--storage-options", '{"anon": true}', "--dry-run"]
    ).settings
    assert settings.drop_text and settings.dry_run and not settings.overwrite
    assert settings.storage_options == {"anon": True}
    assert load_settings(["in", "out", "m", "--no-drop-text"]).settings.drop_text is False


def test_every_boolean_is_a_flag_and_no_flag_beats_the_environment(clean_env):
    flags = ["--drop-text", "--allow-non-matryoshka", "--overwrite", "--dry-run"]
    settings = load_settings([*BASE, *flags, "--trust-remote-code"]).settings
    assert settings.drop_text and settings.allow_non_matryoshka and settings.overwrite
    assert settings.dry_run and settings.trust_remote_code
    clean_env.setenv("EMBED_OVERWRITE", "true")
    resolved = load_settings([*BASE, "--no-overwrite"])
    assert (resolved.settings.overwrite, resolved.sources["overwrite"]) == (False, "cli")


def test_storage_options_from_the_environment_are_json(clean_env):
    clean_env.setenv("EMBED_STORAGE_OPTIONS", '{"client_kwargs": {"region_name": "eu"}}')
    resolved = load_settings(BASE)
    assert resolved.settings.storage_options == {"client_kwargs": {"region_name": "eu"}}
    assert resolved.sources["storage_options"] == "env"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_bad_json_on_the_command_line_is_named(clean_env, text):
    with pytest.raises(SettingsError) as refused:
        load_settings([*BASE, "--storage-options", text])
    assert "--storage-options (EMBED_STORAGE_OPTIONS)" in str(refused.value)
    assert "storage_options must be a JSON object" in str(refused.value)


def test_bad_json_in_the_environment_is_named_without_echoing_secrets(clean_env):
    clean_env.setenv("EMBED_STORAGE_OPTIONS", '{"secret": "hunter2", oops}')
    with pytest.raises(SettingsError) as refused:
        load_settings(BASE)
    assert "--storage-options (EMBED_STORAGE_OPTIONS)" in str(refused.value)
    assert "storage_options must be a JSON object" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_settings_built_in_python_never_read_the_command_line(clean_env, monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--dtype", "fp8"])
    settings = EmbedSettings(input="in", output="out", model="m")
    assert settings.dtype == "auto" and settings.print_config is False
    built = EmbedSettings(input="in", output="out", model="m", storage_options={"anon": True})
    assert built.storage_options == {"anon": True}


def test_help_prints_the_options_and_exits_zero(clean_env, capsys):
    with pytest.raises(SystemExit) as exited:
        load_settings(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "--print-config" in shown and "MODEL" in shown and "EMBED_DTYPE" in shown


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


def test_client_kwargs_keep_the_endpoint_and_mask_the_rest():
    options = {"client_kwargs": {"endpoint_url": "http://x", "aws_secret_access_key": "s"}}
    assert mask_storage_options(options) == {
        "client_kwargs": {"endpoint_url": "http://x", "aws_secret_access_key": "***"}
    }
    # client_kwargs is no public key: a value that is not a dict is masked like any other.
    assert mask_storage_options({"client_kwargs": "s"}) == {"client_kwargs": "***"}


def test_print_config_shows_sources_and_no_secret(clean_env):
    clean_env.setenv(
        "EMBED_STORAGE_OPTIONS",
        json.dumps({"client_kwargs": {"aws_secret_access_key": "hunter2"}}),
    )
    resolved = load_settings(["in", "out", "m", "--print-config"])
    assert resolved.settings.print_config and resolved.print_config
    table = describe_config(resolved)
    assert "hunter2" not in table
    rows = config_rows(table)
    assert rows["storage_options"][0] == "env" and '"***"' in rows["storage_options"][1]
    assert rows["model"] == ["cli", "m"]
    assert "print_config" not in resolved.settings.public_dict()  # never in the manifest


def test_print_config_shows_the_endpoint_inside_client_kwargs(clean_env):
    options = {
        "key": "AKID",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "aws_secret_access_key": "s3cr3t"},
    }
    clean_env.setenv("EMBED_PRINT_CONFIG", "1")
    resolved = load_settings([*BASE, "--storage-options", json.dumps(options)])
    assert resolved.print_config and resolved.sources["storage_options"] == "cli"
    shown = json.loads(config_rows(describe_config(resolved))["storage_options"][1])
    assert shown == {
        "key": "***",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "aws_secret_access_key": "***"},
    }
