"""int8/uint8 ranges, calibrated once per OUTPUT from a sample of the corpus.

The sample is the first --calibration-rows valid rows in file order, embedded once by a Ray
task that has a replica's resources. The ranges go to `OUTPUT/_calibration.json` before any
block is written; a resumed run reads them back, so every batch, every replica and every rerun
of one OUTPUT quantizes with the same scale (and queries can use it too: the manifest repeats it).
"""

from __future__ import annotations

import json
from typing import Any

from embedder import Replica, ReplicaSpec
from embedder.outputs import calibration_ranges
from jobs.pipeline import corpus, storage
from jobs.pipeline.placement import ReplicaPlan

CALIBRATION_NAME = "_calibration.json"


def sample_texts(
    shards: list[corpus.Shard], columns: corpus.Columns, rows: int, storage_options=None
) -> list[str]:
    texts: list[str] = []
    for shard in shards:
        for table in corpus.ShardReader(shard, columns).tables(storage_options):
            texts += table.column("text").to_pylist()[: rows - len(texts)]
            if len(texts) >= rows:
                return texts
    return texts


def embed_sample(replica_spec: ReplicaSpec, texts: list[str], on_gpus: bool):
    return Replica(replica_spec, gpus_assigned=on_gpus).embed(texts)


def load_or_calibrate(
    output: str,
    shards: list[corpus.Shard],
    columns: corpus.Columns,
    rows: int,
    dims: list[int],
    replica_spec: ReplicaSpec,
    plan: ReplicaPlan,
    storage_options=None,
) -> dict[str, Any]:
    """The ranges recorded in OUTPUT, or new ones from a sample (then recorded)."""
    import ray

    uri = storage.join(output, CALIBRATION_NAME)
    fs, path = storage.open_fs(uri, storage_options)
    if fs.exists(path):
        with fs.open(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    texts = sample_texts(shards, columns, rows, storage_options)
    task = ray.remote(num_cpus=plan.cpus_per_replica, num_gpus=plan.gpus_per_replica)(embed_sample)
    vectors = ray.get(task.remote(replica_spec, texts, plan.on_gpus))
    calibration = {"rows": len(texts), "ranges": calibration_ranges(vectors, dims)}
    storage.write_json_atomic(uri, calibration, storage_options)
    return calibration
