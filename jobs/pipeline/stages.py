"""The Ray Data pipeline: shards -> read -> replicas (actor pool) -> Parquet per collection.

Blocks travel through Ray as envelopes: one row per input block, the block itself packed as
Arrow IPC bytes. Ray Data concatenates and re-slices the tables it batches; blocks of different
files may disagree on metadata types (a crash when concatenated) and a re-sliced block could
no longer be written under one deterministic name. An envelope is never split or merged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedder import Replica, ReplicaSpec
from embedder.outputs import output_vectors, vector_column
from jobs.pipeline import commit, corpus, storage
from jobs.pipeline.ipc import pack, unpack
from jobs.pipeline.placement import ReplicaPlan

log = logging.getLogger("embed")

KEY_COLUMN = "_key"  # in flight: the row's reuse key, stored in the file footer, not as a column
ENVELOPE_SCHEMA = pa.schema(
    [
        ("label", pa.string()),
        ("digest", pa.string()),
        ("rows", pa.int64()),
        ("skipped", pa.int64()),
        ("embedded", pa.int64()),
        ("reused", pa.int64()),
        ("block", pa.binary()),
        ("reuse", pa.binary()),
        ("stale", pa.list_(pa.string())),
    ]
)
WRITTEN_SCHEMA = pa.schema(
    [(name, pa.int64()) for name in ("rows", "skipped", "embedded", "reused", "files")]
)


@dataclass(frozen=True)
class PipelineSpec:
    """What the workers need to know, small and picklable."""

    output: str
    columns: corpus.Columns
    block_rows: int
    drop_text: bool
    storage_options: dict[str, Any]
    fingerprint: str
    dims: tuple[int, ...]  # widest first
    precision: str = "float32"
    ranges: dict[str, Any] | None = None  # int8/uint8 calibration, per dim

    @property
    def reuse_column(self) -> str:
        """The widest vector column: every other column is derived from it."""
        return vector_column(self.dims[0], len(self.dims) > 1)


def envelope(label: str, digest: str, rows: int, **fields: Any) -> dict[str, Any]:
    defaults = {"skipped": 0, "embedded": 0, "reused": 0, "block": b"", "reuse": b"", "stale": []}
    return {"label": label, "digest": digest, "rows": rows, **defaults, **fields}


def envelopes_table(items: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(items, schema=ENVELOPE_SCHEMA)


def work_items(shards, committed, excluded) -> list[dict[str, str]]:
    """One item per input file: the shard, its earlier output files, rows to set aside."""
    items = []
    for shard in shards:
        work = {
            "shard": asdict(shard),
            "committed": [asdict(c) for c in committed.get(shard.digest, [])],
            "excluded": excluded.get(shard.relpath, {}),
        }
        items.append({"work": json.dumps(work)})
    return items


def read_shards(batch: pa.Table, spec: PipelineSpec):
    """Ray map_batches function: one work item per input file in, one envelope per block out.

    Finished blocks go out as a bare count (skipped); others carry their rows and whatever
    earlier vectors can be reused. Rejections go to OUTPUT/_rejected/ under a name fixed by
    the input file; output files of blocks the file no longer has are removed.
    """
    for item in batch.column("work").to_pylist():
        work = json.loads(item)
        shard = corpus.Shard(**work["shard"])
        committed = [commit.CommittedFile(**c) for c in work["committed"]]
        excluded = {int(row): reason for row, reason in work["excluded"].items()}
        reader = corpus.ShardReader(shard, spec.columns, spec.block_rows, excluded)
        produced = set()
        for table in reader.tables(spec.storage_options):
            label = table.column(corpus.BLOCK_COLUMN)[0].as_py()
            produced.add(label)
            files = [c for c in committed if c.label == label]
            body = table.drop_columns([corpus.BLOCK_COLUMN])
            yield envelopes_table([plan_block(label, body, files, spec)])
        corpus.write_rejections(spec.output, shard, reader.rejections, spec.storage_options)
        for orphan in (c for c in committed if c.label not in produced):
            storage.remove(
                storage.join(spec.output, output_relpath(orphan.collection, orphan.label)),
                spec.storage_options,
            )


def plan_block(label: str, body: pa.Table, files, spec: PipelineSpec) -> dict[str, Any]:
    digest, done = commit.block_status(body, files, spec.fingerprint, spec.storage_options)
    if done:
        return envelope(label, digest, body.num_rows, skipped=body.num_rows)
    reuse = None
    if files:
        reuse = commit.reusable_vectors(
            files, spec.fingerprint, spec.reuse_column, spec.storage_options
        )
    return envelope(
        label,
        digest,
        body.num_rows,
        block=pack(body),
        reuse=pack(reuse) if reuse is not None else b"",
        stale=[output_relpath(f.collection, f.label) for f in files],
    )


def output_relpath(collection: str, label: str) -> str:
    return f"collection={collection}/part-{label}.parquet"


def embedding_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """The declared output type: fixed_size_list<float32>[DIM] (int8/uint8 for quantized
    columns), not Ray's tensor extension type."""
    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


class EmbedBatches:
    """Ray actor: holds one Replica for its lifetime and embeds the blocks it is given."""

    def __init__(self, replica_spec: ReplicaSpec, spec: PipelineSpec, stats_actor, on_gpus: bool):
        import ray

        self.replica = Replica(replica_spec, gpus_assigned=on_gpus)
        self.dim = replica_spec.dim
        self.spec = spec
        self.stats_actor = stats_actor
        self.replica_id = ray.get_runtime_context().get_actor_id()
        self.started = time.time()
        self.info = self.replica.describe() | {"gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        info = self.info
        where = f"{info['gpu_name']} (compute capability {info['compute_capability']})"
        # print, not logging: Ray forwards a replica's stdout to the driver's.
        print(
            f"replica {self.replica_id[:8]} on {where if info['gpu_name'] else 'cpu'} in "
            f"{info['dtype']}, CUDA_VISIBLE_DEVICES={info['cuda_visible_devices'] or '-'}",
            flush=True,
        )
        self.report()

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [self.embed_envelope(item) if item["block"] else item for item in batch.to_pylist()]
        self.report()
        return envelopes_table(items)

    def embed_envelope(self, item: dict[str, Any]) -> dict[str, Any]:
        """Vectors for the block's rows: reused where id and text are unchanged, else encoded."""
        table = unpack(item["block"])
        texts = table.column("text").to_pylist()
        keys = commit.row_keys(table.column("id").to_pylist(), texts)
        reuse = reuse_index(unpack(item["reuse"]), self.dim) if item["reuse"] else {}
        vectors = np.empty((len(keys), self.dim), dtype=np.float32)
        todo = [i for i, key in enumerate(keys) if key not in reuse]
        if todo:
            vectors[todo] = self.replica.embed([texts[i] for i in todo])
        for i, key in enumerate(keys):
            if key in reuse:
                vectors[i] = reuse[key]
        columns = output_vectors(
            vectors, list(self.spec.dims), self.spec.precision, self.spec.ranges
        )
        for name, matrix in columns.items():
            table = table.append_column(name, embedding_column(matrix))
        table = table.append_column(KEY_COLUMN, pa.array(keys, pa.string()))
        if self.spec.drop_text:
            table = table.drop_columns(["text"])
        embedded = len(todo)
        return item | {
            "block": pack(table),
            "reuse": b"",
            "embedded": embedded,
            "reused": len(keys) - embedded,
        }

    def report(self) -> None:
        # Cumulative figures, so a lost or repeated report cannot skew the totals.
        alive = time.time() - self.started
        self.stats_actor.report.remote(
            self.replica_id, self.info, self.replica.stats.as_dict() | {"alive_seconds": alive}
        )


def reuse_index(table: pa.Table, dim: int) -> dict[str, np.ndarray]:
    column = table.column("embedding").combine_chunks()
    if column.type.list_size != dim:
        return {}
    matrix = np.asarray(column.flatten(), dtype=np.float32).reshape(-1, dim)
    return dict(zip(table.column("key").to_pylist(), matrix))


def write_blocks(batch: pa.Table, spec: PipelineSpec) -> pa.Table:
    """Ray map_batches function: commit each embedded block, one Parquet file per collection.

    The footer of each file says which fingerprint and content made it (see jobs.commit).
    Files of the block's earlier version that this version no longer has are removed after
    the new ones are in place.
    """
    summary = []
    for item in batch.to_pylist():
        files = write_block(item, spec) if item["block"] else []
        summary.append({name: item[name] for name in ("rows", "skipped", "embedded", "reused")})
        summary[-1]["files"] = len(files)
    return pa.Table.from_pylist(summary, schema=WRITTEN_SCHEMA)


def write_block(item: dict[str, Any], spec: PipelineSpec) -> list[str]:
    block = unpack(item["block"])
    groups = rows_per_collection(block)
    written = []
    for collection, rows in groups.items():
        part = block.take(pa.array(rows))
        keys = part.column(KEY_COLUMN).to_pylist()
        part = part.drop_columns(["collection", corpus.ROW_COLUMN, KEY_COLUMN])
        part = part.replace_schema_metadata(
            commit.file_metadata(spec.fingerprint, item["digest"], len(groups), keys)
        )
        relpath = output_relpath(collection, item["label"])
        storage.write_parquet_atomic(storage.join(spec.output, relpath), part, spec.storage_options)
        written.append(relpath)
    for relpath in set(item["stale"]) - set(written):
        storage.remove(storage.join(spec.output, relpath), spec.storage_options)
    return written


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
    items: list[dict[str, str]],
    spec: PipelineSpec,
    replica_spec: ReplicaSpec,
    plan: ReplicaPlan,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Run every work item to committed Parquet; returns row counts and per-replica figures."""
    import ray
    import ray.data

    stats = stats_collector_class().remote()
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
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
            "spec": spec,
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
    counts = {name: sum(row[name] for row in written) for name in WRITTEN_SCHEMA.names}
    log.info("blocks: %d; files written: %d", len(written), counts["files"])
    return counts, replicas
