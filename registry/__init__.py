"""Model facts and the truncation policy."""

from registry.policy import PolicyError, Truncation, check_remote_code, check_truncation
from registry.spec import ModelSpec, Registry, RegistryError

__all__ = [
    "ModelSpec",
    "PolicyError",
    "Registry",
    "RegistryError",
    "Truncation",
    "check_remote_code",
    "check_truncation",
]
