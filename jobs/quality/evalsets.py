"""A labelled retrieval set built from text every machine has: the Python standard library.

Code search, the task jina-code-embeddings is made for: each document is a function's source with
its docstring removed, and its query is the docstring's first sentence. Nothing is downloaded;
the generator is shipped, not the data.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# A fixed list, so the set is the same on every machine with the same Python.
STDLIB_MODULES = (
    "argparse", "ast", "asyncio/base_events", "asyncio/tasks", "calendar", "collections/__init__",
    "configparser", "csv", "dataclasses", "datetime", "difflib", "email/message", "enum",
    "fractions", "ftplib", "functools", "gettext", "gzip", "heapq", "http/client", "inspect",
    "ipaddress", "json/decoder", "json/encoder", "logging/__init__", "mailbox", "pathlib",
    "pickle", "pprint", "random", "shutil", "smtplib", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "tokenize", "traceback", "typing",
    "unittest/case", "urllib/parse", "uuid", "zipfile",
)  # fmt: skip
FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


@dataclass(frozen=True)
class Definition:
    """One function or class of the standard library."""

    name: str
    source: str
    docstring: str | None


def stdlib_definitions(
    modules: tuple[str, ...] = STDLIB_MODULES, methods: bool = True
) -> list[Definition]:
    """Top-level functions and classes (and, with methods, the methods of classes), in a
    fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Definition] = []
    for module in modules:
        path = root / f"{module}.py"
        if not path.exists():
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.parse(source).body:
            nodes = [node]
            if methods and isinstance(node, ast.ClassDef):
                nodes += [n for n in node.body if isinstance(n, ast.FunctionDef)]
            for item in nodes:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    text = "\n".join(lines[item.lineno - 1 : item.end_lineno])
                    name = f"{module.replace('/', '.')}.{item.name}:{item.lineno}"
                    found.append(Definition(name, text, ast.get_docstring(item)))
    return found


def without_docstring(source: str) -> str:
    """The definition's code with its docstring statement removed (so the query is not in it)."""
    tree = ast.parse(source_dedented(source))
    node = tree.body[0]
    if (
        node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(getattr(node.body[0], "value", None), ast.Constant)
        and isinstance(node.body[0].value.value, str)
    ):
        lines = source_dedented(source).splitlines()
        doc = node.body[0]
        del lines[doc.lineno - 1 : doc.end_lineno]
        return "\n".join(lines)
    return source_dedented(source)


def source_dedented(source: str) -> str:
    import textwrap

    return textwrap.dedent(source)


def first_sentence(docstring: str) -> str | None:
    text = " ".join(docstring.split())
    match = FIRST_SENTENCE.match(text)
    sentence = match.group(1) if match else text
    return sentence if len(sentence.split()) >= 4 else None


def code_search_set(limit: int | None = 600) -> tuple[list[dict], list[dict]]:
    """(corpus records {id, text}, queries {query, relevant}) for the built-in evaluation."""
    corpus, queries, seen_queries = [], [], set()
    for definition in stdlib_definitions():
        # Functions and methods only: a class's source holds its methods' docstrings, which
        # would leak other queries' answers into one document.
        if not definition.docstring or not definition.source.lstrip().startswith("def"):
            continue
        query = first_sentence(definition.docstring)
        if query is None or query in seen_queries:
            continue  # a query shared by two functions has no single right answer
        code = without_docstring(definition.source)
        if len(code.splitlines()) < 2:
            continue
        seen_queries.add(query)
        corpus.append({"id": definition.name, "text": code})
        queries.append({"query": query, "relevant": [definition.name]})
        if limit and len(corpus) >= limit:
            break
    return corpus, queries
