"""What a machine keeps between runs, derived from weights it has seen: exported ONNX graphs
(embedder.graphs) and the read stage's tokenizers (embedder.tokens), under
`$XDG_CACHE_HOME/matryoshka-embed` (`~/.cache/matryoshka-embed` without it). Every entry is
named by the weights' digest and what else decides it, so other weights never find it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_folder(kind: str) -> Path:
    """This machine's folder for one kind of entry ("graphs", "tokenizers")."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "matryoshka-embed" / kind


def write_whole(path: Path, data: bytes) -> None:
    """`data` to `path`, whole or not at all: written beside it, then renamed over it, so that
    processes reading or writing the same entry at once never see half of it (OSError where
    the folder cannot be written; no scratch file is left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
