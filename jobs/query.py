"""Queries embedded exactly as an OUTPUT's documents were:
`QueryEncoder.from_output(OUTPUT).encode(["a question"])` (see jobs.retrieval.encoder)."""

from jobs.retrieval.encoder import ManifestError, QueryEncoder

__all__ = ["ManifestError", "QueryEncoder"]
