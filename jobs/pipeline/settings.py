"""Every option of the job, from the command line, EMBED_* variables, a .env file or defaults.

Precedence: command line > environment > .env > defaults. This is the only module that reads
the environment for the job's own settings.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic_settings
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    CliPositionalArg,
    CliSettingsSource,
    NoDecode,
    SettingsConfigDict,
)

from embedder.outputs import Precision

POSITIONAL = ("input", "output", "model", "dim")
REQUIRED = ("input", "output", "model")
PROG = "python -m jobs.embed"
# Storage option keys whose values are not secret; every other leaf value is masked wherever
# settings show, at any depth (the S3 client takes secrets inside client_kwargs too).
PUBLIC_STORAGE_KEYS = {"endpoint_url", "region_name", "anon", "use_ssl"}
MASK = "***"


class SettingsError(ValueError):
    """Settings that cannot run; the message names each bad value."""


class EmbedSettings(BaseSettings):
    """The job's settings. Each field is `--field-name` on the command line and EMBED_FIELD_NAME."""

    model_config = SettingsConfigDict(
        env_prefix="EMBED_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        # Used only when load_settings parses a command line; EmbedSettings(...) never does.
        cli_prog_name=PROG,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_hide_none_type=True,
        cli_show_env_vars=True,
    )

    # Positionals may come from the environment alone, so the command line may leave them out:
    # `require_positionals` reports the ones missing from every source.
    input: CliPositionalArg[str | None] = Field(
        None, description="corpus folder: local path or any fsspec URI"
    )
    output: CliPositionalArg[str | None] = Field(
        None, description="output folder: local path or any fsspec URI"
    )
    model: CliPositionalArg[str | None] = Field(None, description="registry name of the model")
    dim: CliPositionalArg[int | None] = Field(
        None, ge=1, description="Matryoshka dim; omitted = native dim"
    )
    dims: str | None = Field(
        None, description="several dims from one pass, e.g. 1024,256: embedding_<dim> columns"
    )
    precision: Precision = Field(
        "float32", description="also write quantized columns (<column>_<precision>)"
    )
    rotate: Literal["none", "pca"] = Field(
        "none",
        description="rotate vectors into the corpus's principal axes before truncating "
        "(fitted once per OUTPUT)",
    )
    calibration_rows: int = Field(
        1000,
        ge=1,
        description="rows sampled once per OUTPUT to fit the rotation and int8/uint8 ranges",
    )
    text_column: str = Field("text", description="input column holding the text")
    id_column: str = Field("id", description="input column holding the id")
    drop_text: bool = Field(False, description="leave the text column out of the output")
    allow_non_matryoshka: bool = Field(
        False, description="allow truncating a model not trained for Matryoshka"
    )
    trust_remote_code: bool = Field(False, description="allow models that run hub code")
    revision: str = Field("", description="model revision (commit) to load; overrides registry")
    registry_file: str | None = Field(None, description="TOML file with your own models")
    replicas: int | None = Field(
        None, ge=1, description="model replicas; default one per GPU, or CPU-sized"
    )
    gpus_per_replica: float | None = Field(
        None, ge=0, description="GPUs per replica; default 1 when the cluster has GPUs, else 0"
    )
    cpus_per_replica: int | None = Field(None, ge=1, description="CPUs (torch threads) per replica")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="torch device: auto = cuda on GPU replicas, else cpu"
    )
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="weights precision: auto = fp32 on CPU, bf16/fp16 on GPU"
    )
    backend: Literal["torch", "onnx", "openvino"] | None = Field(
        None,
        description="what runs the model: torch, or on CPUs onnx (ONNX Runtime) or openvino; "
        "default: the registry entry's, else torch",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: run a static int8 model (onnx or openvino backend), calibrated once "
        "per OUTPUT on the calibration sample and kept in OUTPUT",
    )
    batch_size: int = Field(256, ge=1, description="most texts in one forward pass")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="token budget per forward pass; default 2048 CPU, 32768 GPU "
        "(1024 and 8192 when quantizing)",
    )
    block_rows: int = Field(
        2048, ge=1, description="input rows per block: the unit sent to a replica and written"
    )
    max_tokens: int | None = Field(None, ge=1, description="cap on tokens per text")
    max_rejected_fraction: float = Field(
        0.01, ge=0, le=1, description="exit non-zero when more input than this is rejected"
    )
    # NoDecode: the CLI and env sources hand over the raw text, so `parse_json_options` is the
    # one JSON parser and its refusal names the bad value wherever it came from.
    storage_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, description="fsspec storage options as JSON (credentials masked)"
    )
    overwrite: bool = Field(False, description="clear OUTPUT first instead of resuming")
    shared_filesystem: bool = Field(
        False,
        description="local INPUT/OUTPUT paths are a mount every node of the cluster shares "
        "(NFS, Lustre); without it they are refused on a cluster of several nodes",
    )
    lease_timeout: float = Field(
        300,
        gt=0,
        description="seconds without a heartbeat after which another run's hold on OUTPUT "
        "is taken over",
    )
    dry_run: bool = Field(
        False, description="plan only: files, collections, rows done and to do, time estimate"
    )
    verbose: bool = Field(
        False,
        description="also show Ray's own progress output and start-up notices (the job's "
        "progress line is always there)",
    )
    print_config: bool = Field(
        False,
        exclude=True,
        description="show the resolved settings and where each came from, then stop",
    )

    @model_validator(mode="after")
    def require_positionals(self) -> EmbedSettings:
        """INPUT, OUTPUT and MODEL, from the command line or the environment: each one missing
        from every source is named."""
        missing = [name.upper() for name in REQUIRED if getattr(self, name) is None]
        if missing:
            raise ValueError("; ".join(f"missing {n} (argument, or EMBED_{n})" for n in missing))
        return self

    @field_validator("storage_options", mode="before")
    @classmethod
    def parse_json_options(cls, value: Any) -> Any:
        """Text (command line, environment, .env) is parsed as a JSON object."""
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"storage_options must be a JSON object: {err}") from err
        if not isinstance(parsed, dict):
            raise ValueError(f"storage_options must be a JSON object, not {type(parsed).__name__}")
        return parsed

    def public_dict(self) -> dict[str, Any]:
        """The resolved settings with secrets masked: safe for logs and the manifest."""
        values = self.model_dump()
        values["storage_options"] = mask_storage_options(self.storage_options)
        return values


def mask_storage_options(options: dict[str, Any]) -> dict[str, Any]:
    """Every leaf value masked but those of public keys; a nested dict (client_kwargs,
    config_kwargs) is masked by the same rule, so a secret inside it is masked too."""
    return {
        key: mask_storage_options(value)
        if isinstance(value, dict)
        else (value if key in PUBLIC_STORAGE_KEYS else MASK)
        for key, value in options.items()
    }


@dataclass(frozen=True)
class ResolvedSettings:
    """The settings and where each value came from."""

    settings: EmbedSettings
    sources: dict[str, str]

    @property
    def print_config(self) -> bool:
        """Whether only the resolved settings were asked for (--print-config)."""
        return self.settings.print_config


def load_settings(argv: list[str] | None = None) -> ResolvedSettings:
    """Parse the command line (pydantic-settings' own CLI) and resolve it against EMBED_*
    variables, .env and defaults; the command line comes first.

    Raises SettingsError naming each bad or missing value; `--help` prints help and exits 0.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        cli = CliSettingsSource(EmbedSettings)(args=args)
        cli_values = cli()
        settings = EmbedSettings(_cli_settings_source=cli)
    except pydantic_settings.SettingsError as err:
        raise SettingsError(str(err).removeprefix("error parsing CLI: ")) from None
    except ValidationError as err:
        raise SettingsError(describe_validation_error(err)) from None
    return ResolvedSettings(settings, setting_sources(cli_values))


def setting_sources(cli_values: dict[str, Any], dotenv_path: str = ".env") -> dict[str, str]:
    """Per field: "cli", "env", ".env" or "default", by the same precedence as the values."""
    from dotenv import dotenv_values

    environment = {k.upper() for k in os.environ}
    dotenv = (
        {k.upper() for k in dotenv_values(dotenv_path)} if os.path.exists(dotenv_path) else set()
    )
    sources = {}
    for name in EmbedSettings.model_fields:
        variable = f"EMBED_{name.upper()}"
        if name in cli_values:
            sources[name] = "cli"
        elif variable in environment:
            sources[name] = "env"
        elif variable in dotenv:
            sources[name] = ".env"
        else:
            sources[name] = "default"
    return sources


def describe_config(resolved: ResolvedSettings) -> str:
    """The --print-config table: each setting, its value (secrets masked) and its source."""
    values = resolved.settings.public_dict()
    width = max(len(name) for name in values)
    lines = [f"{'setting':<{width}}  {'source':<7}  value"]
    for name, value in values.items():
        shown = json.dumps(value) if not isinstance(value, str) else value
        lines.append(f"{name:<{width}}  {resolved.sources[name]:<7}  {shown}")
    return "\n".join(lines)


def describe_validation_error(err: ValidationError) -> str:
    """One line naming each bad setting as the user gives it (flag or positional, and its
    variable) with the value that was refused."""
    problems = []
    for error in err.errors():
        # Our own checks' messages without pydantic's "Value error, " in front.
        message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        if not error["loc"]:  # a check over several settings: its message names them
            problems.append(message)
            continue
        name = str(error["loc"][0])
        where = (
            f"{name.upper()} (argument, or EMBED_{name.upper()})"
            if name in POSITIONAL
            else f"--{name.replace('_', '-')} (EMBED_{name.upper()})"
        )
        # Storage options hold credentials: their text is never echoed, the JSON error's
        # position says where it went wrong.
        got = "" if name == "storage_options" else f", got {error.get('input')!r}"
        problems.append(f"{where}: {message}{got}")
    return "invalid settings: " + "; ".join(problems)
