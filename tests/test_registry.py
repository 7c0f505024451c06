"""The seed's ten models carry the corrected facts; user registry files add models."""

from __future__ import annotations

import pytest

from registry import PolicyError, Registry, RegistryError, check_remote_code, check_truncation
from registry.spec import ModelSpec

# From ../shared/registry-facts.md, checked against each model's own card (Nov 2026):
# name: (hf_id, native_dim, matryoshka, dims, max_tokens, doc prompt, query prompt,
#        trust_remote_code, card_dtype, license)
EXPECTED = {
    "jina-embeddings-v4": (
        "jinaai/jina-embeddings-v4",
        2048,
        "confirmed",
        (128, 256, 512, 1024, 2048),
        32768,
        "prompt_name:passage",
        "prompt_name:query",
        True,
        "bf16",
        "Qwen Research License (non-commercial)",
    ),
    "jina-code-embeddings-1.5b": (
        "jinaai/jina-code-embeddings-1.5b",
        1536,
        "confirmed",
        (128, 256, 512, 1024, 1536),
        32768,
        "prompt_name:nl2code_document",
        "prompt_name:nl2code_query",
        False,
        "bf16",
        "CC-BY-NC-4.0",
    ),
    "nomic-coderank": (
        "nomic-ai/CodeRankEmbed",
        768,
        "none",
        (),
        8192,
        "",
        "Represent this query for searching relevant code: ",
        True,
        "fp32",
        "MIT",
    ),
    "bge-m3": ("BAAI/bge-m3", 1024, "none", (), 8192, "", "", False, "", "MIT"),
    "gte-qwen2-1.5b": (
        "Alibaba-NLP/gte-Qwen2-1.5B-instruct",
        1536,
        "none",
        (),
        32768,
        "",
        "Instruct: Given a web search query, retrieve relevant passages that answer the query"
        "\nQuery: ",
        True,
        "bf16",
        "Apache-2.0",
    ),
    "e5-mistral-7b": (
        "intfloat/e5-mistral-7b-instruct",
        4096,
        "none",
        (),
        4096,
        "",
        "prompt_name:web_search_query",
        False,
        "fp16",
        "MIT",
    ),
    "all-miniLM-l6": (
        "sentence-transformers/all-MiniLM-L6-v2",
        384,
        "none",
        (),
        256,
        "",
        "",
        False,
        "fp32",
        "Apache-2.0",
    ),
    "gte-large": ("thenlper/gte-large", 1024, "none", (), 512, "", "", False, "fp32", "MIT"),
    "bge-small": (
        "BAAI/bge-small-en-v1.5",
        384,
        "none",
        (),
        512,
        "",
        "Represent this sentence for searching relevant passages: ",
        False,
        "fp32",
        "MIT",
    ),
    "qdrant-minilm-onnx": (
        "Qdrant/all-MiniLM-L6-v2-onnx",
        384,
        "none",
        (),
        256,
        "",
        "",
        False,
        "onnx",
        "Apache-2.0",
    ),
}


def query_label(spec: ModelSpec) -> str:
    return f"prompt_name:{spec.query_prompt_name}" if spec.query_prompt_name else spec.query_prompt


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_model_facts(name):
    spec = Registry.load().get(name)
    actual = (
        spec.hf_id,
        spec.native_dim,
        spec.matryoshka,
        spec.matryoshka_dims,
        spec.max_tokens,
        spec.document_prompt_label(),
        query_label(spec),
        spec.trust_remote_code,
        spec.card_dtype,
        spec.license,
    )
    assert actual == EXPECTED[name]


def test_registry_holds_exactly_the_seed_models():
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
    ],
)
def test_bad_user_entries_name_the_problem(tmp_path, body, complaint):
    user_file = tmp_path / "bad.toml"
    user_file.write_text(f'[models."bad"]\n{body}\n')
    with pytest.raises(RegistryError, match=complaint):
        Registry.load(user_file)


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
