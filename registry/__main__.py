"""`python -m registry [--registry-file FILE]`: the registry as a Markdown table."""

from __future__ import annotations

import argparse

from registry.spec import ModelSpec, Registry


def markdown_table(registry: Registry) -> str:
    header = (
        "| name | HF id | native dim | Matryoshka | trained dims | max tokens | "
        "document prompt | query prompt | remote code | card dtype | license |"
    )
    lines = [header, "|" + "---|" * 11]
    for spec in sorted(registry, key=lambda s: s.name.casefold()):
        lines.append(row(spec))
    return "\n".join(lines)


def row(spec: ModelSpec) -> str:
    def prompt(text: str, name: str) -> str:
        if name:
            return f"`{name}` (prompt name)"
        return f'"{text}"'.replace("\n", "\\n") if text else "none"

    cells = [
        f"`{spec.name}`",
        spec.hf_id,
        str(spec.native_dim),
        spec.matryoshka,
        ", ".join(map(str, spec.matryoshka_dims)) or "—",
        str(spec.max_tokens or "—"),
        prompt(spec.document_prompt, spec.document_prompt_name),
        prompt(spec.query_prompt, spec.query_prompt_name),
        "yes" if spec.trust_remote_code else "no",
        spec.card_dtype or "—",
        spec.license,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__)
    parser.add_argument("--registry-file", help="your own models, layered on the curated ones")
    args = parser.parse_args()
    print(markdown_table(Registry.load(args.registry_file)))


if __name__ == "__main__":
    main()
