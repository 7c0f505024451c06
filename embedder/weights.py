"""Which weights a replica loads, named so that a run can pin them.

A registry entry names weights by a folder, a package that ships them, or a hub id, and any of
these can change under a long job: a hub repository gets a new commit, a package a new
version, a folder new files. So a run resolves the weights once (the folder they load from,
and for the hub the commit that folder is), computes a `sha256:` digest of the files that load
(configuration, tokenizer, weights, code; not documentation or other frameworks' weights), and
records both in OUTPUT's fingerprint. Every replica, and `QueryEncoder`, loads from the
folder it resolves on its own machine only when that folder has this digest
(`WeightsMismatch` otherwise): one OUTPUT, one set of weights.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.source import resolve_source

# Files a SentenceTransformer folder may hold that it never loads: documentation, git's own,
# pictures, and weights for other frameworks or runtimes. Also not downloaded from the hub.
NOT_LOADED = (
    "*.md",
    "LICENSE*",
    ".git*",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.svg",
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "openvino/*",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.tflite",
    "*.gguf",
    "tf_model*",
    "flax_model*",
    "coreml/*",
)
# An ONNX-only folder's graph and its external weights (embedder.graphs), at the root.
ROOT_GRAPH_FILES = ("*.onnx", "*.onnx_data")
# PyTorch weights that transformers skips when a .safetensors file is there.
PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt")
TORCH_WEIGHTS = ("*.safetensors", *PICKLED_WEIGHTS)


class WeightsMismatch(RuntimeError):
    """The weights found here are not the ones a run was made with."""


@dataclass(frozen=True)
class Weights:
    """Resolved weights: where they are here, which hub commit they are, their digest."""

    folder: str
    revision: str  # the hub commit; "" for a folder or a package
    digest: str  # "sha256:<hex>" over the files that load
    files: int

    def pinned(self) -> dict[str, Any]:
        """What a fingerprint records: the same for the same weights wherever they lie."""
        return {"revision": self.revision or None, "digest": self.digest}


def locate(
    source: str, is_local: bool, local_package: str = "", revision: str = "", backend: str = ""
) -> Weights:
    """The folder the weights load from, and its hub commit where it comes from the hub (a
    snapshot of the revision asked for, downloaded unless it is in the cache already; with
    the onnx or openvino backend, ONNX files at its root too: an ONNX-only repository)."""
    folder, local = resolve_source(source, is_local, local_package)
    commit = ""
    if not local:
        from huggingface_hub import snapshot_download

        ignored = NOT_LOADED
        if backend in ("onnx", "openvino"):
            ignored = tuple(p for p in NOT_LOADED if p not in ROOT_GRAPH_FILES)
        folder = snapshot_download(source, revision=revision or None, ignore_patterns=ignored)
        commit = Path(folder).name  # the cache names each snapshot by its commit
    files = loaded_files(Path(folder))
    return Weights(str(folder), commit, digest_of(Path(folder), files), len(files))


def loaded_files(folder: Path) -> list[str]:
    """The files under `folder` that loading the model reads, "/"-separated, sorted."""
    found = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.endswith((".lock", ".incomplete"))
    )
    # An ONNX-only folder (no torch weights at its root): its graph is what loads.
    graph_only = not holds_torch_weights(found)
    found = [
        f
        for f in found
        if not any(fnmatch.fnmatch(f, p) for p in NOT_LOADED) or (graph_only and root_graph(f))
    ]
    if any(f.endswith(".safetensors") for f in found):
        found = [f for f in found if not any(fnmatch.fnmatch(f, p) for p in PICKLED_WEIGHTS)]
    return found


def holds_torch_weights(relpaths: list[str]) -> bool:
    """Whether torch weights lie at the folder's root (then they are what loads)."""
    return any(at_root(f, TORCH_WEIGHTS) for f in relpaths)


def root_graph(relpath: str) -> bool:
    return at_root(relpath, ROOT_GRAPH_FILES)


def at_root(relpath: str, patterns: tuple[str, ...]) -> bool:
    """Whether the file lies at the folder's root and matches one of the patterns."""
    return "/" not in relpath and any(fnmatch.fnmatch(relpath, p) for p in patterns)


def digest_of(folder: Path, files: list[str]) -> str:
    """sha256 over each file's name and content hash, in name order."""
    total = hashlib.sha256()
    for relpath in files:
        with open(folder / relpath, "rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
        total.update(f"{relpath}\0{content}\n".encode())
    return f"sha256:{total.hexdigest()}"


def check_weights(found: Weights, expected_digest: str) -> None:
    """WeightsMismatch unless the weights found here are the expected ones."""
    if expected_digest and found.digest != expected_digest:
        revision = f" (revision {found.revision})" if found.revision else ""
        raise WeightsMismatch(
            f"the weights at {found.folder}{revision} are {found.digest}, but OUTPUT was made "
            f"with {expected_digest}: vectors of other weights must not be mixed into it. "
            "Restore the weights it was made with, or use a new OUTPUT (or --overwrite)."
        )
