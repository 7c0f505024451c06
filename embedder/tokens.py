"""Token ids made once per text, wherever there is a CPU to spare.

A replica on a GPU runs a small model faster than its one CPU can tokenize, so the job
tokenizes in the read stage (on the other CPUs) and the replica feeds those ids to the model
directly: each text is tokenized exactly once. `TextTokenizer` is the model's own text
tokenizer, loaded from the weights' folder without loading the weights, and set up as
sentence-transformers sets it up (its module's `max_seq_length`, then the run's max tokens,
truncating longest first, special tokens added, the document prompt in front). It is loaded
once where the replicas find their weights (jobs.pipeline.job.resolve) and reaches the read
tasks pickled, so that they need neither the weights nor transformers.

Mirroring sentence-transformers is checked, never assumed: a replica tokenizes a probe with
the model's own `preprocess` and with this tokenizer, and uses ids from the read stage only
when the two agree and the ids carry the identity of the tokenizer it checked
(`Replica.check_tokenizer`). Any other model (a lowercasing module, a chat template, a
non-torch backend, encode arguments of its own) is tokenized on the replica as before.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedder.cache import cache_folder, write_whole

TOKENS = pa.list_(pa.int32())


@dataclass(frozen=True)
class Tokens:
    """Token ids of some texts (a list<int32> column, one row per text) and how many of the
    texts the length cap cut short."""

    ids: pa.ListArray
    truncated: int

    def rows(self) -> list[np.ndarray]:
        """Each text's ids as a numpy view into the column's values."""
        offsets = self.ids.offsets.to_numpy()
        values = self.ids.values.to_numpy(zero_copy_only=False)
        return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


class TextTokenizer:
    """The model's text tokenizer, capped at `limit` tokens, with the prompt in front.

    Only the fast tokenizer's Rust core (`tokenizers`): built once where the weights are
    (`of`, with transformers), it travels pickled as its JSON, so that a read task anywhere
    tokenizes without the weights and without importing transformers (seconds per worker)."""

    def __init__(self, backend_json: str, limit: int, prompt: str, pad_id: int, padding_side: str):
        from tokenizers import Tokenizer

        # Set to truncate and never pad: the tokenizer.json a model ships may carry a padding
        # or truncation of its own.
        self.backend = Tokenizer.from_str(backend_json)
        self.backend.no_padding()
        self.backend.enable_truncation(limit, strategy="longest_first")
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.limit = limit
        self.prompt = prompt
        self.identity = hashlib.sha256(
            json.dumps(
                [self.backend.to_str(), limit, prompt, self.pad_id, self.padding_side]
            ).encode("utf-8", "surrogatepass")
        ).hexdigest()[:16]

    @classmethod
    def of(cls, tokenizer, limit: int, prompt: str = "") -> TextTokenizer:
        """From a transformers fast tokenizer, as sentence-transformers loaded it."""
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(
            tokenizer.backend_tokenizer.to_str(), limit, prompt, pad_id, tokenizer.padding_side
        )

    @property
    def state(self) -> tuple[str, int, str, int, str]:
        """What builds this tokenizer again: TextTokenizer(*state)."""
        return (self.backend.to_str(), self.limit, self.prompt, self.pad_id, self.padding_side)

    def __reduce__(self):
        return (rebuilt_tokenizer, (self.identity, self.state))

    def tokenize(self, texts: list[str]) -> Tokens:
        """Each text's ids (prompt included, capped at the limit), as one Arrow column."""
        prompted = [self.prompt + t for t in texts] if self.prompt else texts
        # The ids without the character offsets, which nothing here reads: 16 % less CPU per
        # text (docs/benchmarks.md); the ids and the overflow are the same.
        encodings = self.backend.encode_batch_fast(prompted)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int32, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1])
        )
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        return Tokens(column, sum(bool(e.overflowing) for e in encodings))


# Each read task unpickles its stage's arguments again; a worker builds each tokenizer once
# (building it from its JSON costs tens of ms for MiniLM, far more for large vocabularies).
_BUILT: dict[str, TextTokenizer] = {}


def rebuilt_tokenizer(identity: str, state: tuple) -> TextTokenizer:
    """A pickled TextTokenizer, built once per process."""
    if identity not in _BUILT:
        _BUILT[identity] = TextTokenizer(*state)
    return _BUILT[identity]


@dataclass(frozen=True)
class TokenizerSpec:
    """How a model's tokenizer is set up for a run: the run's max tokens and document prompt
    (given, or named among the model's prompts)."""

    max_tokens: int | None = None
    prompt: str = ""
    prompt_name: str = ""


def load_text_tokenizer(folder: Path, spec: TokenizerSpec) -> TextTokenizer | None:
    """The tokenizer of the weights in `folder`, set up as `spec` says; None where this job
    does not mirror the model's tokenization (see the module's notes)."""
    module_dir = input_module_dir(folder)
    if module_dir is None:
        return None
    config = read_json(module_dir / "sentence_bert_config.json")
    if config.get("do_lower_case") or config.get("modality_config"):
        return None
    from transformers import AutoTokenizer

    kwargs = dict(config.get("processor_kwargs") or config.get("tokenizer_args") or {})
    tokenizer = AutoTokenizer.from_pretrained(str(module_dir), local_files_only=True, **kwargs)
    if not tokenizer.is_fast or getattr(tokenizer, "chat_template", None):
        return None
    limit = module_limit(tokenizer, config, read_json(module_dir / "config.json"))
    if spec.max_tokens:
        limit = min(limit, spec.max_tokens)
    prompt = spec.prompt or prompts(folder).get(spec.prompt_name, "")
    return TextTokenizer.of(tokenizer, limit, prompt)


def cached_text_tokenizer(folder: Path, spec: TokenizerSpec, digest: str) -> TextTokenizer | None:
    """load_text_tokenizer, kept on this machine for weights of `digest`: building it imports
    transformers (about 2 s of a CPU, on every run's driver), rebuilding it from what was
    kept takes milliseconds. The entry is named by the weights' digest, the spec, this module's
    code and the versions of transformers and tokenizers, so it is what loading would give
    now; a replica still builds its own and takes ids only from a tokenizer of the same
    identity."""
    entry = cache_folder("tokenizers") / f"{tokenizer_cache_key(spec, digest)}.json"
    try:
        kept = json.loads(entry.read_text(encoding="utf-8"))
        return TextTokenizer(*kept["state"]) if kept["state"] else None
    except Exception:  # noqa: BLE001 - not kept yet, or unreadable: made again
        pass
    tokenizer = load_text_tokenizer(folder, spec)
    keep_entry(entry, {"state": tokenizer.state if tokenizer else None})
    return tokenizer


def tokenizer_cache_key(spec: TokenizerSpec, digest: str) -> str:
    decided_by = [
        # The code that builds it: an edit here makes every entry a new one.
        hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        digest,
        [spec.max_tokens, spec.prompt, spec.prompt_name],
        version("transformers"),
        version("tokenizers"),
    ]
    return hashlib.sha256(json.dumps(decided_by).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def keep_entry(entry: Path, content: dict) -> None:
    """Written whole (runs side by side may write the same entry); where the cache cannot be
    written, not at all: the next run builds it again."""
    try:
        write_whole(entry, json.dumps(content).encode("utf-8", "surrogatepass"))
    except OSError:
        pass


def input_module_dir(folder: Path) -> Path | None:
    """Where the model's tokenizer lies: its sentence-transformers input module, or the root
    of a folder with no sentence-transformers config but a fast tokenizer (a plain
    transformers folder, or an ONNX-only one)."""
    if not (folder / "modules.json").exists():
        return folder if (folder / "tokenizer.json").exists() else None
    first = first_module(folder)
    return None if first is None else folder / first.get("path", "")


def first_module(folder: Path) -> dict | None:
    """The model's input module, when it is sentence-transformers' text Transformer."""
    modules = read_json(folder / "modules.json")
    if not isinstance(modules, list) or not modules:
        return None
    first = min(modules, key=lambda m: m.get("idx", 0))
    if not str(first.get("type", "")).endswith(".Transformer"):
        return None
    return first


def module_limit(tokenizer, config: dict, model_config: dict) -> int:
    """The most tokens the module gives the model, as sentence-transformers sets it: the
    module's max_seq_length, else the tokenizer's, capped at the position embeddings."""
    if config.get("max_seq_length"):
        return int(config["max_seq_length"])
    limit = tokenizer.model_max_length
    positions = model_config.get("max_position_embeddings")
    if positions and positions != -1:
        limit = min(limit, positions)
    return int(limit)


def prompts(folder: Path) -> dict[str, str]:
    return read_json(folder / "config_sentence_transformers.json").get("prompts") or {}


def read_json(path: Path):
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
