"""Faults injected on purpose, to prove the replica's guards: used by the tests and by
benchmarks/gpu_check.py on a real GPU."""

from __future__ import annotations


def turn_one_batch_to_nan(replica) -> dict[str, bool]:
    """A forward hook on the replica's model that turns one micro-batch's output to NaN, once.
    Returns a flag that says whether it fired."""
    import torch

    fired = {"done": False}

    def nan_once(module, inputs, output):
        if not fired["done"]:
            fired["done"] = True
            output["sentence_embedding"] = torch.full_like(
                output["sentence_embedding"], float("nan")
            )
        return output

    replica.model.register_forward_hook(nan_once)
    return fired
