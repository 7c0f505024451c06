"""Query vectors made exactly as an OUTPUT's documents were.

Everything comes from OUTPUT's manifest: the model's registry entry (so no registry file is
needed where queries are embedded), revision, token cap, dims, precision and int8 ranges, and
the batch settings that fixed-shape batches depend on. The model is loaded through the same
code as a replica (`embedder.Replica`); vectors are derived by the same functions as the job's
columns (`embedder.outputs`): rotated with the stored rotation, truncated, re-normalized,
quantized with the stored ranges. Only the prompt differs: the model's query prompt, or with
`as_documents` the document prompt, to re-embed a stored row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.outputs import base_vectors, output_columns, output_vectors
from jobs.pipeline.calibration import load_rotation
from jobs.pipeline.folders import MANIFEST, OutputFolder
from jobs.pipeline.manifest import MANIFEST_VERSION
from registry import ModelSpec, check_remote_code

# What a manifest must hold for queries to be made as the documents were.
REQUIRED = ("registry_entry", "fingerprint", "dims", "precision", "calibration", "settings")
MANIFEST_VERSIONS = (MANIFEST_VERSION,)  # the manifest layouts queries can be rebuilt from


class ManifestError(ValueError):
    """OUTPUT's manifest is missing, or of a layout this code cannot rebuild queries from."""


def check_manifest(manifest: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """The manifest, or ManifestError naming what is missing."""
    if manifest is None:
        raise ManifestError(
            f"{where} has no {MANIFEST}: it is not a finished job's OUTPUT (the manifest is "
            "written last)"
        )
    version = manifest.get("manifest_version")
    missing = [key for key in REQUIRED if key not in manifest]
    if version not in MANIFEST_VERSIONS or missing:
        raise ManifestError(
            f"{where}/{MANIFEST} is manifest version {version}, which lacks "
            f"{', '.join(missing) or 'nothing but is not known here'}: queries cannot be made "
            f"from it (known versions: {MANIFEST_VERSIONS}). Rerun the job with this version "
            "on the same INPUT and OUTPUT: it embeds nothing again and rewrites the manifest."
        )
    return manifest


class QueryEncoder:
    """`QueryEncoder.from_output(OUTPUT).encode(texts)` -> {column name: vectors}, keyed
    exactly by OUTPUT's column names (`embedding`, `embedding_256`, `embedding_256_int8`...)."""

    def __init__(
        self,
        manifest: dict[str, Any],
        output: OutputFolder,
        device: str = "auto",
        dtype: str | None = None,
        trust_remote_code: bool = False,
    ):
        self.manifest = manifest
        self.model_spec = ModelSpec(**manifest["registry_entry"])
        fingerprint, settings = manifest["fingerprint"], manifest["settings"]
        check_remote_code(self.model_spec, trust_remote_code, fingerprint["revision"])
        self.dims = list(manifest["dims"])
        self.precision = manifest["precision"]
        self.ranges = (manifest["calibration"] or {}).get("ranges")
        self.rotation = load_rotation(output, manifest["calibration"])
        replica_spec = ReplicaSpec.for_outputs(
            self.model_spec,
            self.dims,
            self.precision,
            self.rotation is not None,
            revision=fingerprint["revision"],
            trust_remote_code=trust_remote_code,
            max_tokens=fingerprint["max_tokens"],
            device=device,
            dtype=dtype or self.run_dtype(),
            batch_size=settings["batch_size"],
            max_batch_tokens=settings["max_batch_tokens"],
        )
        self.documents = Replica(replica_spec)
        self.queries = self.documents.for_prompt(
            self.model_spec.query_prompt, self.model_spec.query_prompt_name
        )

    @classmethod
    def from_output(
        cls, uri: str, storage_options: dict[str, Any] | None = None, **options
    ) -> QueryEncoder:
        """The encoder for the OUTPUT at `uri` (a local path or any fsspec URI). `device`
        ("auto", "cuda", "cpu"), `dtype` (default: the run's) and `trust_remote_code` may be
        given."""
        output = OutputFolder(uri, storage_options)
        return cls(check_manifest(output.read_json(MANIFEST), output.uri), output, **options)

    def run_dtype(self) -> str:
        """The precision the run's replicas used, so the floats match; auto when they
        differed."""
        dtype = self.manifest.get("dtype")
        return dtype if isinstance(dtype, str) else "auto"

    @property
    def columns(self) -> list[str]:
        """OUTPUT's vector columns, widest float first."""
        return output_columns(self.dims, self.precision)

    def encode(self, texts: list[str], as_documents: bool = False) -> dict[str, np.ndarray]:
        """Every vector column of OUTPUT for `texts`: with the model's query prompt, or with
        the document prompt when `as_documents` (to re-embed a stored row)."""
        replica = self.documents if as_documents else self.queries
        base = base_vectors(replica.embed(list(texts)), self.rotation, self.dims[0])
        return output_vectors(base, self.dims, self.precision, self.ranges)
