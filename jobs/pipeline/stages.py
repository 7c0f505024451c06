"""The Ray Data pipeline: input files -> read -> replicas (actor pool) -> one Parquet file per
block and collection. Every stage takes one envelope at a time (jobs.pipeline.envelopes).

    read_stage     one work item (an input file) in; per block an envelope: done (a count),
                   or the rows plus any earlier vectors to reuse; then the file's rejections
    EmbedBatches   the actor pool, one Replica each: vectors for the rows without one
    write_stage    the block's files written whole; the envelope keeps only figures
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from embedder import Replica, ReplicaSpec
from embedder.outputs import base_vectors, output_vectors, vector_column
from jobs.pipeline import commit
from jobs.pipeline.blocks import (
    Block,
    block_status,
    committed_by_block,
    read_blocks,
    rows_per_collection,
)
from jobs.pipeline.duplicates import excluded_rows
from jobs.pipeline.envelopes import envelope, pack, to_table, unpack
from jobs.pipeline.folders import (
    CommittedFile,
    InputFolder,
    OutputFolder,
    OutputWriteError,
    StorageReadError,
)
from jobs.pipeline.lease import LeaseLost, check_holder
from jobs.pipeline.manifest import Tally
from jobs.pipeline.placement import Placement
from jobs.pipeline.reading import ROW, ROW_KEY, Columns
from jobs.pipeline.rejections import Rejection, count_by_kind
from jobs.pipeline.units import BlockId, InputFile

log = logging.getLogger("embed")


@dataclass(frozen=True)
class StageSpec:
    """What the stages need to know, small and picklable."""

    input: InputFolder
    output: OutputFolder
    columns: Columns
    block_rows: int
    drop_text: bool
    fingerprint_id: str
    dims: tuple[int, ...]  # widest first
    precision: str = "float32"
    ranges: dict[str, Any] | None = None  # int8/uint8 calibration, per dim
    rotation: np.ndarray | None = None  # --rotate pca: native x native, orthogonal
    # The run that holds OUTPUT's lease: each commit first checks that it still does ("": no
    # check, for callers that hold no lease).
    run_id: str = ""

    def check_lease(self) -> None:
        """LeaseLost unless this run still holds OUTPUT: called before every commit."""
        if self.run_id:
            check_holder(self.output, self.run_id)

    @property
    def reuse_column(self) -> str:
        """The widest vector column: every other column is derived from it."""
        return vector_column(self.dims[0], len(self.dims) > 1)


def work_items(
    input_files: list[InputFile],
    committed: dict[str, list[CommittedFile]],
    excluded: dict[str, dict[str, str]],
) -> list[dict[str, str]]:
    """One item per input file: the file, its earlier output files, rows to set aside."""
    items = []
    for input_file in input_files:
        work = {
            "input_file": asdict(input_file),
            "committed": [
                [str(c.block_id), c.collection, c.relpath]
                for c in committed.get(input_file.path_hash, [])
            ],
            "excluded": excluded.get(input_file.relpath, {}),
        }
        items.append({"work": json.dumps(work)})
    return items


def read_stage(batch: pa.Table, stage_spec: StageSpec) -> Iterator[pa.Table]:
    """Ray map_batches function: per block an envelope, then the file's closing envelope."""
    for item in batch.column("work").to_pylist():
        input_file, committed, excluded = parse_work_item(item)
        by_block = committed_by_block(committed)
        handed_on: set[BlockId] = set()
        rejections: list[Rejection] = []
        cut: Block | None = None
        blocks = read_blocks(
            stage_spec.input, input_file, stage_spec.columns, stage_spec.block_rows, excluded
        )
        try:
            for block in blocks:
                handed_on.add(block.id)
                rejections += block.rejections
                cut = block if block.cut_at is not None else cut
                if block.rows.num_rows:
                    files = by_block.get(block.id, [])
                    yield to_table([block_envelope(block, files, stage_spec)])
        except StorageReadError as err:
            untouched = [c for c in committed if c.block_id not in handed_on]
            yield to_table([unread_envelope(input_file, str(err), untouched, stage_spec.output)])
            continue
        try:
            closing = closing_envelope(input_file, rejections, cut, stage_spec)
        except tuple(STAGE_FAILURES.values()) as failure:
            closing = failure_envelope(envelope(file=input_file.relpath), failure)
        yield to_table([closing])


def parse_work_item(item: str) -> tuple[InputFile, list[CommittedFile], dict[int, str]]:
    work = json.loads(item)
    committed = [
        CommittedFile(BlockId.parse(block_id), collection, relpath)
        for block_id, collection, relpath in work["committed"]
    ]
    return InputFile(**work["input_file"]), committed, excluded_rows(work["excluded"])


def block_envelope(block: Block, files: list[CommittedFile], stage_spec: StageSpec) -> dict:
    """A done block as a count; any other with its rows and whatever earlier vectors fit."""
    rows = block.rows.num_rows
    status = block_status(block, files, stage_spec.fingerprint_id, stage_spec.output)
    if status.done:
        kept = [
            {"relpath": OutputFolder.block_file(collection, block.id), "rows": count}
            for collection, count in block.collections().items()
        ]
        return envelope(block_id=str(block.id), rows=rows, skipped=rows, files=kept)
    earlier = None
    if files:
        earlier = commit.reusable_vectors(
            files, stage_spec.fingerprint_id, stage_spec.reuse_column, stage_spec.output
        )
    return envelope(
        block_id=str(block.id),
        content_hash=status.content_hash,
        rows=rows,
        block=status.packed,
        reuse=pack(earlier) if earlier is not None else b"",
    )


def closing_envelope(
    input_file: InputFile, rejections: list[Rejection], cut: Block | None, stage_spec: StageSpec
) -> dict:
    """The file's rejections, written to OUTPUT/_rejected/ under a name fixed by the file."""
    if not rejections:
        return envelope(file=input_file.relpath)
    records = [r.as_record() for r in rejections]
    stage_spec.check_lease()
    relpath = stage_spec.output.write_rejections(input_file, records)
    return envelope(
        file=input_file.relpath,
        rejected=len(rejections),
        rejected_by_kind=list(count_by_kind(rejections).items()),
        rejections_file=relpath,
        cut_at=-1 if cut is None else cut.cut_at,
        cut_reason="" if cut is None else cut.rejections[-1].reason,
    )


def unread_envelope(
    input_file: InputFile, error: str, untouched: list[CommittedFile], output: OutputFolder
) -> dict:
    """A file whose reading a storage failure stopped: nothing about it is decided, so what
    OUTPUT holds for it stays as it is (its other block files and its rejection list) for a
    rerun to pick up."""
    kept = [{"relpath": c.relpath, "rows": output.row_count(c.relpath) or 0} for c in untouched]
    return envelope(
        file=input_file.relpath,
        files=kept,
        rejections_file=OutputFolder.rejections_file(input_file),
        unread=error,
    )


class EmbedBatches:
    """Ray actor: holds one Replica for its lifetime and embeds the blocks it is given."""

    def __init__(
        self, replica_spec: ReplicaSpec, stage_spec: StageSpec, stats_actor, on_gpus: bool
    ):
        import ray

        self.replica = Replica(replica_spec, gpus_assigned=on_gpus)
        self.stage_spec = stage_spec
        self.stats_actor = stats_actor
        # One id per incarnation: Ray restarts a lost actor under its old actor id, and the
        # figures of the life it lost must not be overwritten by those of the new one.
        self.actor_id = ray.get_runtime_context().get_actor_id()
        self.replica_id = f"{self.actor_id[:12]}-{uuid.uuid4().hex[:8]}"
        self.started = time.time()
        context = ray.get_runtime_context()
        self.info = self.replica.describe() | {
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(),
            "actor_id": self.actor_id,
        }
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
        items = [
            embed_block(item, self.replica, self.stage_spec) | {"replica_id": self.replica_id}
            if item["block"]
            else item
            for item in batch.to_pylist()
        ]
        self.report()
        return to_table(items)

    def report(self) -> None:
        # Cumulative figures, so a lost or repeated report cannot skew the totals.
        alive = time.time() - self.started
        figures = self.replica.stats.as_dict() | self.replica.peak_memory()
        self.stats_actor.report.remote(
            self.replica_id, self.info, figures | {"alive_seconds": alive}
        )


def embed_block(item: dict[str, Any], replica: Replica, stage_spec: StageSpec) -> dict[str, Any]:
    """Vectors for the block's rows: reused where id and text are unchanged, else encoded."""
    table = unpack(item["block"])
    texts = table.column("text").to_pylist()
    keys = commit.row_keys(table.column("id").to_pylist(), texts)
    dim = stage_spec.dims[0]
    reuse = reuse_index(unpack(item["reuse"]), dim) if item["reuse"] else {}
    vectors = np.empty((len(keys), dim), dtype=np.float32)
    todo = [i for i, key in enumerate(keys) if key not in reuse]
    if todo:
        encoded = replica.embed([texts[i] for i in todo])
        vectors[todo] = base_vectors(encoded, stage_spec.rotation, stage_spec.dims[0])
    for i, key in enumerate(keys):
        if key in reuse:
            vectors[i] = reuse[key]
    columns = output_vectors(
        vectors, list(stage_spec.dims), stage_spec.precision, stage_spec.ranges
    )
    for name, matrix in columns.items():
        table = table.append_column(name, embedding_column(matrix))
    table = table.append_column(ROW_KEY, pa.array(keys, pa.string()))
    if stage_spec.drop_text:
        table = table.drop_columns(["text"])
    return item | {
        "block": pack(table),
        "reuse": b"",
        "embedded": len(todo),
        "reused": len(keys) - len(todo),
    }


def embedding_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """The declared output type: fixed_size_list<float32>[DIM] (int8/uint8 for quantized
    columns), not Ray's tensor extension type."""
    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def reuse_index(table: pa.Table, dim: int) -> dict[str, np.ndarray]:
    """Earlier vectors by row key; none when they have another width."""
    column = table.column("embedding").combine_chunks()
    if column.type.list_size != dim:
        return {}
    matrix = np.asarray(column.flatten(), dtype=np.float32).reshape(-1, dim)
    return dict(zip(table.column("key").to_pylist(), matrix))


# What stops a commit, by the name it travels under in an envelope.
STAGE_FAILURES: dict[str, type[Exception]] = {"lease": LeaseLost, "write": OutputWriteError}


def failure_envelope(item: dict[str, Any], failure: Exception) -> dict[str, Any]:
    """The envelope of a commit that could not happen: the driver stops the run on it."""
    kind = next(k for k, kind in STAGE_FAILURES.items() if isinstance(failure, kind))
    return item | {"block": b"", "reuse": b"", "failure": kind, "failed": str(failure)}


def raise_failures(results: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The envelopes, until one reports a commit that could not happen: then its failure."""
    for result in results:
        if result["failed"]:
            raise STAGE_FAILURES[result["failure"]](result["failed"])
        yield result


def write_stage(batch: pa.Table, stage_spec: StageSpec) -> pa.Table:
    """Ray map_batches function: commit each embedded block, one Parquet file per collection."""
    items = []
    for item in batch.to_pylist():
        if item["block"]:
            try:
                files = write_block(item, stage_spec)
            except tuple(STAGE_FAILURES.values()) as failure:
                item = failure_envelope(item, failure)
            else:
                item = item | {"files": files, "written": True, "block": b""}
        items.append(item)
    return to_table(items)


def write_block(item: dict[str, Any], stage_spec: StageSpec) -> list[dict[str, Any]]:
    """The block's files, one per collection, each footer saying which fingerprint and
    content made it (jobs.pipeline.commit); returns each file with its rows."""
    block = unpack(item["block"])
    block_id = BlockId.parse(item["block_id"])
    groups = rows_per_collection(block)
    stage_spec.check_lease()
    written = []
    for collection, positions in groups.items():
        part = block.take(pa.array(positions))
        keys = part.column(ROW_KEY).to_pylist()
        part = part.drop_columns(["collection", ROW, ROW_KEY])
        part = part.replace_schema_metadata(
            commit.footer(stage_spec.fingerprint_id, item["content_hash"], len(groups), keys)
        )
        relpath = OutputFolder.block_file(collection, block_id)
        stage_spec.output.write_parquet(relpath, part)
        written.append({"relpath": relpath, "rows": part.num_rows})
    return written


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
    stage_spec: StageSpec,
    replica_spec: ReplicaSpec,
    placement: Placement,
) -> tuple[Tally, list[dict[str, Any]]]:
    """Run every work item to committed Parquet; returns the envelopes' figures added up and
    each replica's own. No item (every input file unreadable): nothing to run."""
    if not items:
        return Tally(), []
    import ray
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: the figures must outlive any worker node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    stats = stats_collector_class().options(scheduling_strategy=here).remote()
    # Reading and writing never use the rotation (up to 128 MB at 4096 dims): only the
    # replicas get it.
    io_spec = replace(stage_spec, rotation=None)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map_batches(
        read_stage, batch_size=1, batch_format="pyarrow", fn_kwargs={"stage_spec": io_spec}
    )
    dataset = dataset.map_batches(
        EmbedBatches,
        batch_size=1,  # one envelope = one input block of up to block_rows texts
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=placement.replicas),
        num_gpus=placement.gpus_per_replica,
        num_cpus=placement.cpus_per_replica,
        fn_constructor_kwargs={
            "replica_spec": replica_spec,
            "stage_spec": stage_spec,
            "stats_actor": stats,
            "on_gpus": placement.on_gpus,
        },
    )
    dataset = dataset.map_batches(
        write_stage, batch_size=1, batch_format="pyarrow", fn_kwargs={"stage_spec": io_spec}
    )
    # Streamed into the tally: the driver keeps figures per block, not the envelopes.
    tally = Tally.of(raise_failures(dataset.iter_rows()))
    replicas = ray.get(stats.summary.remote())
    ray.kill(stats)
    # A replica whose node died is lost: its figures end at its last report, and the blocks it
    # had not written were redone by the others.
    alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    for replica in replicas:
        replica["lost"] = replica["node_id"] not in alive
    log.info("blocks: %d; files written: %d", tally.blocks, tally.files_written)
    return tally, replicas
