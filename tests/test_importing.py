"""sentence-transformers imported without scikit-learn: the same library, started faster, and
scikit-learn still there the moment anything calls it."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, plain_env

# Run in a fresh interpreter: this test process imported scikit-learn long ago.
IMPORTED_LEAN = """
import sys
from embedder.importing import import_sentence_transformers
st = import_sentence_transformers()
assert "sklearn" not in sys.modules, "scikit-learn was imported"
assert st.SentenceTransformer.__module__.startswith("sentence_transformers")

import torch
from sentence_transformers.util import manhattan_sim
a = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]])
sparse = manhattan_sim(a.to_sparse(), a.to_sparse())   # the one call that needs scikit-learn
assert torch.equal(sparse, manhattan_sim(a, a)), (sparse, manhattan_sim(a, a))
import sklearn
assert sys.modules["sklearn"] is sklearn and sklearn.__version__   # the real package now
print("ok")
"""

FALLBACK = """
import sys
import embedder.importing as importing
importing.DEFERRED = {"sklearn.metrics": ()}   # as if sentence-transformers wanted another name
st = importing.import_sentence_transformers()
assert st.SentenceTransformer.__module__.startswith("sentence_transformers")
assert sys.modules["sklearn.metrics"].pairwise_distances.__module__.startswith("sklearn.")
print("ok")
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=plain_env(), capture_output=True, text=True
    )


def test_sentence_transformers_imports_without_scikit_learn_until_it_is_called():
    result = run_python(IMPORTED_LEAN)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_an_import_that_needs_more_of_scikit_learn_imports_it_in_full():
    result = run_python(FALLBACK)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
