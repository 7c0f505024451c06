"""The truncation policy: decided once, before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from registry.spec import ModelSpec


class PolicyError(ValueError):
    """A run the policy refuses; the message says what to do instead."""


@dataclass(frozen=True)
class Truncation:
    """What the run does to the model's vectors at one dim, and how well that is known."""

    dim: int
    truncated: bool
    verified: bool
    warnings: tuple[str, ...] = ()


def check_truncation(spec: ModelSpec, dim: int | None, allow_non_matryoshka: bool) -> Truncation:
    """Check DIM against the model's facts.

    - DIM above native: refused, naming the native dim.
    - status `none`: refused unless allow_non_matryoshka (then a warning, unverified).
    - status `unknown`: allowed with a warning, unverified.
    - `confirmed` at a dim outside the trained list: allowed with a warning, unverified.
    """
    native = spec.native_dim
    if dim is None or dim == native:
        return Truncation(dim=native, truncated=False, verified=True)
    if dim <= 0:
        raise PolicyError(f"DIM must be a positive integer, got {dim}.")
    if dim > native:
        raise PolicyError(
            f"DIM {dim} is larger than {spec.name}'s native dim {native}. "
            f"Use a DIM of at most {native}, or omit DIM for the full {native}."
        )
    measured = spec.retention_note(dim)
    cost = f" Measured: {measured}." if measured else ""
    if spec.matryoshka == "none":
        if not allow_non_matryoshka:
            unmeasured = "" if measured else " that nothing has measured"
            raise PolicyError(
                f"{spec.name} was not trained for Matryoshka truncation: cutting it to {dim} of "
                f"{native} dims loses retrieval quality{unmeasured}.{cost} Omit DIM to "
                f"keep all {native} dims, pick a Matryoshka model, or pass "
                "--allow-non-matryoshka (EMBED_ALLOW_NON_MATRYOSHKA=1) to truncate anyway."
            )
        return Truncation(
            dim=dim,
            truncated=True,
            verified=False,
            warnings=(
                f"{spec.name} is not a Matryoshka model: truncating to {dim} of {native} dims "
                "was allowed by --allow-non-matryoshka; search quality at this dim is unverified."
                + cost,
            ),
        )
    if spec.matryoshka == "unknown":
        return Truncation(
            dim=dim,
            truncated=True,
            verified=False,
            warnings=(
                f"nobody has confirmed that {spec.name} was trained for Matryoshka truncation: "
                f"truncating to {dim} of {native} dims may degrade search quality "
                "(manifest: truncation_verified false)." + cost,
            ),
        )
    if dim not in spec.matryoshka_dims:
        trained = ", ".join(str(d) for d in spec.matryoshka_dims)
        return Truncation(
            dim=dim,
            truncated=True,
            verified=False,
            warnings=(
                f"{spec.name} was trained for truncation to {trained} dims, not {dim}: "
                "quality between trained dims is unverified; prefer one of the trained dims."
                + cost,
            ),
        )
    return Truncation(dim=dim, truncated=True, verified=True)


def check_remote_code(spec: ModelSpec, trust_remote_code: bool, revision: str) -> None:
    """Models that run code from the hub load only when opted in and pinned to a revision."""
    if not spec.trust_remote_code:
        return
    if not trust_remote_code:
        raise PolicyError(
            f"{spec.name} ({spec.hf_id}) runs code from its hub repository. Pass "
            "--trust-remote-code (EMBED_TRUST_REMOTE_CODE=1) if you trust it."
        )
    if not revision and not spec.path:
        raise PolicyError(
            f"{spec.name} runs remote code but no revision is pinned, so the code could change "
            "under you. Pass --revision <commit sha> (EMBED_REVISION) with the commit you reviewed."
        )
