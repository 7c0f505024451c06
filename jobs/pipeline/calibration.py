"""int8/uint8 ranges, calibrated once per OUTPUT from a sample of the corpus.

The sample is the first --calibration-rows valid rows in file order, embedded once (in a run:
by a Ray task that has a replica's resources). The ranges are written to OUTPUT before any block; a
resumed run reads them back, so every batch, every replica and every rerun of one OUTPUT
quantizes with the same scale (and queries can use it too: the manifest repeats it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from embedder import Replica, ReplicaSpec
from embedder.outputs import calibration_ranges
from jobs.pipeline.blocks import read_blocks
from jobs.pipeline.folders import CALIBRATION, InputFolder, OutputFolder, StorageReadError
from jobs.pipeline.placement import Placement
from jobs.pipeline.reading import Columns
from jobs.pipeline.units import InputFile


def sample_texts(
    folder: InputFolder, input_files: list[InputFile], columns: Columns, rows: int, block_rows: int
) -> list[str]:
    """The first `rows` valid texts in file order; reading stops as soon as there are enough.
    A file the storage fails on is passed over: the sample is taken once per OUTPUT anyway."""
    texts: list[str] = []
    for input_file in input_files:
        try:
            for block in read_blocks(folder, input_file, columns, block_rows):
                texts += block.rows.column("text").to_pylist()[: rows - len(texts)]
                if len(texts) >= rows:
                    return texts
        except StorageReadError:
            continue
    return texts


def load_or_calibrate(
    output: OutputFolder,
    sample: Callable[[], list[str]],
    dims: list[int],
    embed: Callable[[list[str]], np.ndarray],
) -> dict[str, Any]:
    """The ranges recorded in OUTPUT, or new ones (then recorded) from `embed(sample())`: the
    sample is read and embedded only when OUTPUT holds no calibration yet."""
    recorded = output.read_json(CALIBRATION)
    if recorded is not None:
        return recorded
    texts = sample()
    calibration = {"rows": len(texts), "ranges": calibration_ranges(embed(texts), dims)}
    output.write_json(CALIBRATION, calibration)
    return calibration


def embed_on_ray(replica_spec: ReplicaSpec, placement: Placement):
    """A function that embeds texts in one Ray task with a replica's resources."""
    import ray

    task = ray.remote(num_cpus=placement.cpus_per_replica, num_gpus=placement.gpus_per_replica)(
        _embed
    )
    return lambda texts: ray.get(task.remote(replica_spec, texts, placement.on_gpus))


def _embed(replica_spec: ReplicaSpec, texts: list[str], on_gpus: bool) -> np.ndarray:
    return Replica(replica_spec, gpus_assigned=on_gpus).embed(texts)
