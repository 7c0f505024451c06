"""Model facts as frozen specs, loaded from the curated TOML table and an optional user file."""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SEED_FILE = Path(__file__).with_name("models.toml")
MATRYOSHKA_STATUSES = ("confirmed", "unknown", "none")
BACKENDS = ("torch", "onnx", "openvino")


class RegistryError(ValueError):
    """A registry file or a model name that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the job must know about one model before it loads it."""

    name: str
    hf_id: str
    native_dim: int
    matryoshka: str
    matryoshka_dims: tuple[int, ...] = ()
    max_tokens: int | None = None
    revision: str = ""
    document_prompt: str = ""
    document_prompt_name: str = ""
    query_prompt: str = ""
    query_prompt_name: str = ""
    encode_kwargs: dict[str, Any] = field(default_factory=dict)
    pooling: str = ""
    trust_remote_code: bool = False
    card_dtype: str = ""
    params: str = ""
    license: str = ""
    backend: str = "torch"
    local_package: str = ""
    path: str = ""
    notes: str = ""
    retention: dict[str, dict[str, float]] = field(default_factory=dict)
    retention_set: str = ""

    def retention_note(self, dim: int) -> str:
        """What measurement says truncation to `dim` costs, or "" when nothing was measured."""
        if not self.retention:
            return ""
        measured = sorted(int(d) for d in self.retention)
        nearest = min(measured, key=lambda d: (abs(d - dim), d))
        kept = self.retention[str(nearest)]
        at = f"at {nearest} dims" if nearest == dim else f"at {nearest} dims (nearest measured)"
        return (
            f"{self.name} {at} kept {kept['recall@10']:.2f} of recall@10 and "
            f"{kept['ndcg@10']:.2f} of nDCG@10 on {self.retention_set}"
        )

    def document_prompt_label(self) -> str:
        """How the document prompt is named in logs and the manifest."""
        if self.document_prompt_name:
            return f"prompt_name:{self.document_prompt_name}"
        return self.document_prompt

    def model_source(self) -> tuple[str, bool]:
        """Where to load the weights from, and whether that is a local folder.

        A user's `path` wins; then a package that ships the weights (so the bundled
        all-MiniLM-L6-v2 loads offline); then the hub id.
        """
        if self.path:
            return self.path, True
        if self.local_package:
            try:
                package = importlib.import_module(self.local_package)
            except ImportError:
                pass
            else:
                return str(package.get_model_path()), True
        return self.hf_id, False


def spec_from_entry(name: str, entry: dict[str, Any], origin: str) -> ModelSpec:
    """Build and validate one spec from a TOML table, naming the bad value on error."""
    known = {f.name for f in fields(ModelSpec)} - {"name"}
    unknown_keys = sorted(set(entry) - known)
    if unknown_keys:
        raise RegistryError(
            f"{origin}: model {name!r} has unknown keys {unknown_keys}; valid keys: {sorted(known)}"
        )
    if not entry.get("hf_id") and not entry.get("path"):
        raise RegistryError(f"{origin}: model {name!r} needs hf_id or path")
    values = dict(entry)
    values.setdefault("hf_id", values.get("path", ""))
    values["matryoshka_dims"] = tuple(sorted(int(d) for d in values.get("matryoshka_dims", ())))
    values.setdefault("encode_kwargs", {})
    values.setdefault("retention", {})
    try:
        spec = ModelSpec(name=name, **values)
    except TypeError as err:
        raise RegistryError(f"{origin}: model {name!r}: {err}") from err
    check_spec(spec, origin)
    return spec


def check_spec(spec: ModelSpec, origin: str) -> None:
    """Reject entries that would make the truncation policy meaningless."""
    where = f"{origin}: model {spec.name!r}"
    if not isinstance(spec.native_dim, int) or spec.native_dim <= 0:
        raise RegistryError(
            f"{where}: native_dim must be a positive integer, got {spec.native_dim!r}"
        )
    if spec.matryoshka not in MATRYOSHKA_STATUSES:
        raise RegistryError(
            f"{where}: matryoshka must be one of {MATRYOSHKA_STATUSES}, got {spec.matryoshka!r}"
        )
    bad_dims = [d for d in spec.matryoshka_dims if d <= 0 or d > spec.native_dim]
    if bad_dims:
        raise RegistryError(
            f"{where}: matryoshka_dims {bad_dims} are outside 1..native_dim ({spec.native_dim})"
        )
    if spec.matryoshka == "none" and spec.matryoshka_dims:
        raise RegistryError(f"{where}: matryoshka = 'none' but matryoshka_dims are listed")
    if spec.backend not in BACKENDS:
        raise RegistryError(f"{where}: backend must be one of {BACKENDS}, got {spec.backend!r}")
    bad_retention = [
        d for d in spec.retention if not d.isdigit() or not 0 < int(d) <= spec.native_dim
    ]
    if bad_retention:
        raise RegistryError(f"{where}: retention dims {bad_retention} are not in 1..native_dim")
    if spec.document_prompt and spec.document_prompt_name:
        raise RegistryError(f"{where}: give document_prompt or document_prompt_name, not both")


def load_specs(path: Path | str, origin: str | None = None) -> dict[str, ModelSpec]:
    """Read a registry TOML file (`[models."<name>"]` tables) into specs keyed by name."""
    path = Path(path)
    origin = origin or str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RegistryError(f"registry file not found: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise RegistryError(f"{origin}: not valid TOML: {err}") from err
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise RegistryError(f"{origin}: expected one or more [models.<name>] tables")
    return {name: spec_from_entry(name, entry, origin) for name, entry in models.items()}


class Registry:
    """The curated models plus a user's own; names match without regard to case."""

    def __init__(self, specs: dict[str, ModelSpec]):
        self._specs = dict(specs)
        self._by_folded_name = {name.casefold(): spec for name, spec in specs.items()}

    @classmethod
    def load(cls, user_file: Path | str | None = None) -> Registry:
        """The seed table, with a user's registry file layered on top (same names replace)."""
        specs = load_specs(SEED_FILE, origin="registry/models.toml")
        if user_file:
            specs.update(load_specs(user_file))
        return cls(specs)

    def names(self) -> list[str]:
        return sorted(self._specs, key=str.casefold)

    def get(self, name: str) -> ModelSpec:
        """The spec for `name`, or a RegistryError that lists every known name."""
        spec = self._by_folded_name.get(name.casefold())
        if spec is None:
            raise RegistryError(
                f"unknown model {name!r}. Known models: {', '.join(self.names())}. "
                "To use another model, describe it in a registry file (see README, "
                "'Adding your own model') and pass --registry-file."
            )
        return spec

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)
