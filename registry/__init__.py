"""Model facts and the truncation policy."""

from registry.policy import PolicyError, TruncationPlan, check_remote_code, plan_truncation
from registry.spec import ModelSpec, Registry, RegistryError

__all__ = [
    "ModelSpec",
    "PolicyError",
    "Registry",
    "RegistryError",
    "TruncationPlan",
    "check_remote_code",
    "plan_truncation",
]
