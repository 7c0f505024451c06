"""A real, length-heterogeneous corpus from text every machine has: the standard library.

Chunks are top-level functions and classes (cut at their boundaries with `ast`) and, as chunks
of their own, their docstrings: from one line to far past a small model's 256 tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from jobs.quality.evalsets import stdlib_definitions


def stdlib_chunks() -> list[str]:
    """Every top-level function/class of the modules, and each one's docstring, in a fixed order."""
    chunks: list[str] = []
    for definition in stdlib_definitions(methods=False):
        chunks.append(definition.source)
        if definition.docstring:
            chunks.append(definition.docstring)
    return chunks


def sample(chunks: list[str], rows: int, seed: int = 0) -> list[str]:
    """`rows` chunks in a shuffled order (lengths mixed, as in a real corpus), repeating the
    corpus when more rows are asked for than it has."""
    rng = random.Random(seed)
    picked = []
    while len(picked) < rows:
        batch = list(chunks)
        rng.shuffle(batch)
        picked.extend(batch)
    return picked[:rows]


def write_corpus(folder: Path, texts: list[str], rows_per_file: int = 250) -> None:
    """The job's input format: JSONL files in one collection."""
    (folder / "stdlib").mkdir(parents=True, exist_ok=True)
    for start in range(0, len(texts), rows_per_file):
        records = [
            {"id": f"c{start + i}", "text": text}
            for i, text in enumerate(texts[start : start + rows_per_file])
        ]
        with open(folder / "stdlib" / f"part-{start:07d}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
