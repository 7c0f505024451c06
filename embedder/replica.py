"""One replica: one SentenceTransformer loaded on one device, turning texts into unit vectors.

No Ray here: the same code runs inside a Ray actor and on a bare GPU box.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embedder.device import choose_dtype, resolve_device, torch_dtype
from embedder.vectors import truncate_and_normalize


@dataclass(frozen=True)
class ReplicaSpec:
    """A small, picklable description of the model to build inside the worker."""

    model_name: str
    source: str
    source_is_local: bool
    dim: int
    revision: str = ""
    trust_remote_code: bool = False
    backend: str = "torch"
    document_prompt: str = ""
    document_prompt_name: str = ""
    encode_kwargs: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64
    cpu_threads: int | None = None


@dataclass
class ReplicaStats:
    """Counters one replica accumulates over a run."""

    rows: int = 0
    tokens: int = 0
    truncated_texts: int = 0
    batches: int = 0
    oom_retries: int = 0
    encode_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Replica:
    """Loads the model once; `embed` returns float32 unit vectors of width `spec.dim`."""

    def __init__(self, spec: ReplicaSpec, gpus_assigned: bool | None = None):
        import torch

        self.spec = spec
        self.device = resolve_device(spec.device, gpus_assigned, torch.cuda.is_available())
        capability = torch.cuda.get_device_capability() if self.device == "cuda" else None
        self.dtype = choose_dtype(spec.dtype, self.device, capability)
        self.gpu_name = torch.cuda.get_device_name() if self.device == "cuda" else ""
        self.compute_capability = capability
        if self.device == "cpu" and spec.cpu_threads:
            torch.set_num_threads(spec.cpu_threads)
        started = time.perf_counter()
        self.model = load_model(spec, self.device, self.dtype)
        self.load_seconds = time.perf_counter() - started
        if spec.max_tokens:
            self.model.max_seq_length = min(spec.max_tokens, self.model.max_seq_length or 10**9)
        self.stats = ReplicaStats()
        # Halved on each CUDA out-of-memory and kept: the size that worked stays in use.
        self.batch_size = spec.batch_size

    def describe(self) -> dict[str, Any]:
        """Where and how this replica runs, for logs and the manifest."""
        cap = self.compute_capability
        return {
            "device": self.device,
            "dtype": self.dtype,
            "gpu_name": self.gpu_name,
            "compute_capability": f"{cap[0]}.{cap[1]}" if cap else "",
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "max_seq_length": self.model.max_seq_length,
            "load_seconds": round(self.load_seconds, 3),
        }

    def embed(self, texts: list[str]) -> np.ndarray:
        """Encode with the document prompt, truncate to dim, re-normalize; counts tokens."""
        self.count_tokens(texts)
        started = time.perf_counter()
        raw = self.encode_backing_off(texts)
        vectors = truncate_and_normalize(raw, self.spec.dim)
        self.stats.encode_seconds += time.perf_counter() - started
        self.stats.rows += len(texts)
        self.stats.batches += 1
        return vectors

    def encode_backing_off(self, texts: list[str]) -> np.ndarray:
        """Encode; on CUDA out-of-memory halve the batch size and retry instead of failing."""
        import torch

        while True:
            try:
                return self.model.encode(
                    texts,
                    prompt=self.spec.document_prompt or None,
                    prompt_name=self.spec.document_prompt_name or None,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                    **self.spec.encode_kwargs,
                )
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.stats.oom_retries += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def count_tokens(self, texts: list[str]) -> None:
        """Real tokens fed to the model, and how many texts the max length cut short."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return
        limit = self.model.max_seq_length
        lengths = [
            len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        ]
        self.stats.tokens += sum(min(n, limit) for n in lengths)
        self.stats.truncated_texts += sum(n > limit for n in lengths)


def load_model(spec: ReplicaSpec, device: str, dtype: str):
    """Build the SentenceTransformer; a local folder never touches the hub."""
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {
        "device": device,
        "trust_remote_code": spec.trust_remote_code,
        "backend": spec.backend,
    }
    if spec.source_is_local:
        kwargs["local_files_only"] = True
    elif spec.revision:
        kwargs["revision"] = spec.revision
    model = SentenceTransformer(spec.source, **kwargs)
    if spec.backend == "torch" and dtype != "fp32":
        model = model.to(torch_dtype(dtype))
    model.eval()
    return model
