"""What a local model folder says about itself, as a registry entry to paste into a registry
file (`python -m jobs.inspect_model PATH`).

Hints read: a `loss:MatryoshkaLoss` tag or `matryoshka_dims` in the README card (the
sentence-transformers trainer writes both), `is_matryoshka` / `matryoshka_dimensions` in
config.json (what vLLM reads), prompts in config_sentence_transformers.json, max length in
sentence_bert_config.json, pooling in the Pooling module's config. Hints inform; the curated
registry decides: the entry says `unknown` unless the hints claim Matryoshka training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DIMS_IN_CARD = re.compile(r"matryoshka_dims[\"']?\s*[:=]\s*\[([0-9,\s]+)\]")


def read_json(path: Path) -> Any:
    """A JSON file of the folder, or {} when it is missing or unreadable: hints are optional."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def matryoshka_hints(folder: Path) -> dict[str, Any]:
    """What the folder claims about Matryoshka training, and where it says so."""
    hints: dict[str, Any] = {"sources": [], "dims": []}
    card = (
        (folder / "README.md").read_text(encoding="utf-8")
        if (folder / "README.md").exists()
        else ""
    )
    if "loss:MatryoshkaLoss" in card or "MatryoshkaLoss" in card:
        hints["sources"].append("README.md: MatryoshkaLoss")
    match = DIMS_IN_CARD.search(card)
    if match:
        hints["dims"] = [int(d) for d in match.group(1).replace(" ", "").split(",") if d]
        hints["sources"].append("README.md: matryoshka_dims")
    config = read_json(folder / "config.json")
    if config.get("is_matryoshka"):
        hints["sources"].append("config.json: is_matryoshka")
    if config.get("matryoshka_dimensions"):
        hints["dims"] = hints["dims"] or [int(d) for d in config["matryoshka_dimensions"]]
        hints["sources"].append("config.json: matryoshka_dimensions")
    return hints


def pooling_of(folder: Path) -> str:
    """The pooling modes of the folder's Pooling module, plus "normalized" after a Normalize."""
    modules = read_json(folder / "modules.json")
    names = [m.get("type", "") for m in modules] if isinstance(modules, list) else []
    pooling = ""
    for module in modules if isinstance(modules, list) else []:
        if module.get("type", "").endswith("Pooling"):
            config = read_json(folder / module.get("path", "") / "config.json")
            modes = [
                k.replace("pooling_mode_", "").replace("_tokens", "")
                for k, v in config.items()
                if k.startswith("pooling_mode_") and v
            ]
            pooling = ", ".join(modes)
    if any(n.endswith("Normalize") for n in names):
        pooling = f"{pooling}, normalized" if pooling else "normalized"
    return pooling


def registry_entry(folder: Path, name: str) -> str:
    """A TOML registry entry for the folder."""
    config = read_json(folder / "config.json")
    st_config = read_json(folder / "config_sentence_transformers.json")
    bert_config = read_json(folder / "sentence_bert_config.json")
    hints = matryoshka_hints(folder)
    native = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    status = "confirmed" if hints["sources"] else "unknown"
    prompts = st_config.get("prompts") or {}
    lines = [f'[models."{name}"]', f'path = "{folder}"']
    lines.append(
        f"native_dim = {native}" if native else "native_dim = 0  # FILL IN: not in config.json"
    )
    lines.append(f'matryoshka = "{status}"')
    if hints["dims"]:
        lines.append(f"matryoshka_dims = {sorted(set(hints['dims']))}")
    max_tokens = bert_config.get("max_seq_length") or config.get("max_position_embeddings")
    if max_tokens:
        lines.append(f"max_tokens = {int(max_tokens)}")
    for role, names in (("document", ("document", "passage", "corpus")), ("query", ("query",))):
        key = next((k for k in names if k in prompts), None)
        if key:
            lines.append(f'{role}_prompt_name = "{key}"')
    pooling = pooling_of(folder)
    if pooling:
        lines.append(f'pooling = "{pooling}"')
    torch_dtype = config.get("torch_dtype") or config.get("dtype")
    if torch_dtype:
        short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(
            torch_dtype, torch_dtype
        )
        lines.append(f'card_dtype = "{short}"')
    if config.get("auto_map"):
        lines.append("trust_remote_code = true  # config.json maps to custom code")
    source = "; ".join(hints["sources"]) or "none found"
    lines.append(
        f'notes = "Matryoshka hints: {source}. Check the model card before relying on it."'
    )
    return "\n".join(lines) + "\n"
