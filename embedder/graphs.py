"""The model as a compiled graph on CPUs: ONNX Runtime or OpenVINO (`--backend onnx|openvino`).

Both run one ONNX file: the folder's own where it holds only an ONNX model (a repository
laid out like Qdrant/all-MiniLM-L6-v2-onnx: `model.onnx` and the tokenizer's files at its
root), else one exported here once from the weights the run pinned (torch's TorchScript
exporter, no optimum), kept in a cache named by the weights' digest, so that a replica start
only loads it. The graph maps token ids to the transformer's last hidden state; the pooling
(mean, CLS or last token) is done here in numpy, from the folder's sentence-transformers
config or, for an ONNX-only folder, the registry entry's `pooling`. Token ids come from the
job's tokenizer (embedder.tokens), exactly as for the torch backend.

Only models that are a Transformer, a Pooling and optionally a Normalize module run this
way: anything else (a Dense head, a custom module) is refused at start, naming it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.cache import cache_folder, write_whole
from embedder.device import cpu_features
from embedder.importing import import_sentence_transformers
from embedder.weights import holds_torch_weights

GRAPH_BACKENDS = ("onnx", "openvino")
POOLINGS = ("mean", "cls", "lasttoken")
# What the exported graph takes and gives, named as transformers names them.
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
GRAPH_OUTPUT = "last_hidden_state"
MODULES_RUN = ("Transformer", "Pooling", "Normalize")
# The runtime each backend imports, and what to install for it, named in refusals.
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
INSTALL = {
    "onnx": "pip install 'matryoshka-embed[onnx]' (onnxruntime, onnx)",
    "openvino": "pip install 'matryoshka-embed[openvino]' (openvino, nncf, onnx)",
}


class GraphError(RuntimeError):
    """A model or setting that the ONNX Runtime or OpenVINO backend cannot run."""


def is_graph_backend(backend: str) -> bool:
    return backend in GRAPH_BACKENDS


def own_graph(folder: Path) -> Path | None:
    """The ONNX file of a folder that holds only an ONNX model (no torch weights to export)."""
    if holds_torch_weights([p.name for p in folder.iterdir()]):
        return None
    found = sorted(folder.glob("*.onnx"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise GraphError(f"{folder} holds several ONNX files ({names}): which one runs is unclear")
    return found[0] if found else None


def pooling_of(folder: Path, registry_pooling: str = "") -> str:
    """How token states become one vector: the folder's Pooling module, else the registry's
    `pooling` ("mean", "CLS", "last token, left padding"...)."""
    modules = read_json(folder / "modules.json")
    if isinstance(modules, list) and modules:
        check_modules(modules)
        pooling = next(m for m in modules if m.get("type", "").endswith(".Pooling"))
        return pooling_from_config(read_json(folder / pooling.get("path", "") / "config.json"))
    text = registry_pooling.lower().replace(" ", "").replace("_", "")
    for name in POOLINGS:
        if text.startswith(name):
            return name
    raise GraphError(
        f"{folder} has no sentence-transformers config and the registry entry's pooling "
        f"({registry_pooling!r}) is not one of mean, CLS, last token: the vector cannot be "
        "pooled as the model was trained. Give `pooling` in the registry entry."
    )


def check_modules(modules: list[dict]) -> None:
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[0] != "Transformer" or "Pooling" not in kinds or set(kinds) - set(MODULES_RUN):
        raise GraphError(
            f"the model's modules are {kinds}; the onnx and openvino backends run a "
            "Transformer, a Pooling and a Normalize module only. Use --backend torch."
        )


def pooling_from_config(config: dict[str, Any]) -> str:
    """The pooling mode of a sentence-transformers Pooling config (old or new style)."""
    if config.get("include_prompt") is False:
        raise GraphError(
            "the model pools without its prompt's tokens (include_prompt false), which the "
            "onnx and openvino backends do not mirror. Use --backend torch."
        )
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        modes = [mode.replace("_", "").lower()]
    else:
        modes = [
            name
            for key, name in (
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_lasttoken", "lasttoken"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_sqrt_len_tokens", "meansqrtlen"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
            )
            if config.get(key)
        ]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise GraphError(
            f"pooling {modes} is not one the onnx and openvino backends run (one of "
            f"{POOLINGS}). Use --backend torch."
        )
    return modes[0]


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """One float32 vector per row of token states, as sentence-transformers pools them."""
    rows = np.arange(len(hidden))
    if pooling == "cls":
        # The first real token, wherever the padding is.
        first = np.argmax(mask, axis=1)
        return np.ascontiguousarray(hidden[rows, first], dtype=np.float32)
    if pooling == "lasttoken":
        # The last real token, wherever the padding is: the last position the mask keeps.
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        return np.ascontiguousarray(hidden[rows, last], dtype=np.float32)
    weights = mask[..., None].astype(np.float32)
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    return summed / np.clip(weights.sum(axis=1), 1e-9, None)


def cache_root() -> Path:
    """Where exported graphs are kept on this machine, one folder per weights' digest."""
    return cache_folder("graphs")


def graph_for(folder: Path, digest: str, trust_remote_code: bool = False) -> Path:
    """The ONNX file to run for the weights in `folder`: its own, or exported once into the
    cache under the weights' digest (another process exporting the same at once is fine:
    the first to finish is kept)."""
    own = own_graph(folder)
    if own is not None:
        return own
    target = cache_root() / digest.replace("sha256:", "")[:32] / "model.onnx"
    if target.exists():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent.parent))
    try:
        export_onnx(folder, scratch / "model.onnx", trust_remote_code)
        try:
            scratch.rename(target.parent)
        except OSError:  # exported meanwhile by another replica: theirs is the same graph
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def export_onnx(folder: Path, target: Path, trust_remote_code: bool = False) -> None:
    """The sentence-transformers model's transformer as ONNX: token ids (and mask, and token
    types where the model has them) to its last hidden state, batch and length dynamic."""
    import torch

    SentenceTransformer = import_sentence_transformers().SentenceTransformer
    modules = read_json(folder / "modules.json")
    if isinstance(modules, list) and modules:
        check_modules(modules)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model = SentenceTransformer(
        str(folder), device="cpu", local_files_only=True, trust_remote_code=trust_remote_code
    )
    transformer = model[0].auto_model.float().eval()
    takes_types = "token_type_ids" in model.preprocess(["probe"])
    names = list(GRAPH_INPUTS if takes_types else GRAPH_INPUTS[:2])

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs))).last_hidden_state

    # eval() on the wrapper too: the exporter restores the wrapper's mode onto the model.
    wrapper = LastHiddenState(transformer).eval()
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, GRAPH_OUTPUT)}
    # The tracer's warnings are about Python branches it freezes (checked: the graph's vectors
    # equal sentence-transformers' on every batch shape the tests use).
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            str(target),
            input_names=names,
            output_names=[GRAPH_OUTPUT],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


class GraphModel:
    """An ONNX graph loaded by ONNX Runtime or compiled by OpenVINO, pooling its output."""

    def __init__(
        self,
        graph: Path,
        backend: str,
        pooling: str,
        precision: str = "fp32",
        threads: int | None = None,
        quantization: str = "none",
    ):
        self.graph = graph
        self.pooling = pooling
        if backend == "onnx":
            self.runner = OnnxRunner(graph, threads)
        elif backend == "openvino":
            self.runner = OpenVinoRunner(graph, precision, threads)
        else:
            raise GraphError(f"not a graph backend: {backend!r}")
        # What ran, for the manifest: OpenVINO's precision as it reports it, int8 or "none".
        self.precision = self.runner.precision
        self.quantization = quantization
        # Set by load_graph_model from the tokenizer and the folder's config, as a
        # SentenceTransformer carries them.
        self.max_seq_length: int | None = None
        self.prompts: dict[str, str] = {}

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.runner.input_names

    def embed(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Pooled float32 vectors (not normalized) for padded token ids and their mask."""
        feed = {name: np.asarray(features[name], dtype=np.int64) for name in self.input_names}
        hidden = self.runner(feed)
        return pool(hidden, np.asarray(features["attention_mask"]), self.pooling)


class OnnxRunner:
    """ONNX Runtime on the CPU, fp32 (or the int8 a quantized graph holds)."""

    def __init__(self, graph: Path, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise missing_runtime("onnx") from err
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        check_inputs(self.input_names, graph)
        self.output = output_name([o.name for o in self.session.get_outputs()], graph)
        self.precision = "fp32"

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feed)[0]


class OpenVinoRunner:
    """OpenVINO on the CPU, in the precision asked for (its own default would pick bf16 by
    itself where the CPU has it; the run pins what it chose, see choose_openvino_precision)."""

    def __init__(self, graph: Path, precision: str, threads: int | None):
        core = openvino_core()
        config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(graph))
        self.compiled = core.compile_model(model, "CPU", config)
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        check_inputs(self.input_names, graph)
        names = [o.get_any_name() for o in self.compiled.outputs]
        self.output = self.compiled.outputs[names.index(output_name(names, graph))]
        self.precision = precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.request = self.compiled.create_infer_request()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(self.request.infer(feed)[self.output], copy=True)


def require_runtime(backend: str) -> None:
    """GraphError naming the install when the backend's runtime is missing here (checked
    where the replicas resolve, before any starts)."""
    import importlib.util

    if importlib.util.find_spec(RUNTIME[backend]) is None:
        raise missing_runtime(backend)


def missing_runtime(backend: str) -> GraphError:
    return GraphError(f"--backend {backend} needs {RUNTIME[backend]}: {INSTALL[backend]}")


def openvino_core():
    try:
        import openvino as ov
    except ImportError as err:
        raise missing_runtime("openvino") from err
    return ov.Core()


def precision_name(element_type) -> str:
    """The element type OpenVINO reports it computes in, as "bf16" or "fp32" (its str() is
    "<Type: 'bfloat16'>", its type name "bf16")."""
    return "bf16" if element_type.get_type_name() == "bf16" else "fp32"


def choose_openvino_precision(requested: str, int8: bool = False) -> str:
    """fp32 or bf16 for an OpenVINO replica: what was asked, or for "auto" the faster of the
    two on this CPU (auto_openvino_precision), made explicit so that it is recorded and every
    replica of one OUTPUT computes alike."""
    if requested in ("fp32", "bf16"):
        return requested
    capabilities = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    vendor, flags = cpu_features()
    return auto_openvino_precision("BF16" in capabilities, vendor, flags, int8)


def auto_openvino_precision(has_bf16: bool, vendor: str, flags: frozenset[str], int8: bool) -> str:
    """OpenVINO by itself computes in bf16 wherever the CPU has it, and that is not always
    faster. Measured with all-MiniLM-L6-v2 on 2 CPUs (docs/benchmarks.md): on an AMD Zen 4
    (avx512_bf16, no AMX) bf16 ran 1.66x faster than fp32; on an Intel Xeon with avx512_bf16
    but no AMX, 0.64x for the fp32 graph and 1.10x for the int8 graph (whose matrix products
    are int8 either way). So bf16 for an int8 graph wherever the CPU has it; for an fp32 graph
    only where bf16 products have fast hardware: AMX, or AMD's avx512_bf16."""
    if not has_bf16:
        return "fp32"
    if int8 or "amx_bf16" in flags:
        return "bf16"
    return "bf16" if vendor == "AuthenticAMD" and "avx512_bf16" in flags else "fp32"


def check_inputs(names: tuple[str, ...], graph: Path) -> None:
    unknown = [n for n in names if n not in GRAPH_INPUTS]
    if unknown or "input_ids" not in names or "attention_mask" not in names:
        raise GraphError(
            f"{graph} takes {list(names)}: this job feeds input_ids, attention_mask and "
            "token_type_ids only"
        )


def output_name(names: list[str], graph: Path) -> str:
    """The token states: named last_hidden_state (or token_embeddings), else the only output."""
    for name in (GRAPH_OUTPUT, "token_embeddings"):
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise GraphError(f"{graph} gives {names}: none of them is the token states")


def read_json(path: Path):
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def load_graph_model(
    folder: Path,
    digest: str,
    backend: str,
    precision: str,
    registry_pooling: str = "",
    threads: int | None = None,
    trust_remote_code: bool = False,
    quantized: QuantizedGraph | None = None,
) -> GraphModel:
    """The graph for the weights in `folder` (theirs, or exported once; or the int8 graph made
    from it for this OUTPUT), loaded by `backend` in `precision`, with what a replica asks of
    a model: its token cap and its prompts."""
    from embedder.tokens import TokenizerSpec, load_text_tokenizer, prompts

    pooling = pooling_of(folder, registry_pooling)
    tokenizer = load_text_tokenizer(folder, TokenizerSpec())
    if tokenizer is None:
        raise GraphError(
            f"the {backend} backend feeds the model token ids from its fast tokenizer, and the "
            f"one in {folder} is not one this job mirrors (a lowercasing module, a chat "
            "template, or no tokenizer.json). Use --backend torch."
        )
    if quantized is not None:
        graph, quantization = quantized.local_copy(), quantized.quantization
    else:
        graph, quantization = graph_for(folder, digest, trust_remote_code), "none"
    model = GraphModel(graph, backend, pooling, precision, threads, quantization)
    model.max_seq_length = tokenizer.limit
    model.prompts = prompts(folder)
    return model


# --quantize int8: what each backend writes, the graph first.
QUANTIZED_FILES = {"onnx": ("model-int8.onnx",), "openvino": ("model-int8.xml", "model-int8.bin")}


def quantize_int8(graph: Path, backend: str, batches: list[dict[str, np.ndarray]]) -> dict:
    """Static int8 of `graph` for `backend`, calibrated on these padded batches of token ids:
    NNCF for OpenVINO, ONNX Runtime's static quantization (QDQ, weights per channel) for
    onnx. Returns the files it made, by name, as bytes, the graph first."""
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        folder = Path(scratch)
        if backend == "openvino":
            quantize_with_nncf(graph, batches, folder)
        else:
            quantize_with_onnxruntime(graph, batches, folder)
        return {name: (folder / name).read_bytes() for name in QUANTIZED_FILES[backend]}


def quantize_with_nncf(graph: Path, batches: list[dict[str, np.ndarray]], folder: Path) -> None:
    import nncf
    import openvino as ov

    model = openvino_core().read_model(str(graph))
    names = {i.get_any_name() for i in model.inputs}
    feeds = [{k: v for k, v in batch.items() if k in names} for batch in batches]
    quantized = nncf.quantize(
        model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds)
    )
    # fp32 weights kept as they are: fp16 compression would add its own rounding.
    ov.save_model(quantized, str(folder / QUANTIZED_FILES["openvino"][0]), compress_to_fp16=False)


def quantize_with_onnxruntime(
    graph: Path, batches: list[dict[str, np.ndarray]], folder: Path
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = {i.name for i in OnnxRunner(graph, None).session.get_inputs()}

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = iter([{k: v for k, v in b.items() if k in names} for b in batches])

        def get_next(self):
            return next(self.left, None)

    prepared = folder / "prepared.onnx"
    # Symbolic shape inference does not finish on transformers' exports; ONNX's own does.
    quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(folder / QUANTIZED_FILES["onnx"][0]),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # The matrix products hold nearly all the work; quantizing the rest (softmax, layer
        # norm, GELU) costs quality for little speed.
        op_types_to_quantize=["MatMul"],
        # Measured on MiniLM (300 texts): every MatMul quantized kept a mean cosine of 0.928
        # to fp32; leaving out the products fed by the activation (their inputs have the
        # outliers a static range cannot hold) kept 0.989 at the same speed.
        nodes_to_exclude=activation_fed_matmuls(prepared),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


# Element-wise operators a GELU or SiLU is built of in an exported graph.
ACTIVATIONS = {"Erf", "Gelu", "FastGelu", "BiasGelu", "Tanh", "Sigmoid"}
ELEMENTWISE = {"Mul", "Add", "Div", "Pow", "Cast"} | ACTIVATIONS


def activation_fed_matmuls(graph: Path) -> list[str]:
    """The MatMuls whose input comes out of an activation function (a transformer's FFN
    output projection), found by walking a few element-wise nodes back from each."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    producer = {output: node for node in nodes for output in node.output}

    def fed_by_activation(name: str, depth: int = 5) -> bool:
        node = producer.get(name)
        if node is None or depth == 0 or node.op_type not in ELEMENTWISE:
            return False
        if node.op_type in ACTIVATIONS:
            return True
        return any(fed_by_activation(i, depth - 1) for i in node.input)

    return [n.name for n in nodes if n.op_type == "MatMul" and fed_by_activation(n.input[0])]


@dataclass(frozen=True)
class QuantizedGraph:
    """An int8 graph kept in OUTPUT: its files there, their digest, and where to read them
    (`source`: anything with `open(relpath, "rb")`, the job's OutputFolder). A replica loads
    its own copy, made once per machine and checked against the digest."""

    backend: str
    files: tuple[str, ...]  # relative to `source`, the graph first
    digest: str
    source: Any
    quantization: str = "int8"

    def local_copy(self) -> Path:
        from embedder.weights import WeightsMismatch, digest_of  # the same digest as weights

        folder = cache_root() / "quantized" / self.digest.replace("sha256:", "")[:32]
        names = [Path(f).name for f in self.files]
        if not all((folder / n).exists() for n in names):
            for relpath, name in zip(self.files, names):
                with self.source.open(relpath, "rb") as handle:
                    data = handle.read()
                write_whole(folder / name, data)
        found = digest_of(folder, sorted(names))
        if found != self.digest:
            raise WeightsMismatch(
                f"the int8 model copied to {folder} is {found}, but OUTPUT recorded "
                f"{self.digest}: its files changed after the run that made them"
            )
        return folder / names[0]


def files_digest(named: dict[str, bytes]) -> str:
    """The digest embedder.weights.digest_of gives these files laid out in one folder."""
    total = hashlib.sha256()
    for name in sorted(named):
        total.update(f"{name}\0{hashlib.sha256(named[name]).hexdigest()}\n".encode())
    return f"sha256:{total.hexdigest()}"
