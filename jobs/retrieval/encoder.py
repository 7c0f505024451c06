"""Query vectors made exactly as an OUTPUT's documents were.

Everything comes from OUTPUT's manifest: the model's registry entry (so no registry file is
needed where queries are embedded), revision, token cap, dims, precision and int8 ranges, and
the batch settings that fixed-shape batches depend on. The model is loaded through the same
code as a replica (`embedder.Replica`), and only when the weights found here are those the
run recorded (their digest; WeightsMismatch otherwise); vectors are derived by the same
functions as the job's columns (`embedder.outputs`): rotated with the stored rotation (the
columns narrower than the model's native dim; every column for an OUTPUT calibrated before
that layout), truncated, re-normalized, quantized with the stored ranges. Only the prompt
differs: the model's query prompt, or with `as_documents` the document prompt, to re-embed a
stored row.

An OUTPUT may come from someone else: its manifest is data. Nothing it names is imported or
read unless it is safe (`trusted_model_spec`, `OutputFolder.inside`): a package that ships
weights only when it is the registry's own for that model and is not found inside OUTPUT; a
model folder only outside OUTPUT, and loaded only when its digest is the recorded one; the
rotation only from a file inside OUTPUT; a model that runs remote code only at the revision
OUTPUT recorded, and only with trust_remote_code.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from pydantic import ValidationError

from embedder import Replica, ReplicaSpec
from embedder.outputs import base_vectors, output_columns, output_vectors
from embedder.weights import WeightsMismatch
from jobs.pipeline.calibration import load_rotation, quantized_graph, rotates_full_width
from jobs.pipeline.folders import MANIFEST, OutputError, OutputFolder, resolves_inside
from jobs.pipeline.manifest import MANIFEST_VERSION
from registry import ModelSpec, Registry, check_remote_code

# What a manifest must hold for queries to be made as the documents were.
REQUIRED = (
    "registry_entry", "fingerprint", "weights", "dims", "precision", "calibration", "settings",
)  # fmt: skip
MANIFEST_VERSIONS = (MANIFEST_VERSION,)  # the manifest layouts queries can be rebuilt from


class ManifestError(ValueError):
    """OUTPUT's manifest is missing, of a layout this code cannot rebuild queries from, or
    names something it must not load."""


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
            f"from it (known versions: {MANIFEST_VERSIONS}). Rerun the job with this version: "
            "into a new OUTPUT if an older version made this one (its weights are unknown, so "
            "a resume is refused), on the same INPUT and OUTPUT otherwise (it embeds nothing "
            "again and rewrites the manifest)."
        )
    return manifest


def trusted_model_spec(entry: dict[str, Any], output: OutputFolder) -> ModelSpec:
    """The manifest's registry entry, or ManifestError where loading it would run code that
    OUTPUT could have put there."""
    try:
        spec = ModelSpec(**entry)
    except (TypeError, ValidationError) as err:
        raise ManifestError(f"OUTPUT's manifest holds no valid registry entry: {err}") from None
    if spec.local_package:
        known = {(s.hf_id, s.local_package) for s in Registry.load()}
        if (spec.hf_id, spec.local_package) not in known:
            raise ManifestError(
                f"OUTPUT's manifest names the package {spec.local_package!r} to load "
                f"{spec.hf_id} from, which is not the registry's own for that model: importing "
                "a package runs its code, and nothing an OUTPUT names is run. Refused."
            )
        found = importlib.util.find_spec(spec.local_package)
        if found is not None and found.origin and is_inside(found.origin, output):
            raise ManifestError(
                f"the package {spec.local_package!r} would be imported from inside OUTPUT "
                f"({found.origin}): refused. Run from outside OUTPUT."
            )
    if spec.path and is_inside(spec.path, output):
        raise ManifestError(
            f"OUTPUT's manifest names a model folder inside OUTPUT ({spec.path}): a model "
            "folder can name code to import, and nothing an OUTPUT holds is run. Refused."
        )
    return spec


def is_inside(path: str, output: OutputFolder) -> bool:
    """Whether a local path lies inside OUTPUT (links resolved)."""
    return output.is_local and resolves_inside(path, output.root)


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
        self.model_spec = trusted_model_spec(manifest["registry_entry"], output)
        fingerprint, settings, weights = (
            manifest["fingerprint"],
            manifest["settings"],
            manifest["weights"],
        )
        # The commit the run loaded, so that remote code is the code the run ran.
        revision = weights.get("revision") or fingerprint["revision"]
        check_remote_code(self.model_spec, trust_remote_code, revision)
        self.dims = list(manifest["dims"])
        self.precision = manifest["precision"]
        self.ranges = (manifest["calibration"] or {}).get("ranges")
        try:
            self.rotation = load_rotation(output, manifest["calibration"])
            # --quantize int8: the int8 model OUTPUT's documents were embedded with.
            quantized = quantized_graph(output, manifest.get("quantized_model"))
        except OutputError as err:
            raise ManifestError(str(err)) from None
        # As OUTPUT's documents were: the full-width column unrotated, unless OUTPUT is from
        # the layout that rotated it too.
        self.rotate_full_width = rotates_full_width(manifest["calibration"])
        replica_spec = ReplicaSpec.for_outputs(
            self.model_spec,
            self.dims,
            self.precision,
            self.rotation is not None,
            revision=revision,
            trust_remote_code=trust_remote_code,
            max_tokens=fingerprint["max_tokens"],
            device=device,
            dtype=dtype or self.run_dtype(),
            batch_size=settings["batch_size"],
            max_batch_tokens=settings["max_batch_tokens"],
            weights_digest=weights["digest"],
            quantized=quantized,
        )
        try:
            self.documents = Replica(replica_spec)
        except WeightsMismatch as err:
            raise ManifestError(f"queries would not match OUTPUT's vectors: {err}") from None
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
        full = replica.embed(list(texts))
        base = base_vectors(
            full, self.rotation, self.dims[0], rotate_full_width=self.rotate_full_width
        )
        rotation = None if self.rotate_full_width else self.rotation
        return output_vectors(base, self.dims, self.precision, self.ranges, rotation=rotation)
