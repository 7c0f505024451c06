"""int8/uint8 ranges and the rotation, calibrated once per OUTPUT from a sample of the corpus.

The sample is --calibration-rows valid rows spread over the whole corpus: those whose id has
the smallest hashes (drawn by the duplicate scan, jobs.pipeline.duplicates), so it does not
depend on the order of the files and a rerun draws the same. It is embedded once (in a run: by
a Ray task that has a replica's resources). The ranges are written to OUTPUT before any block;
a resumed run reads them back, so every batch, every replica and every rerun of one OUTPUT
quantizes with the same scale (and queries can use it too: the manifest repeats it).

With --rotate pca the record names the rotation matrix and `rotated_dims`, the widths cut from
rotated vectors: those narrower than the model's native dim. A full-width column is not
rotated (embedder.outputs.base_vectors). An OUTPUT calibrated before that layout (no
`rotated_dims`) rotated its full-width column too: its queries are still encoded that way
(`rotates_full_width`), but a run does not resume it (it would mix the two layouts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.graphs import QuantizedGraph, files_digest
from embedder.outputs import CALIBRATED, base_vectors, calibration_ranges
from embedder.rotation import from_bytes as rotation_from_bytes
from embedder.rotation import pca_rotation
from embedder.rotation import to_bytes as rotation_bytes
from jobs.pipeline.blocks import read_blocks
from jobs.pipeline.folders import (
    CALIBRATION,
    QUANTIZED,
    QUANTIZED_FOLDER,
    ROTATION,
    InputFolder,
    OutputError,
    OutputFolder,
    StorageReadError,
)
from jobs.pipeline.placement import Placement
from jobs.pipeline.reading import ROW, Columns
from jobs.pipeline.units import InputFile


def sample_texts(
    folder: InputFolder,
    input_files: list[InputFile],
    columns: Columns,
    block_rows: int,
    sample: list[tuple[str, int]],
) -> list[str]:
    """The texts of the sampled rows ((file, row), as CorpusScan.sample gives them), in the
    sample's order. Only the files that hold a sampled row are read, each up to its last one;
    a file the storage fails on is passed over: the sample is taken once per OUTPUT anyway."""
    wanted: dict[str, set[int]] = {}
    for relpath, row in sample:
        wanted.setdefault(relpath, set()).add(row)
    found: dict[tuple[str, int], str] = {}
    for input_file in input_files:
        rows = wanted.get(input_file.relpath)
        if not rows:
            continue
        try:
            for block in read_blocks(folder, input_file, columns, block_rows, metadata=False):
                positions = block.rows.column(ROW).to_pylist()
                for row, text in zip(positions, block.rows.column("text").to_pylist()):
                    if row in rows:
                        found[(input_file.relpath, row)] = text
                if block.id.first_row + block_rows > max(rows):
                    break
        except StorageReadError:
            continue
    return [found[pick] for pick in sample if pick in found]


def load_or_calibrate(
    output: OutputFolder,
    sample: Callable[[], list[str]],
    dims: list[int],
    embed: Callable[[list[str]], np.ndarray],
    precision: str,
    rotate: str,
) -> dict[str, Any] | None:
    """What this OUTPUT was calibrated with, recorded in it, or a new calibration from
    `embed(sample())` (then recorded): the sample is read and embedded only when OUTPUT holds
    no calibration yet. None when the run needs none (float32, no rotation).

    The record: `rows` (the sample's size), `rotation` (where the matrix is) and
    `rotated_dims` when the run rotates, `ranges` (per dim, [minimums, maximums]) when it
    quantizes to int8/uint8, taken on the vectors written at that dim (rotated or not). The
    rotation matrix is written before the record that names it.
    """
    if precision not in CALIBRATED and rotate == "none":
        return None
    recorded = output.read_json(CALIBRATION)
    if recorded is not None:
        if rotates_full_width(recorded) and recorded["rotation"].get("dim") == dims[0]:
            raise OutputError(
                f"{output.url(CALIBRATION)} is from an earlier layout of --rotate pca, which "
                f"rotated the full-width column ({dims[0]} dims) too: a run would now write it "
                "unrotated, and the two cannot be mixed in one OUTPUT. Embed into a new OUTPUT "
                "or rerun with --overwrite"
            )
        return recorded
    texts = sample()
    if not texts:  # no valid row to calibrate on (and so no block to embed): decided later
        return None
    full = embed(texts)
    record: dict[str, Any] = {"rows": len(texts)}
    rotation = None
    if rotate == "pca":
        rotation = pca_rotation(full)
        output.write_bytes(ROTATION, rotation_bytes(rotation))
        native = int(full.shape[1])
        record["rotation"] = {"method": "pca", "file": ROTATION, "dim": native}
        record["rotated_dims"] = [dim for dim in dims if dim < native]
    if precision in CALIBRATED:
        base = base_vectors(full, rotation, dims[0], rotate_full_width=False)
        record["ranges"] = calibration_ranges(base, dims, rotation=rotation)
    output.write_json(CALIBRATION, record)
    return record


def load_or_quantize(
    output: OutputFolder,
    sample: Callable[[], list[str]],
    quantize: Callable[[list[str]], dict[str, bytes]],
    backend: str,
) -> dict[str, Any] | None:
    """The int8 model this OUTPUT runs (--quantize int8): the one recorded in it, or one made
    now by `quantize(sample())` and kept in OUTPUT (its files first, then the record naming
    them and their digest), so that every replica, every resume and QueryEncoder run exactly
    it. None when there is no valid row to calibrate on (nothing will be embedded)."""
    recorded = output.read_json(QUANTIZED)
    if recorded is not None:
        return recorded
    texts = sample()
    if not texts:
        return None
    files = quantize(texts)  # the graph first: QuantizedGraph loads the first
    for name, data in files.items():
        output.write_bytes(f"{QUANTIZED_FOLDER}/{name}", data)
    record = {
        "backend": backend,
        "quantization": "int8",
        "files": [f"{QUANTIZED_FOLDER}/{name}" for name in files],
        "digest": files_digest(files),
        "rows": len(texts),
    }
    output.write_json(QUANTIZED, record)
    return record


def quantized_graph(output: OutputFolder, record: dict[str, Any] | None) -> QuantizedGraph | None:
    """The int8 model a record names, read from OUTPUT by whoever loads it (OutputError for
    a name that leads outside OUTPUT: a record may come from someone else)."""
    if not record:
        return None
    files = tuple(output.inside(str(f)) for f in record["files"])
    return QuantizedGraph(str(record["backend"]), files, str(record["digest"]), output)


def quantize_on_ray(replica_spec: ReplicaSpec, placement: Placement):
    """A function that makes the int8 model in one Ray task with a replica's resources
    (where the weights are)."""
    import ray

    task = ray.remote(num_cpus=placement.cpus_per_replica)(_quantize)
    return lambda texts: ray.get(task.remote(replica_spec, texts))


def _quantize(replica_spec: ReplicaSpec, texts: list[str]) -> dict[str, bytes]:
    return Replica(replica_spec, gpus_assigned=False).int8_model(texts)


def rotates_full_width(record: dict[str, Any] | None) -> bool:
    """Whether an OUTPUT with this calibration record rotated its full-width column too: one
    with a rotation calibrated before `rotated_dims` was recorded."""
    return bool(record and record.get("rotation")) and "rotated_dims" not in record


def load_rotation(output: OutputFolder, record: dict[str, Any] | None) -> np.ndarray | None:
    """The rotation matrix a calibration record names, read from OUTPUT (OutputError for a
    name that leads outside it: a record may come from someone else); None without one."""
    if not record or not record.get("rotation"):
        return None
    with output.open(output.inside(str(record["rotation"]["file"]))) as handle:
        return rotation_from_bytes(handle.read())


def embed_on_ray(replica_spec: ReplicaSpec, placement: Placement):
    """A function that embeds texts in one Ray task with a replica's resources."""
    import ray

    task = ray.remote(num_cpus=placement.cpus_per_replica, num_gpus=placement.gpus_per_replica)(
        _embed
    )
    return lambda texts: ray.get(task.remote(replica_spec, texts, placement.on_gpus))


def _embed(replica_spec: ReplicaSpec, texts: list[str], on_gpus: bool) -> np.ndarray:
    return Replica(replica_spec, gpus_assigned=on_gpus).embed(texts)
