"""Model facts as frozen specs, loaded from the curated TOML table and an optional user file."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from embedder.source import resolve_source

SEED_FILE = Path(__file__).with_name("models.toml")
Matryoshka = Literal["confirmed", "unknown", "none"]
Backend = Literal["torch", "onnx", "openvino"]
Retention = dict[str, dict[str, StrictFloat]]  # a whole number (1) is a float too


class RegistryError(ValueError):
    """A registry file or a model name that cannot be used."""


class ModelSpec(BaseModel):
    """Everything the job must know about one model before it loads it.

    Every field is typed strictly (a TOML `max_tokens = "512"` or `trust_remote_code = "yes"`
    is refused, not coerced) and unknown keys are refused: a typo must not pass as a default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr
    hf_id: StrictStr = ""
    native_dim: Annotated[StrictInt, Field(gt=0)]
    matryoshka: Matryoshka
    matryoshka_dims: tuple[StrictInt, ...] = ()
    max_tokens: Annotated[StrictInt, Field(gt=0)] | None = None
    revision: StrictStr = ""
    document_prompt: StrictStr = ""
    document_prompt_name: StrictStr = ""
    query_prompt: StrictStr = ""
    query_prompt_name: StrictStr = ""
    encode_kwargs: dict[StrictStr, Any] = {}
    pooling: StrictStr = ""
    trust_remote_code: StrictBool = False
    card_dtype: StrictStr = ""
    params: StrictStr = ""
    license: StrictStr = ""
    backend: Backend = "torch"
    local_package: StrictStr = ""
    path: StrictStr = ""
    notes: StrictStr = ""
    retention: Retention = {}
    retention_pca: Retention = {}
    retention_set: StrictStr = ""

    @model_validator(mode="before")
    @classmethod
    def hf_id_defaults_to_path(cls, values: Any) -> Any:
        """A local model is named by its folder when it has no hub id."""
        if isinstance(values, dict) and not values.get("hf_id"):
            if not values.get("path"):
                raise ValueError("needs hf_id or path")
            values = {**values, "hf_id": values["path"]}
        return values

    @field_validator("matryoshka_dims")
    @classmethod
    def sorted_dims(cls, dims: tuple[int, ...]) -> tuple[int, ...]:
        """Trained dims in ascending order, however the file lists them."""
        return tuple(sorted(dims))

    @model_validator(mode="after")
    def consistent(self) -> ModelSpec:
        """Entries that would make the truncation policy meaningless are refused."""
        bad_dims = [d for d in self.matryoshka_dims if d <= 0 or d > self.native_dim]
        if bad_dims:
            raise ValueError(
                f"matryoshka_dims {bad_dims} are outside 1..native_dim ({self.native_dim})"
            )
        if self.matryoshka == "none" and self.matryoshka_dims:
            raise ValueError("matryoshka = 'none' but matryoshka_dims are listed")
        bad_retention = [
            d
            for d in (*self.retention, *self.retention_pca)
            if not d.isdigit() or not 0 < int(d) <= self.native_dim
        ]
        if bad_retention:
            raise ValueError(f"retention dims {bad_retention} are not in 1..native_dim")
        if self.document_prompt and self.document_prompt_name:
            raise ValueError("give document_prompt or document_prompt_name, not both")
        return self

    def retention_note(self, dim: int) -> str:
        """What measurement says truncation to `dim` costs, or "" when nothing was measured."""
        if not self.retention:
            return ""
        measured = sorted(int(d) for d in self.retention)
        nearest = min(measured, key=lambda d: (abs(d - dim), d))
        kept = self.retention[str(nearest)]
        at = f"at {nearest} dims" if nearest == dim else f"at {nearest} dims (nearest measured)"
        rotated = self.retention_pca.get(str(nearest))
        with_rotation = (
            f" ({rotated['recall@10']:.2f} and {rotated['ndcg@10']:.2f} with --rotate pca)"
            if rotated
            else ""
        )
        return (
            f"{self.name} {at} kept {kept['recall@10']:.2f} of recall@10 and "
            f"{kept['ndcg@10']:.2f} of nDCG@10{with_rotation} on {self.retention_set}"
        )

    def document_prompt_label(self) -> str:
        """How the document prompt is named in logs and the manifest."""
        if self.document_prompt_name:
            return f"prompt_name:{self.document_prompt_name}"
        return self.document_prompt

    def query_prompt_label(self) -> str:
        """How the query prompt is named in logs and the manifest."""
        if self.query_prompt_name:
            return f"prompt_name:{self.query_prompt_name}"
        return self.query_prompt

    def model_source(self) -> tuple[str, bool]:
        """Where to load the weights from, and whether that is a local folder.

        A user's `path` wins; then a package that ships the weights (so the bundled
        all-MiniLM-L6-v2 loads offline); then the hub id.
        """
        return resolve_source(self.path or self.hf_id, bool(self.path), self.local_package)


def spec_from_entry(name: str, entry: Any, origin: str) -> ModelSpec:
    """Build and validate one spec from a TOML table, naming the file, the model and each
    bad key."""
    where = f"{origin}: model {name!r}"
    if not isinstance(entry, dict):
        raise RegistryError(f'{where} must be a [models."{name}"] table, got {entry!r}')
    if "name" in entry:
        # The table's own key is the name; a second one inside it would contradict it.
        raise RegistryError(f"{where}: unknown keys ['name']; valid keys: {valid_keys()}")
    try:
        return ModelSpec(name=name, **entry)
    except ValidationError as err:
        raise RegistryError(f"{where}: " + "; ".join(describe_problems(err))) from None


def valid_keys() -> list[str]:
    """The keys a registry entry may have."""
    return sorted(set(ModelSpec.model_fields) - {"name"})


def describe_problems(err: ValidationError) -> list[str]:
    """One line per problem, naming the key and the bad value; unknown keys in one line."""
    unknown = [str(e["loc"][0]) for e in err.errors() if e["type"] == "extra_forbidden"]
    problems = [f"unknown keys {unknown}; valid keys: {valid_keys()}"] if unknown else []
    for error in err.errors():
        if error["type"] != "extra_forbidden":
            problems.append(describe_problem(error))
    return problems


def describe_problem(error: ErrorDetails) -> str:
    """A pydantic error as a line of the refusal; cross-field checks speak for themselves."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"{key} is required"
    if error["type"] == "literal_error":
        return f"{key} must be one of {error['ctx']['expected']}, got {error['input']!r}"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return f"{key}: {error['msg']}, got {error['input']!r}"


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
        """Every model name, sorted without regard to case."""
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

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())
