"""Which device and precision a replica runs on."""

from __future__ import annotations

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "fp32", "fp16", "bf16")


class DeviceError(RuntimeError):
    """The requested or assigned device cannot be used; never silently replaced."""


def resolve_device(requested: str, gpus_assigned: bool | None, cuda_available: bool) -> str:
    """Pick "cuda" or "cpu".

    `gpus_assigned` is True/False inside Ray (did the scheduler give this replica a GPU?) and
    None outside Ray. A replica that was given a GPU but cannot see CUDA is an error, not a
    quiet fall-back to a CPU that would run the job 50x slower.
    """
    if requested not in DEVICES:
        raise DeviceError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or gpus_assigned:
        if not cuda_available:
            raise DeviceError(
                "this replica should run on a GPU but torch sees no CUDA device "
                "(CPU-only torch build, or no driver). Install a CUDA build of torch, or run on "
                "the CPU on purpose with EMBED_DEVICE=cpu (or EMBED_GPUS_PER_REPLICA=0)."
            )
        return "cuda"
    if gpus_assigned is False:
        return "cpu"
    return "cuda" if cuda_available else "cpu"


def choose_dtype(
    requested: str, device: str, compute_capability: tuple[int, int] | None, card_dtype: str = ""
) -> str:
    """Precision for the model's weights.

    auto: fp32 on CPU. On CUDA, bf16 for models published in bf16 on GPUs that have it
    (compute capability 8.0+); fp16 otherwise, and always on a T4 (7.5, no bf16), where a
    NaN from fp16 overflow is caught and that batch redone in fp32.
    """
    if requested not in DTYPES:
        raise DeviceError(f"dtype must be one of {DTYPES}, got {requested!r}")
    if requested != "auto":
        if requested == "bf16" and device == "cuda" and compute_capability < (8, 0):
            raise DeviceError(
                f"bf16 needs compute capability 8.0 or newer; this GPU has "
                f"{compute_capability[0]}.{compute_capability[1]}. Use --dtype fp16 or auto."
            )
        return requested
    if device == "cpu":
        return "fp32"
    return "bf16" if compute_capability >= (8, 0) and card_dtype == "bf16" else "fp16"


def torch_dtype(name: str):
    """The torch dtype for one of DTYPES (not "auto")."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def cpu_features() -> tuple[str, frozenset[str]]:
    """This machine's CPU vendor (e.g. "GenuineIntel", "AuthenticAMD") and flags, from
    /proc/cpuinfo; ("", empty) where there is none to read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = info.read().splitlines()
    except OSError:
        return "", frozenset()

    def first(key: str) -> str:
        return next((line.split(":", 1)[1] for line in lines if line.startswith(key)), "")

    return first("vendor_id").strip(), frozenset(first("flags").split())
