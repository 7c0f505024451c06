"""One replica: one SentenceTransformer loaded on one device, turning texts into unit vectors.

No Ray here: the same code runs inside a Ray actor and on a bare GPU box
(benchmarks/gpu_check.py).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.attention import choose_attention, flash_attention_available, load_with_attention
from embedder.batching import (
    DEFAULT_MAX_BATCH_TOKENS,
    FIXED_SHAPE_MAX_BATCH_TOKENS,
    MicroBatch,
    plan_fixed_shape_batches,
    plan_micro_batches,
)
from embedder.device import DeviceError, choose_dtype, resolve_device, torch_dtype
from embedder.graphs import (
    GraphError,
    GraphModel,
    choose_openvino_precision,
    is_graph_backend,
    load_graph_model,
    quantize_int8,
    require_runtime,
)
from embedder.importing import import_sentence_transformers
from embedder.memory import peak_rss_bytes
from embedder.tokens import TextTokenizer, TokenizerSpec, Tokens, load_text_tokenizer
from embedder.vectors import bad_rows, truncate_and_normalize
from embedder.weights import Weights, check_weights, locate


@dataclass(frozen=True)
class ReplicaSpec:
    """A small, picklable description of the model to build inside the worker."""

    source: str  # a hub id or a folder; see local_package
    source_is_local: bool
    dim: int
    revision: str = ""
    trust_remote_code: bool = False
    backend: str = "torch"
    document_prompt: str = ""
    document_prompt_name: str = ""
    encode_kwargs: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    card_dtype: str = ""
    device: str = "auto"
    dtype: str = "auto"
    max_batch_tokens: int | None = None  # None: a default for the device
    batch_size: int = 256  # the most texts in one micro-batch, whatever their length
    cpu_threads: int | None = None
    # A package that ships the weights, looked up where the model is loaded (embedder.source).
    local_package: str = ""
    # Encode in batches whose shape is set by the texts' own lengths, so a text's vector does
    # not depend on what it was batched with (quantized codes need it: plan_fixed_shape_batches).
    fixed_shape_batches: bool = False
    # The weights this replica must load (embedder.weights): "" loads whatever is found.
    weights_digest: str = ""
    # "auto": flash attention 2 on unpadded inputs where it applies, else SDPA (embedder.attention).
    attention: str = "auto"
    # The registry's pooling ("mean", "CLS"...): what a graph backend pools an ONNX-only
    # folder's token states with (a sentence-transformers folder says it itself).
    pooling: str = ""
    # --quantize as asked; a run resolves its precision before the int8 graph is made.
    quantize: str = "none"
    # --quantize int8: the int8 graph kept in OUTPUT (embedder.graphs.QuantizedGraph).
    quantized: Any = None

    @property
    def takes_token_ids(self) -> bool:
        """Whether its replicas may be fed token ids made elsewhere: not with encode arguments
        of the model's own, whose tokenization this job does not mirror. The graph backends
        take nothing else."""
        return not self.encode_kwargs

    @property
    def int8(self) -> bool:
        """An int8 graph runs: asked for (made after the run resolves), or made already."""
        return self.quantize == "int8" or self.quantized is not None

    @property
    def runs_graph(self) -> bool:
        """ONNX Runtime or OpenVINO (embedder.graphs), not torch."""
        return is_graph_backend(self.backend)

    def tokenizer_spec(self) -> TokenizerSpec:
        """The tokenizer this spec's replicas check and take token ids from."""
        return TokenizerSpec(self.max_tokens, self.document_prompt, self.document_prompt_name)

    def locate_weights(self) -> Weights:
        """The weights this spec names, as found on this machine."""
        return locate(
            self.source, self.source_is_local, self.local_package, self.revision, self.backend
        )

    @classmethod
    def for_model(
        cls, model, dim: int, *, revision: str = "", trust_remote_code: bool = False, **runtime
    ) -> ReplicaSpec:
        """From a registry entry (registry.ModelSpec) plus this run's choices (device, dtype,
        batch sizes...): what names the weights (resolved where the model loads), the document
        prompt, the encode arguments."""
        return cls(
            source=model.path or model.hf_id,
            source_is_local=bool(model.path),
            local_package="" if model.path else model.local_package,
            dim=dim,
            revision=revision or model.revision,
            trust_remote_code=trust_remote_code and model.trust_remote_code,
            backend=model.backend,
            document_prompt=model.document_prompt,
            document_prompt_name=model.document_prompt_name,
            encode_kwargs=dict(model.encode_kwargs),
            card_dtype=model.card_dtype,
            pooling=model.pooling,
            **runtime,
        )

    @classmethod
    def for_outputs(
        cls, model, dims: list[int], precision: str, rotating: bool, **options
    ) -> ReplicaSpec:
        """The replica that a run writing these columns needs. The job and QueryEncoder both
        build theirs here, so queries are encoded exactly as the documents were."""
        return cls.for_model(
            model,
            # A rotation mixes every dim: the replica gives the full vector, rotated and then
            # truncated to the widest dim (embedder.outputs.base_vectors).
            model.native_dim if rotating else dims[0],
            # Quantized codes are compared across the corpus: a text's codes must not depend
            # on its batch-mates, which float noise from changing batch shapes would break.
            fixed_shape_batches=precision != "float32",
            **options,
        )


@dataclass
class ReplicaStats:
    """Counters one replica accumulates over a run."""

    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated_texts: int = 0
    batches: int = 0
    encode_seconds: float = 0.0
    tokenize_seconds: float = 0.0
    oom_retries: int = 0
    nan_redone_rows: int = 0
    filler_rows: int = 0  # encoded only to keep fixed-shape batches full

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Placed:
    """Where and how a replica of a spec runs on this machine: device, precision, weights."""

    device: str
    dtype: str
    compute_capability: tuple[int, int] | None
    gpu_name: str


def place(spec: ReplicaSpec, gpus_assigned: bool | None = None) -> Placed:
    """The device and precision a replica of `spec` gets here (DeviceError when it cannot).
    A replica that must run on the CPU is placed without asking torch (no CUDA start-up)."""
    if spec.runs_graph:
        return place_graph(spec, gpus_assigned)
    if spec.device == "cpu" or (spec.device == "auto" and gpus_assigned is False):
        return Placed("cpu", choose_dtype(spec.dtype, "cpu", None, spec.card_dtype), None, "")
    import torch

    device = resolve_device(spec.device, gpus_assigned, torch.cuda.is_available())
    capability = torch.cuda.get_device_capability() if device == "cuda" else None
    return Placed(
        device,
        choose_dtype(spec.dtype, device, capability, spec.card_dtype),
        capability,
        torch.cuda.get_device_name() if device == "cuda" else "",
    )


def place_graph(spec: ReplicaSpec, gpus_assigned: bool | None) -> Placed:
    """ONNX Runtime and OpenVINO replicas run on CPUs, in fp32 (or OpenVINO's bf16)."""
    if spec.device == "cuda" or gpus_assigned:
        raise DeviceError(
            f"the {spec.backend} backend runs on CPUs: run it with --device cpu (or "
            "--gpus-per-replica 0), or use --backend torch on GPUs"
        )
    require_runtime(spec.backend)
    allowed = ("auto", "fp32", "bf16") if spec.backend == "openvino" else ("auto", "fp32")
    if spec.dtype not in allowed:
        raise DeviceError(
            f"--dtype {spec.dtype} does not combine with --backend {spec.backend} "
            f"(it runs {', '.join(d for d in allowed if d != 'auto')})"
        )
    if spec.backend == "openvino":
        return Placed("cpu", choose_openvino_precision(spec.dtype, spec.int8), None, "")
    return Placed("cpu", "fp32", None, "")


class Replica:
    """Loads the model once; `embed` returns float32 unit vectors of width `spec.dim`."""

    def __init__(self, spec: ReplicaSpec, gpus_assigned: bool | None = None):
        import torch

        self.spec = spec
        placed = place(spec, gpus_assigned)
        self.device, self.dtype = placed.device, placed.dtype
        self.gpu_name = placed.gpu_name
        self.compute_capability = placed.compute_capability
        if self.device == "cpu" and spec.cpu_threads:
            torch.set_num_threads(spec.cpu_threads)
        started = time.perf_counter()
        # Found and checked once: the fp32 copy for NaN rows loads the same files.
        self.weights = spec.locate_weights()
        check_weights(self.weights, spec.weights_digest)
        self.model, self.attention = load_model(
            spec, self.weights, self.device, self.dtype, self.compute_capability
        )
        self.load_seconds = time.perf_counter() - started
        if spec.max_tokens:
            self.model.max_seq_length = min(spec.max_tokens, self.model.max_seq_length or 10**9)
        self.prompt = spec.document_prompt or self.model.prompts.get(spec.document_prompt_name, "")
        # Halved on each out-of-memory and kept: the budget that worked stays in use. Never
        # below the longest possible text, which must fit a micro-batch on its own.
        defaults = (
            FIXED_SHAPE_MAX_BATCH_TOKENS if spec.fixed_shape_batches else DEFAULT_MAX_BATCH_TOKENS
        )
        budget = spec.max_batch_tokens or defaults[self.device]
        self.max_batch_tokens = max(budget, self.max_seq_length)
        self.fp32_model = None  # loaded on the first NaN under reduced precision
        self.stats = ReplicaStats()
        self.layout: Layout | None = None
        self.text_tokenizer, self.tokenized_by = self.check_tokenizer()

    def for_prompt(self, prompt: str = "", prompt_name: str = "") -> Replica:
        """The same loaded model with another prompt (queries use the query prompt)."""
        other = copy.copy(self)
        other.spec = dataclasses.replace(
            self.spec, document_prompt=prompt, document_prompt_name=prompt_name
        )
        other.prompt = prompt or self.model.prompts.get(prompt_name, "")
        other.stats = ReplicaStats()
        other.text_tokenizer, other.tokenized_by = other.check_tokenizer()
        return other

    @property
    def max_seq_length(self) -> int:
        return self.model.max_seq_length or 512

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
            "backend": self.spec.backend,
            # What the runtime reports it computes in (OpenVINO's own choice, read back).
            "inference_precision": (self.model.precision if self.spec.runs_graph else self.dtype),
            "quantization": self.model.quantization if self.spec.runs_graph else "none",
            "attention": self.attention.describe(),
            "attention_unpadded": self.attention.unpadded,
            # Token ids are taken from the read stage when they carry this identity; else
            # the replica tokenizes, for the reason given.
            "tokenizer": self.tokenizer_identity,
            "tokenizes_texts_because": self.tokenized_by,
            "load_seconds": round(self.load_seconds, 3),
        }

    def peak_memory(self) -> dict[str, Any]:
        """The most memory this replica has held so far: CUDA memory allocated by torch on a
        GPU, the process's peak resident set on the CPU (model, activations, and the rest of
        the worker)."""
        if self.device == "cuda":
            import torch

            return {
                "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                "peak_memory_of": "cuda",
            }
        return {"peak_memory_bytes": peak_rss_bytes(), "peak_memory_of": "rss"}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of width dim, in input order: each text tokenized once (here), then
        as `embed_tokens`."""
        if self.text_tokenizer is None:
            return self.embed_inputs(TextInputs(self, texts))
        started = time.perf_counter()
        tokens = self.text_tokenizer.tokenize(texts)
        self.stats.tokenize_seconds += time.perf_counter() - started
        return self.embed_tokens(tokens)

    def embed_tokens(self, tokens: Tokens) -> np.ndarray:
        """Unit vectors of width dim for texts tokenized already (by `tokenizer_identity`'s
        tokenizer, in the read stage): no text is tokenized again."""
        self.stats.truncated_texts += tokens.truncated
        return self.embed_inputs(TokenInputs(self, tokens))

    def embed_inputs(self, inputs: Inputs) -> np.ndarray:
        """Sorted by length and encoded in micro-batches under the token budget."""
        lengths = inputs.lengths
        self.stats.tokens += sum(lengths)
        started = time.perf_counter()
        out = np.empty((len(lengths), self.spec.dim), dtype=np.float32)
        pending = deque(self.plan(lengths, self.max_batch_tokens, self.spec.batch_size))
        while pending:
            batch = pending.popleft()
            try:
                raw = self.encode_batch(inputs, batch)
            except _out_of_memory_errors() as err:
                pending.extendleft(reversed(self.back_off(batch, lengths, err)))
                continue
            out[list(batch.rows)] = truncate_and_normalize(raw, self.spec.dim)
            self.stats.batches += 1
            # Unpadded inputs compute on their real tokens only.
            unpadded = self.layout is not None and self.layout.flatten
            real = sum(lengths[i] for i in batch.rows)
            self.stats.padded_tokens += real if unpadded else batch.padded_tokens
            self.stats.filler_rows += batch.filler_rows
        self.stats.encode_seconds += time.perf_counter() - started
        self.stats.rows += len(lengths)
        return out

    def back_off(self, batch: MicroBatch, lengths: list[int], err: Exception) -> list[MicroBatch]:
        """Halve the token budget and re-plan the batch that ran out of memory: it always
        splits in two or more. A single text that does not fit is a real failure."""
        if batch.encoded_rows == 1:
            raise err
        self.max_batch_tokens = max(self.max_seq_length, self.max_batch_tokens // 2)
        self.stats.oom_retries += 1
        _release_cuda_cache()
        sub_lengths = [lengths[i] for i in batch.rows]
        # Fixed shapes change here: codes of texts encoded after an out-of-memory can differ
        # by one step from what a roomier replica gives (counted in oom_retries).
        smaller = self.plan(sub_lengths, self.max_batch_tokens, batch.encoded_rows // 2 or 1)
        return [dataclasses.replace(b, rows=tuple(batch.rows[j] for j in b.rows)) for b in smaller]

    def plan(self, lengths: list[int], max_batch_tokens: int, max_rows: int) -> list[MicroBatch]:
        if self.spec.fixed_shape_batches:
            return plan_fixed_shape_batches(
                lengths, max_batch_tokens, self.max_seq_length, max_rows
            )
        return plan_micro_batches(lengths, max_batch_tokens, max_rows)

    def encode_batch(self, inputs: Inputs, batch: MicroBatch) -> np.ndarray:
        """Full-width vectors of the batch's rows. Fixed-shape batches are filled up with
        copies of their first text (encoded, then dropped) and padded to their width."""
        rows = list(batch.rows) + list(batch.rows[:1]) * batch.filler_rows
        real = len(batch.rows)
        return self.encode_rows(inputs, rows, batch.pad_multiple, real)[:real]

    def encode_rows(
        self, inputs: Inputs, rows: list[int], pad_multiple: int = 0, real_rows: int | None = None
    ) -> np.ndarray:
        """Full-width vectors for one micro-batch; rows that come out NaN, inf or zero under
        reduced precision are encoded again in fp32 (and counted, filler rows excepted)."""
        raw = inputs.encode(self.model, rows, pad_multiple)
        bad = bad_rows(raw[:, : self.spec.dim])
        if bad.size and self.dtype != "fp32":
            if self.fp32_model is None:
                # On the CPU, whatever the replica runs on: a second, full-size fp32 copy on
                # the GPU would not fit where the half-precision one barely does. Rare rows,
                # redone slowly, instead of an out-of-memory for the whole replica.
                self.fp32_model, _ = load_model(self.spec, self.weights, "cpu", "fp32")
                self.fp32_model.max_seq_length = self.model.max_seq_length
            raw = np.array(raw, dtype=np.float32)
            if pad_multiple:  # the same shape again, so the fp32 floats are batch-invariant too
                raw[bad] = inputs.encode(self.fp32_model, rows, pad_multiple)[bad]
            else:
                raw[bad] = inputs.encode(self.fp32_model, [rows[i] for i in bad])
            self.stats.nan_redone_rows += int((bad < (real_rows or len(rows))).sum())
        return raw

    def encode_texts(self, model, texts: list[str], pad_multiple: int = 0) -> np.ndarray:
        """sentence-transformers' own encode: for models whose tokenization this job does not
        mirror (embedder.tokens)."""
        kwargs = dict(self.spec.encode_kwargs)
        if pad_multiple:
            # The batch holds texts of one padded width only: padding the longest to a
            # multiple of the quantum gives exactly that width.
            processing = dict(kwargs.pop("processing_kwargs", {}))
            processing["text"] = {**processing.get("text", {}), "pad_to_multiple_of": pad_multiple}
            kwargs["processing_kwargs"] = processing
        return model.encode(
            texts,
            prompt=self.spec.document_prompt or None,
            prompt_name=self.spec.document_prompt_name or None,
            batch_size=len(texts),  # the micro-batch is already the batch
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
            **kwargs,
        ).astype(np.float32, copy=False)

    def encode_features(self, model, features: dict[str, Any]) -> np.ndarray:
        """The model's forward pass on ready features: what `encode` does after tokenizing."""
        if isinstance(model, GraphModel):
            return model.embed({k: v.numpy() for k, v in features.items()})
        import torch
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode():
            output = model(batch_to_device(features, model.device))
            return output["sentence_embedding"].float().cpu().numpy()

    def features(
        self, ids: list[np.ndarray], pad_multiple: int = 0, flatten: bool = True
    ) -> dict[str, Any]:
        """The model's input for these token ids, as its own `preprocess` makes it: padded to
        the longest (or a multiple of `pad_multiple`) on the tokenizer's side, with an
        attention mask, token types where the model takes them, and the rest of what
        `preprocess` adds (checked against it: check_tokenizer)."""
        import torch

        layout = self.layout
        if layout.flatten and flatten:
            collated = self.model[0].data_collator([{"input_ids": row.tolist()} for row in ids])
            collated.pop("labels", None)
            if layout.position_offset:
                collated["position_ids"] = collated["position_ids"] + layout.position_offset
            return dict(collated) | layout.extras
        longest = max(len(row) for row in ids)
        width = -(-longest // pad_multiple) * pad_multiple if pad_multiple else longest
        input_ids = np.full((len(ids), width), layout.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            span = slice(width - len(row), width) if layout.pad_left else slice(0, len(row))
            input_ids[i, span] = row
            mask[i, span] = 1
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
        }
        if layout.token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        return features | layout.extras

    def int8_model(self, texts: list[str]) -> dict[str, bytes]:
        """A static int8 model of this replica's graph, calibrated on `texts`: its files by
        name, the graph first (embedder.graphs.quantize_int8)."""
        return quantize_int8(self.model.graph, self.spec.backend, self.calibration_batches(texts))

    def calibration_batches(self, texts: list[str], rows: int = 16) -> list[dict[str, Any]]:
        """These texts as the model's padded inputs (numpy), in batches of similar length:
        what a static int8 quantization is calibrated on."""
        ids = self.text_tokenizer.tokenize(texts).rows()
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [
            {k: v.numpy() for k, v in self.features([ids[i] for i in order[s : s + rows]]).items()}
            for s in range(0, len(order), rows)
        ]

    def check_tokenizer(self) -> tuple[TextTokenizer | None, str]:
        """This job's tokenizer for the model, where it gives exactly the features of the
        model's own `preprocess` on a probe (prompt included, a text past the length cap);
        else None and why: the replica then hands texts to sentence-transformers."""
        if not self.spec.takes_token_ids:
            if self.spec.runs_graph:
                raise GraphError(
                    f"the {self.spec.backend} backend feeds the model token ids and cannot "
                    "pass the model's own encode arguments: use --backend torch"
                )
            return None, "the model's encode arguments are its own"
        spec = self.spec.tokenizer_spec()
        tokenizer = load_text_tokenizer(Path(self.weights.folder), spec)
        if self.spec.runs_graph:
            # The graph takes nothing but these ids: the tokenizer is the model's by definition.
            self.layout = Layout.for_graph(tokenizer, self.model)
            return tokenizer, ""
        if tokenizer is None:
            return None, "its tokenization is not one this job mirrors"
        if tokenizer.limit != self.max_seq_length or tokenizer.prompt != self.prompt:
            return None, "its length cap or prompt differs from the model's"
        probe = PROBE_TEXTS + ["token " * (self.max_seq_length + 8)]
        reference = self.model.preprocess(probe, prompt=self.prompt or None)
        self.layout = Layout.of(reference, tokenizer, self.model)
        ours = self.features(tokenizer.tokenize(probe).rows())
        if not same_features(ours, reference):
            return None, "the model's preprocess gives other features than this job's tokenizer"
        return tokenizer, ""

    @property
    def tokenizer_identity(self) -> str:
        """Which tokenizer this replica takes token ids from ("": none, it tokenizes texts)."""
        return self.text_tokenizer.identity if self.text_tokenizer else ""

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text gives the model (prompt included, capped at max length), by the
        model's own tokenizer; counts texts the cap cuts short."""
        limit = self.max_seq_length
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:  # no tokenizer to ask: treat every text as full length
            return [limit] * len(texts)
        prompted = [self.prompt + t for t in texts] if self.prompt else texts
        encoded = tokenizer(prompted, truncation=False, verbose=False)["input_ids"]
        full = [len(ids) for ids in encoded]
        self.stats.truncated_texts += sum(n > limit for n in full)
        return [min(n, limit) for n in full]


# Texts that show a tokenizer's differences: plain words, code, outer and inner spaces, accents
# and CJK (a normalizer that lowercases or strips accents changes their ids).
PROBE_TEXTS = ["A short Text.", "def f(x):\n    return x  # code", " spaced  out ", "É ü 中文"]


@dataclass(frozen=True)
class Layout:
    """How the model's own `preprocess` lays out a batch, read from one it made."""

    pad_id: int
    pad_left: bool
    token_types: bool
    flatten: bool
    position_offset: int
    extras: dict[str, Any]  # what preprocess adds besides tensors (modality, prompt_length)

    @classmethod
    def for_graph(cls, tokenizer: TextTokenizer, model: GraphModel) -> Layout:
        """Padded batches, token types where the graph takes them."""
        return cls(
            pad_id=tokenizer.pad_id,
            pad_left=tokenizer.padding_side == "left",
            token_types="token_type_ids" in model.input_names,
            flatten=False,
            position_offset=0,
            extras={},
        )

    @classmethod
    def of(cls, reference: dict[str, Any], tokenizer: TextTokenizer, model) -> Layout:
        import torch

        first = model[0]
        return cls(
            pad_id=tokenizer.pad_id,
            pad_left=tokenizer.padding_side == "left",
            token_types="token_type_ids" in reference,
            flatten=bool(getattr(first, "can_flatten_inputs", False)),
            position_offset=int(getattr(first, "_flatten_position_offset", 0) or 0),
            extras={k: v for k, v in reference.items() if not isinstance(v, torch.Tensor)},
        )


def same_features(ours: dict[str, Any], reference: dict[str, Any]) -> bool:
    import torch

    if set(ours) != set(reference):
        return False
    for key, value in reference.items():
        mine = ours[key]
        if isinstance(value, torch.Tensor):
            if not isinstance(mine, torch.Tensor) or not torch.equal(mine.long(), value.long()):
                return False
        elif mine != value:
            return False
    return True


class Inputs:
    """What a replica embeds, by row: each row's length in tokens, and vectors of rows."""

    lengths: list[int]

    def encode(self, model, rows: list[int], pad_multiple: int = 0) -> np.ndarray:
        raise NotImplementedError


class TokenInputs(Inputs):
    """Token ids made by the job's tokenizer: fed to the model as they are."""

    def __init__(self, replica: Replica, tokens: Tokens):
        self.replica = replica
        self.rows = tokens.rows()
        self.lengths = [len(row) for row in self.rows]

    def encode(self, model, rows: list[int], pad_multiple: int = 0) -> np.ndarray:
        # Unpadded (flattened) inputs only for the model loaded with flash attention: the
        # fp32 copy for NaN rows runs SDPA on the CPU and needs them padded.
        flatten = model is self.replica.model
        features = self.replica.features([self.rows[i] for i in rows], pad_multiple, flatten)
        return self.replica.encode_features(model, features)


class TextInputs(Inputs):
    """Texts that sentence-transformers tokenizes (again, for each micro-batch)."""

    def __init__(self, replica: Replica, texts: list[str]):
        self.replica = replica
        self.texts = texts
        started = time.perf_counter()
        self.lengths = replica.token_lengths(texts)
        replica.stats.tokenize_seconds += time.perf_counter() - started

    def encode(self, model, rows: list[int], pad_multiple: int = 0) -> np.ndarray:
        return self.replica.encode_texts(model, [self.texts[i] for i in rows], pad_multiple)


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (torch.OutOfMemoryError,)


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_model(
    spec: ReplicaSpec,
    weights: Weights,
    device: str,
    dtype: str,
    compute_capability: tuple[int, int] | None = None,
):
    """Build the SentenceTransformer from the folder the weights were found in (checked by
    the caller against the digest the spec pins); nothing touches the hub. Returns the model
    and the attention it really runs (embedder.attention): flash attention 2 on unpadded
    inputs where the GPU, precision and batches allow it, else SDPA on padded batches."""
    if spec.runs_graph:
        model = load_graph_model(
            Path(weights.folder),
            weights.digest,
            spec.backend,
            dtype,
            spec.pooling,
            spec.cpu_threads,
            spec.trust_remote_code,
            spec.quantized,
        )
        return model, choose_attention(device, None, True, False, backend=spec.backend)
    SentenceTransformer = import_sentence_transformers().SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # A "Loading weights" bar per replica load says nothing in a batch job's log.
    transformers_logging.disable_progress_bar()
    on_gpu_torch = device == "cuda" and spec.backend == "torch"
    attention = choose_attention(
        device,
        compute_capability,
        spec.fixed_shape_batches,
        flash_attention_available() if on_gpu_torch else "",
        backend=spec.backend,
        dtype=dtype,
        requested=spec.attention,
    )

    def load(attention_kwargs: dict[str, Any]):
        kwargs: dict[str, Any] = {
            "device": device,
            "trust_remote_code": spec.trust_remote_code,
            "backend": spec.backend,
            "local_files_only": True,
        }
        if spec.backend == "torch":
            # Loaded in the dtype it runs in: loading in fp32 and then casting would hold both
            # copies at once (e5-mistral-7b: 28 GB on the way to 14 GB).
            kwargs["model_kwargs"] = {"dtype": torch_dtype(dtype), **attention_kwargs}
        model = SentenceTransformer(weights.folder, **kwargs)
        if spec.backend == "torch" and dtype != "fp32":
            # Modules outside the transformer (pooling, dense heads) are small: cast them too.
            # Parameters already in this dtype are not copied.
            model = model.to(torch_dtype(dtype))
        return model.eval()

    # One short text through the unpadded path: a kernel that loads but cannot run falls back.
    def check(model) -> None:
        model.encode(["attention check"], show_progress_bar=False)

    # Fixed-shape batches are padded whatever was asked: load_with_attention switches
    # unpadding off for every padded choice.
    return load_with_attention(load, attention, check=check if attention.unpadded else None)
