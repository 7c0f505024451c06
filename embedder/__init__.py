"""The replica: load one model on one device, encode, truncate, re-normalize."""

from embedder.replica import Replica, ReplicaSpec, ReplicaStats
from embedder.vectors import EmbeddingError, truncate_and_normalize

__all__ = ["EmbeddingError", "Replica", "ReplicaSpec", "ReplicaStats", "truncate_and_normalize"]
