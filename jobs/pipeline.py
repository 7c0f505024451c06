"""The Ray Data pipeline: shards -> read -> replicas (actor pool) -> Parquet per collection.

Blocks travel through Ray as envelopes: one row per input block, the block itself packed as
Arrow IPC bytes. Ray Data concatenates and re-slices the tables it batches; blocks of different
files may disagree on metadata types (a crash when concatenated) and a re-sliced block could
no longer be written under one deterministic name. An envelope is never split or merged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedder import Replica, ReplicaSpec
from jobs import corpus, storage
from jobs.placement import ReplicaPlan

log = logging.getLogger("embed")

ENVELOPE_SCHEMA = pa.schema([("label", pa.string()), ("rows", pa.int64()), ("block", pa.binary())])
WRITTEN_SCHEMA = pa.schema(
    [("collection", pa.string()), ("file", pa.string()), ("rows", pa.int64())]
)


@dataclass(frozen=True)
class PipelineSpec:
    """What the workers need to know, small and picklable."""

    output: str
    columns: corpus.Columns
    block_rows: int
    drop_text: bool
    storage_options: dict[str, Any]


def pack(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def envelopes(blocks: list[tuple[str, pa.Table]]) -> pa.Table:
    return pa.table(
        {
            "label": [label for label, _ in blocks],
            "rows": [table.num_rows for _, table in blocks],
            "block": [pack(table) for _, table in blocks],
        },
        schema=ENVELOPE_SCHEMA,
    )


def read_shards(batch: pa.Table, spec: PipelineSpec):
    """Ray map_batches function: one row per shard in, one envelope per block of valid rows out.

    Rejections go straight to OUTPUT/_rejected/ under a name fixed by the input file.
    """
    for row in batch.to_pylist():
        shard = corpus.Shard(**row)
        reader = corpus.ShardReader(shard, spec.columns, spec.block_rows)
        for table in reader.tables(spec.storage_options):
            label = table.column(corpus.BLOCK_COLUMN)[0].as_py()
            yield envelopes([(label, table.drop_columns([corpus.BLOCK_COLUMN]))])
        corpus.write_rejections(spec.output, shard, reader.rejections, spec.storage_options)


def embedding_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """The declared output type: fixed_size_list<float32>[DIM], not Ray's tensor extension."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


class EmbedBatches:
    """Ray actor: holds one Replica for its lifetime and embeds each block it is given."""

    def __init__(self, replica_spec: ReplicaSpec, drop_text: bool, stats_actor, on_gpus: bool):
        import ray

        self.replica = Replica(replica_spec, gpus_assigned=on_gpus)
        self.drop_text = drop_text
        self.stats_actor = stats_actor
        self.replica_id = ray.get_runtime_context().get_actor_id()
        self.started = time.time()
        self.info = self.replica.describe() | {"gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        self.report()

    def __call__(self, batch: pa.Table) -> pa.Table:
        blocks = [
            (label, self.embed_block(unpack(data)))
            for label, data in zip(
                batch.column("label").to_pylist(), batch.column("block").to_pylist()
            )
        ]
        self.report()
        return envelopes(blocks)

    def embed_block(self, table: pa.Table) -> pa.Table:
        vectors = self.replica.embed(table.column("text").to_pylist())
        table = table.append_column("embedding", embedding_column(vectors))
        return table.drop_columns(["text"]) if self.drop_text else table

    def report(self) -> None:
        # Cumulative figures, so a lost or repeated report cannot skew the totals.
        alive = time.time() - self.started
        self.stats_actor.report.remote(
            self.replica_id, self.info, self.replica.stats.as_dict() | {"alive_seconds": alive}
        )


def write_blocks(batch: pa.Table, spec: PipelineSpec) -> pa.Table:
    """Ray map_batches function: write each embedded block as Parquet, one file per collection.

    The file name comes from the input block (file digest + first source row), never a UUID:
    the same input block always lands in the same file, and writing it again replaces it.
    Each file keeps its own schema, so collections with different metadata never mix columns.
    """
    written = {"collection": [], "file": [], "rows": []}
    for label, data in zip(batch.column("label").to_pylist(), batch.column("block").to_pylist()):
        block = unpack(data)
        for collection, rows in rows_per_collection(block).items():
            part = block.take(pa.array(rows)).drop_columns(["collection"])
            relpath = f"collection={collection}/part-{label}.parquet"
            storage.write_parquet_atomic(
                storage.join(spec.output, relpath), part, spec.storage_options
            )
            written["collection"].append(collection)
            written["file"].append(relpath)
            written["rows"].append(part.num_rows)
    return pa.table(written, schema=WRITTEN_SCHEMA)


def rows_per_collection(block: pa.Table) -> dict[str, list[int]]:
    """Row positions per collection, in order (a `collection` column can route rows apart)."""
    groups: dict[str, list[int]] = {}
    for position, collection in enumerate(block.column("collection").to_pylist()):
        groups.setdefault(collection, []).append(position)
    return groups


def stats_collector_class():
    import ray

    @ray.remote(num_cpus=0)
    class StatsCollector:
        """Keeps the latest cumulative figures of each replica."""

        def __init__(self):
            self.replicas: dict[str, dict[str, Any]] = {}

        def report(self, replica_id: str, info: dict[str, Any], stats: dict[str, Any]):
            self.replicas[replica_id] = {"replica_id": replica_id, **info, **stats}

        def summary(self) -> list[dict[str, Any]]:
            return sorted(self.replicas.values(), key=lambda r: r["replica_id"])

    return StatsCollector


def run_pipeline(
    shards: list[corpus.Shard],
    spec: PipelineSpec,
    replica_spec: ReplicaSpec,
    plan: ReplicaPlan,
) -> list[dict[str, Any]]:
    """Run the whole dataset to Parquet; returns per-replica figures."""
    import ray
    import ray.data

    stats = stats_collector_class().remote()
    dataset = ray.data.from_items([asdict(s) for s in shards], override_num_blocks=len(shards))
    dataset = dataset.map_batches(
        read_shards, batch_size=1, batch_format="pyarrow", fn_kwargs={"spec": spec}
    )
    dataset = dataset.map_batches(
        EmbedBatches,
        batch_size=1,  # one envelope = one input block of up to block_rows texts
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        num_gpus=plan.gpus_per_replica,
        num_cpus=plan.cpus_per_replica,
        fn_constructor_kwargs={
            "replica_spec": replica_spec,
            "drop_text": spec.drop_text,
            "stats_actor": stats,
            "on_gpus": plan.on_gpus,
        },
    )
    dataset = dataset.map_batches(
        write_blocks, batch_size=1, batch_format="pyarrow", fn_kwargs={"spec": spec}
    )
    written = dataset.take_all()
    replicas = ray.get(stats.summary.remote())
    ray.kill(stats)
    log.info("wrote %d file(s)", len(written))
    return replicas
