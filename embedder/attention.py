"""Which attention a replica's model runs, and loading it without letting that choice crash a run.

Flash attention 2 lets sentence-transformers pack a batch's texts into one unpadded sequence
(its `unpad_inputs` switch): no compute spent on padding. It needs a CUDA GPU of compute
capability 8.0 or newer (a T4, 7.5, has none), fp16 or bf16 weights, the torch backend, and a
flash attention 2 build on this machine. Everywhere else the model runs SDPA on padded batches,
which the replica already sorts by length so that little padding is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

FLASH = "flash_attention_2"
SDPA = "sdpa"
# What a run may ask for: "auto" takes flash attention 2 wherever it applies.
REQUESTS = ("auto", SDPA, FLASH)
FLASH_MIN_CAPABILITY = (8, 0)
FLASH_DTYPES = ("fp16", "bf16")
# transformers' own stand-in for "flash_attention_2" when the flash_attn package is missing
# (FLASH_ATTN_KERNEL_FALLBACK in transformers.modeling_flash_attention_utils).
FLASH_KERNEL_REPO = "kernels-community/flash-attn2"
# The attention transformers picks when none is named: sdpa where the model has it, else eager.
DEFAULT = "default"


@dataclass(frozen=True)
class Attention:
    """An attention implementation (a transformers `attn_implementation`, or the backend's
    own), whether inputs are packed without padding, and why this one was taken."""

    implementation: str
    unpadded: bool
    reason: str

    def describe(self) -> str:
        """One phrase for a log line: "flash_attention_2, unpadded", or why not:
        "sdpa, padded (compute capability 7.5 < 8.0)"."""
        text = f"{self.implementation}, {'unpadded' if self.unpadded else 'padded'}"
        return text if self.unpadded or not self.reason else f"{text} ({self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_attention(
    device: str,
    compute_capability: tuple[int, int] | None,
    fixed_shape_batches: bool,
    flash_available: bool | str,
    backend: str = "torch",
    dtype: str = "fp16",
    requested: str = "auto",
) -> Attention:
    """The attention a replica should load, from facts its caller found (no torch, no CUDA).

    `flash_available` is what flash_attention_available() returned (a truthy name of where
    flash attention 2 comes from, or "") or a plain bool. `requested` is the run's setting:
    "sdpa" always gets SDPA; "flash_attention_2" gets it only where it can run, like "auto",
    since every rule below is a hard one.
    """
    if requested not in REQUESTS:
        raise ValueError(f"attention must be one of {REQUESTS}, got {requested!r}")
    if backend != "torch":
        # ONNX and OpenVINO graphs come with their attention built in: nothing to choose.
        return Attention(backend, False, f"the {backend} backend runs its own attention")
    if requested == SDPA:
        return Attention(SDPA, False, "sdpa was asked for")
    blocker = _flash_blocker(
        device, compute_capability, fixed_shape_batches, flash_available, dtype
    )
    if blocker:
        prefix = f"{FLASH} was asked for, but " if requested == FLASH else ""
        return Attention(SDPA, False, prefix + blocker)
    source = flash_available if isinstance(flash_available, str) else "installed"
    cap = _capability_text(compute_capability)
    return Attention(FLASH, True, f"compute capability {cap}, {dtype}, flash attention 2: {source}")


def _flash_blocker(
    device: str,
    compute_capability: tuple[int, int] | None,
    fixed_shape_batches: bool,
    flash_available: bool | str,
    dtype: str,
) -> str:
    """Why flash attention 2 with unpadded inputs cannot be used here ("" when it can)."""
    if device != "cuda":
        return f"flash attention 2 needs a CUDA GPU, this replica runs on the {device}"
    if compute_capability is None or tuple(compute_capability) < FLASH_MIN_CAPABILITY:
        minimum = _capability_text(FLASH_MIN_CAPABILITY)
        return f"compute capability {_capability_text(compute_capability)} < {minimum}"
    if dtype not in FLASH_DTYPES:
        return f"{dtype} weights: flash attention 2 runs in fp16 or bf16 only"
    if fixed_shape_batches:
        # A text's vector must not depend on its batch-mates there, and packing a batch into one
        # sequence changes the shapes the kernels see with every composition.
        return "fixed-shape batches keep padded inputs"
    if not flash_available:
        return "no flash attention 2 on this machine (no flash_attn, no cached hub kernel)"
    return ""


def _capability_text(capability: tuple[int, int] | None) -> str:
    return "unknown" if capability is None else f"{capability[0]}.{capability[1]}"


def flash_attention_available() -> str:
    """Where flash attention 2 can be had on this machine without the network: "flash_attn"
    (the package imports), the hub kernel transformers would load in its place
    ("kernels-community/flash-attn2", only when the `kernels` package is a version transformers
    accepts, the hub is in offline mode and the kernel has a build for this machine in the
    local cache), or "" for none. Never raises: any failure means "not available"."""
    if _flash_attn_package_works():
        return "flash_attn"
    if _hub_kernel_works_offline():
        return FLASH_KERNEL_REPO
    return ""


def _flash_attn_package_works() -> bool:
    try:
        from transformers.utils import is_flash_attn_2_available

        # transformers' own test (package, version, a CUDA torch), then the compiled
        # extension itself: a build for another CUDA or torch fails only on import.
        if not is_flash_attn_2_available():
            return False
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:
        return False
    return True


def _hub_kernel_works_offline() -> bool:
    try:
        from huggingface_hub import constants
        from transformers.integrations.hub_kernels import get_attn_kernel_version
        from transformers.utils import is_kernels_available

        # transformers ignores a `kernels` outside the versions it supports, and raises for a
        # missing flash_attn instead of loading the kernel.
        if not is_kernels_available():
            return False
        # Online, `kernels` asks the hub which commit a kernel version is, even when cached:
        # with no network that load fails. Offline it reads only the local cache.
        if not constants.HF_HUB_OFFLINE:
            return False
        from kernels import has_kernel

        # Offline, has_kernel looks in the cache for a build matching this torch, CUDA and GPU.
        return bool(
            has_kernel(FLASH_KERNEL_REPO, version=get_attn_kernel_version(FLASH_KERNEL_REPO))
        )
    except Exception:
        return False


def model_kwargs(attention: Attention) -> dict[str, Any]:
    """What to add to SentenceTransformer's `model_kwargs` to load this attention. Nothing for
    the backends' own attention and for transformers' default."""
    if attention.implementation in (FLASH, SDPA):
        return {"attn_implementation": attention.implementation}
    return {}


def switch_unpadding(model, unpadded: bool) -> bool:
    """Turn sentence-transformers' packing of unpadded inputs on or off on a loaded model, and
    say whether it is really on: it stays off unless the model loaded with flash attention's
    variable-length functions, whatever was asked."""
    first = model[0] if len(model) else None
    if not hasattr(first, "unpad_inputs"):
        return False  # not a transformers module (e.g. a static embedding): nothing to pack
    # Set explicitly either way: left at None, sentence-transformers packs whenever it can.
    first.unpad_inputs = unpadded
    return bool(getattr(first, "can_flatten_inputs", False))


def loaded_implementation(model) -> str:
    """The attention implementation the loaded model's config names ("" when it names none,
    as ONNX and OpenVINO configs do)."""
    first = model[0] if len(model) else None
    try:
        return str(getattr(first.config, "_attn_implementation", None) or "")
    except Exception:
        return ""


def load_with_attention(
    load: Callable[[dict[str, Any]], Any],
    attention: Attention,
    check: Callable[[Any], object] | None = None,
) -> tuple[Any, Attention]:
    """Load a model with `attention` and settle its unpadding; what comes back says what is
    really in effect. `load(extra_model_kwargs)` builds the SentenceTransformer; `check(model)`
    (e.g. encoding one short text) runs after the unpadding switch, so that a kernel which
    loads but cannot run on this GPU is refused too.

    An attention the model, the machine or the installed packages refuse does not stop the
    run: flash attention 2 falls back to sdpa, and sdpa to transformers' default (eager for
    models without sdpa), with the refusal in the reason. A failure of the last one is raised.
    """
    attempts = [attention]
    if attention.implementation == FLASH:
        attempts.append(Attention(SDPA, False, ""))
    if attention.implementation in (FLASH, SDPA):
        attempts.append(Attention(DEFAULT, False, ""))
    refusals: list[str] = []
    for number, attempt in enumerate(attempts, start=1):
        last = number == len(attempts)
        try:
            model = load(model_kwargs(attempt))
            settled = _settle(model, attempt)
            if check is not None:
                check(model)
        except Exception as err:
            if last:
                raise
            refusals.append(f"{attempt.implementation} failed: {_first_line(err)}")
            continue
        if refusals:
            settled = Attention(settled.implementation, settled.unpadded, "; ".join(refusals))
        return model, settled
    raise AssertionError("unreachable: the last attempt returns or raises")


def _settle(model, attention: Attention) -> Attention:
    """The attention as loaded: the implementation the config names (transformers may swap in
    a hub kernel or eager) and unpadding as it really is."""
    unpadded = switch_unpadding(model, attention.unpadded)
    implementation = loaded_implementation(model) or attention.implementation
    reason = attention.reason
    if attention.unpadded and not unpadded:
        reason = "sentence-transformers cannot pack this model's inputs unpadded"
    return Attention(implementation, unpadded, reason)


def _first_line(err: Exception, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(err).__name__}: {line[:limit]}"
