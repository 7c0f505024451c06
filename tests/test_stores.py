"""The README's vector-store snippets, run as written on a real OUTPUT: each store's top 10
equals jobs.search's (ties at the cut aside)."""

from __future__ import annotations

import re

import pytest

from jobs.pipeline.folders import OutputFolder
from jobs.query import QueryEncoder
from jobs.retrieval.search import search
from tests.conftest import REPO

QUERIES = [
    "how do I pretty-print JSON from the shell?",
    "parse command line options",
    "read a CSV file with a custom delimiter",
    "frequently asked questions",
    "def function returns a list",
]
STORES = ("lancedb", "qdrant", "faiss", "duckdb")


def snippet(store: str) -> str:
    """The Python block that follows `<!-- store: NAME -->` in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- store: {store} -->\n```python\n(.*?)\n```", readme, re.S)
    assert found, f"no {store} snippet in the README"
    return found.group(1)


def same_ranking(theirs: list[str], reference: list, k: int = 10) -> bool:
    """Equal top k, except that rows whose exact scores tie may trade places (also across the
    cut at k: `reference` holds more than k hits, for their scores)."""
    ids = [hit.id for hit in reference[:k]]
    score = {hit.id: hit.score for hit in reference}
    if len(theirs) != k or len(set(theirs)) != k:
        return False
    for got, expected in zip(theirs, ids):
        if got != expected and not (got in score and abs(score[got] - score[expected]) < 1e-5):
            return False
    return True


@pytest.fixture(scope="module")
def reference(demo_output):
    encoder = QueryEncoder.from_output(str(demo_output))
    output = OutputFolder(str(demo_output))
    answers = {}
    for text in QUERIES:
        query = {name: vectors[0] for name, vectors in encoder.encode([text]).items()}
        answers[text] = search(output, query, "embedding", k=20)
    return answers


@pytest.mark.parametrize("store", STORES)
def test_each_store_snippet_ranks_as_exact_search_does(store, demo_output, tmp_path, reference):
    code = snippet(store).replace('"out/demo"', repr(str(demo_output)))
    code = code.replace('"out/lancedb"', repr(str(tmp_path / "lancedb")))
    namespace: dict = {}
    exec(compile(code, f"README.md ({store} snippet)", "exec"), namespace)
    for text, hits in reference.items():
        got = namespace["search"](text)
        assert same_ranking(got, hits), (text, got, [h.id for h in hits[:10]])
