"""A real, length-heterogeneous corpus from text every machine has: the standard library.

Chunks are top-level functions and classes (cut at their boundaries with `ast`) and, as chunks
of their own, their docstrings: from one line to far past a small model's 256 tokens.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from pathlib import Path

from jobs.evalsets import STDLIB_MODULES as MODULES


def stdlib_chunks() -> list[str]:
    """Every top-level function/class of MODULES, and each one's docstring, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for name in MODULES:
        path = root / f"{name}.py"
        if not path.exists():
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            chunks.append("\n".join(lines[node.lineno - 1 : node.end_lineno]))
            docstring = ast.get_docstring(node)
            if docstring:
                chunks.append(docstring)
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
