"""What a machine keeps between runs, derived from weights it has seen: exported ONNX graphs
(embedder.graphs) and the read stage's tokenizers (embedder.tokens), under
`$XDG_CACHE_HOME/matryoshka-embed` (`~/.cache/matryoshka-embed` without it). Every entry is
named by the weights' digest and what else decides it, so other weights never find it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(kind: str) -> Path:
    """This machine's folder for one kind of entry ("graphs", "tokenizers")."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "matryoshka-embed" / kind
