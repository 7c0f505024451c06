"""The Ray Data pipeline: work items -> read -> replicas (actor pool) -> one Parquet file per
block and collection. Every stage takes one envelope at a time (jobs.pipeline.envelopes); the
driver has already decided which blocks are done (jobs.pipeline.work) and sends only the rest.

    read_stage     one work item (a big file's blocks to do, or one pack of small files) in;
                   per block an envelope: its rows, any earlier vectors to reuse, its
                   rejections (a block without rows commits its rejection list here)
    EmbedBatches   the actor pool, one Replica each: vectors for the rows without one
    write_stage    the block's rejection list, then its files, each written whole; the envelope
                   keeps only figures
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from embedder import Replica, ReplicaSpec
from embedder.outputs import base_vectors, output_vectors, vector_column
from embedder.tokens import TextTokenizer, Tokens
from jobs.pipeline import commit, quiet
from jobs.pipeline.blocks import Block, read_planned
from jobs.pipeline.envelopes import (
    envelope,
    from_table,
    pack,
    pack_parts,
    to_table,
    unpack,
    unpack_parts,
)
from jobs.pipeline.folders import InputFolder, OutputFolder, OutputWriteError, StorageReadError
from jobs.pipeline.lease import LeaseLost, check_holder
from jobs.pipeline.manifest import Tally
from jobs.pipeline.placement import Placement, no_more_replicas_than_blocks
from jobs.pipeline.progress import Progress
from jobs.pipeline.reading import ROW, Columns
from jobs.pipeline.rejections import Rejection, count_by_kind
from jobs.pipeline.units import BlockId
from jobs.pipeline.work import ToDo, Work, WorkItem, unread_envelope

log = logging.getLogger("embed")

# What stops a commit, by the name it travels under in an envelope.
STAGE_FAILURES: dict[str, type[Exception]] = {"lease": LeaseLost, "write": OutputWriteError}
FAILURES = tuple(STAGE_FAILURES.values())


def apart_from_the_replicas() -> dict[str, Any]:
    """The read stage's remote arguments, as a function that adds none. Ray Data fuses a task
    stage into the actor stage after it when their remote arguments match (a CPU replica of
    one CPU): every block would then be read and tokenized inside the replica's actor, one
    after another with its encoding. It never fuses a stage whose arguments come from a
    function. (A runtime environment of its own kept them apart before; it also cost every
    run a worker process of that environment, started and importing while the first block
    waited, instead of the default workers the duplicate scan had warmed.)"""
    return {}


def tokenize_on_one_thread() -> None:
    """A read task holds one CPU, so its tokenizer runs on one thread: the fast tokenizer
    would otherwise start a thread per core of the node in every read task, next to the
    replicas' own. The tokenizers library reads the variable on every call."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


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
    # The replicas' tokenizer, for the read stage to tokenize with (None: replicas tokenize).
    tokenizer: TextTokenizer | None = None
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


def read_stage(batch: pa.Table, stage_spec: StageSpec) -> Iterator[pa.Table]:
    """Ray map_batches function: per work item, an envelope per block, as soon as it is read."""
    tokenize_on_one_thread()
    for text in batch.column("work").to_pylist():
        item = WorkItem.parse(text)
        to_do = {str(block.planned.id): block for block in item.blocks}
        planned = [block.planned for block in item.blocks]
        blocks = read_planned(
            stage_spec.input, planned, stage_spec.columns, stage_spec.block_rows, item.excluded
        )
        try:
            for plan, block in blocks:
                yield to_table([read_envelope(block, to_do.pop(str(plan.id)), stage_spec)])
        except StorageReadError as err:
            for block in to_do.values():
                keep = block.earlier
                unread = unread_envelope(
                    block.planned, err.relpath, str(err), keep, stage_spec.output
                )
                yield to_table([unread])


def read_envelope(block: Block, to_do: ToDo, stage_spec: StageSpec) -> dict[str, Any]:
    """A block's envelope: its rows, whatever earlier vectors fit, the token ids of the rest
    and its rejections, for the write stage to commit; a block without rows commits its
    rejection list here."""
    report = block_report(block)
    inputs = to_do.planned.inputs()
    parts = block.collection_parts()
    # The block's one copy before its file: its rows packed (and hashed) once.
    rows, rejections = pack_parts(parts), rejection_lines(block.rejections)
    content = commit.content_hash(inputs, rows, rejections)
    figures = envelope(
        block_id=str(block.id),
        signature=to_do.signature,
        content_hash=content,
        inputs=json.dumps(inputs),
        rows=block.rows.num_rows,
        rejected=report["rejected"],
        rejected_by_kind=list(report["rejected_by_kind"].items()),
        rejections=rejections,
        cuts=report["cuts"],
    )
    if content == to_do.content_hash:  # its files hold this very content: done
        kept = [
            {"relpath": OutputFolder.block_file(collection, block.id), "rows": count}
            for collection, count in block.collections().items()
        ]
        rejections_file = OutputFolder.rejections_file(block.id) if block.rejections else ""
        return figures | {
            "rejections": b"",
            "skipped": block.rows.num_rows,
            "files": kept,
            "rejections_file": rejections_file,
        }
    if not block.rows.num_rows:
        try:
            return figures | commit_rejections(figures, stage_spec)
        except FAILURES as failure:
            return failure_envelope(figures, failure)
    earlier = None
    if to_do.earlier:
        earlier = commit.reusable_vectors(
            list(to_do.earlier),
            stage_spec.fingerprint_id,
            stage_spec.reuse_column,
            stage_spec.output,
        )
    reused = set(earlier.column("key").to_pylist()) if earlier is not None else set()
    tokenizer = stage_spec.tokenizer
    tokens, truncated = token_table(parts, reused, tokenizer)
    return figures | {
        "block": rows,
        "reuse": pack(earlier) if earlier is not None else b"",
        "tokens": pack(tokens),
        "tokenizer": tokenizer.identity if tokenizer else "",
        "truncated": truncated,
    }


def token_table(
    parts: list[pa.Table], reused: set[str], tokenizer: TextTokenizer | None
) -> tuple[pa.Table, int]:
    """Per row of the block (its parts in order): its key and, with a tokenizer, the token ids
    of rows that need encoding (none for rows whose earlier vector is reused); and how many
    texts the tokenizer cut short. Tokenized here, on the read stage's CPU, so that the
    replica never tokenizes."""
    texts = [t for part in parts for t in part.column("text").to_pylist()]
    ids = [i for part in parts for i in part.column("id").to_pylist()]
    keys = commit.row_keys(ids, texts)
    columns: dict[str, Any] = {"key": pa.array(keys, pa.string())}
    if tokenizer is None:
        return pa.table(columns), 0
    todo = [i for i, key in enumerate(keys) if key not in reused]
    tokens = tokenizer.tokenize([texts[i] for i in todo])
    columns["ids"] = spread(tokens.ids, todo, len(keys))
    return pa.table(columns), tokens.truncated


def spread(ids: pa.ListArray, rows: list[int], total: int) -> pa.ListArray:
    """`ids` (one list per row in `rows`) as a column of `total` rows, empty elsewhere."""
    if len(rows) == total:
        return ids
    lengths = np.zeros(total, dtype=np.int32)
    lengths[rows] = np.diff(ids.offsets.to_numpy())
    offsets = np.zeros(total + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), ids.values)


def block_report(block: Block) -> dict[str, Any]:
    """A block's rejection figures, as its envelope and its files' footers carry them."""
    return {
        "rejected": len(block.rejections),
        "rejected_by_kind": count_by_kind(block.rejections),
        "cuts": [{"file": f, "from_row": row, "reason": why} for f, row, why in block.cuts],
    }


def rejection_lines(rejections: list[Rejection]) -> bytes:
    lines = "".join(json.dumps(r.as_record(), ensure_ascii=False) + "\n" for r in rejections)
    return lines.encode("utf-8")


def commit_rejections(item: dict[str, Any], stage_spec: StageSpec) -> dict[str, Any]:
    """The block's rejection list written to OUTPUT (before its Parquet files: a block found
    done has its list); the envelope's fields that change with it."""
    if not item["rejections"]:
        return {"rejections": b""}
    stage_spec.check_lease()
    relpath = stage_spec.output.write_rejections(
        BlockId.parse(item["block_id"]), bytes(item["rejections"])
    )
    return {"rejections": b"", "rejections_file": relpath}


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
        # When its first block came in, when its last went out, and how long it waited for
        # blocks in between: a replica waiting is a GPU the CPU side starves.
        self.first_in: float | None = None
        self.last_out: float | None = None
        self.waited = 0.0
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
        tokens = (
            "token ids from the read stage"
            if info["tokenizer"]
            else f"tokenizes texts itself ({info['tokenizes_texts_because']})"
        )
        quantized = "" if info["quantization"] == "none" else f" ({info['quantization']} model)"
        print(
            f"replica {self.replica_id[:8]} on {where if info['gpu_name'] else 'cpu'} in "
            f"{info['dtype']}, backend {info['backend']}{quantized}, "
            f"attention {info['attention']}, {tokens}, "
            f"CUDA_VISIBLE_DEVICES={info['cuda_visible_devices'] or '-'}",
            flush=True,
        )
        self.report()

    def __call__(self, batch: pa.Table) -> pa.Table:
        came_in = time.monotonic()
        if self.last_out is None:
            self.first_in = came_in
        else:
            self.waited += came_in - self.last_out
        items = [
            embed_block(item, self.replica, self.stage_spec) | {"replica_id": self.replica_id}
            if item["block"]
            else item
            for item in from_table(batch)
        ]
        self.last_out = time.monotonic()
        self.report()
        return to_table(items)

    def report(self) -> None:
        # Cumulative figures, so a lost or repeated report cannot skew the totals.
        alive = time.time() - self.started
        figures = self.replica.stats.as_dict() | self.replica.peak_memory()
        fed = self.last_out - self.first_in if self.last_out is not None else 0.0
        self.stats_actor.report.remote(
            self.replica_id,
            self.info,
            figures
            | {
                "alive_seconds": alive,
                "fed_seconds": round(fed, 3),
                "waited_for_input_seconds": round(self.waited, 3),
            },
        )


def embed_block(item: dict[str, Any], replica: Replica, stage_spec: StageSpec) -> dict[str, Any]:
    """Vectors for the block's rows: reused where id and text are unchanged, else encoded from
    the read stage's token ids (the rows of all its collections in one call). Returns them as
    their own table, key first; the block's rows pass through untouched."""
    tokens = unpack(item["tokens"])
    keys = tokens.column("key").to_pylist()
    dim = stage_spec.dims[0]
    reuse = reuse_index(unpack(item["reuse"]), dim) if item["reuse"] else {}
    vectors = np.empty((len(keys), dim), dtype=np.float32)
    todo = [i for i, key in enumerate(keys) if key not in reuse]
    if todo:
        encoded = encode_rows(item, tokens, todo, replica)
        vectors[todo] = base_vectors(
            encoded, stage_spec.rotation, stage_spec.dims[0], rotate_full_width=False
        )
    for i, key in enumerate(keys):
        if key in reuse:
            vectors[i] = reuse[key]
    columns = output_vectors(
        vectors,
        list(stage_spec.dims),
        stage_spec.precision,
        stage_spec.ranges,
        rotation=stage_spec.rotation,
    )
    table = pa.table(
        {"key": tokens.column("key")} | {n: embedding_column(m) for n, m in columns.items()}
    )
    return item | {
        "vectors": pack(table),
        "tokens": b"",
        "reuse": b"",
        "embedded": len(todo),
        "reused": len(keys) - len(todo),
    }


def encode_rows(
    item: dict[str, Any], tokens: pa.Table, todo: list[int], replica: Replica
) -> np.ndarray:
    """The replica's vectors of rows `todo`: from the read stage's token ids when they come
    from the tokenizer this replica checked, else from the texts (tokenized here)."""
    identity = getattr(replica, "tokenizer_identity", "")
    if identity and item["tokenizer"] == identity:
        ids = tokens.column("ids").combine_chunks()
        if len(todo) != len(ids):
            ids = ids.take(pa.array(todo, pa.int64()))
        return replica.embed_tokens(Tokens(ids, item["truncated"]))
    parts = unpack_parts(item["block"])
    texts = [t for part in parts for t in part.column("text").to_pylist()]
    return replica.embed([texts[i] for i in todo])


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


def failure_envelope(item: dict[str, Any], failure: Exception) -> dict[str, Any]:
    """The envelope of a commit that could not happen: the driver stops the run on it."""
    kind = next(k for k, kind in STAGE_FAILURES.items() if isinstance(failure, kind))
    return item | {
        "block": b"",
        "reuse": b"",
        "tokens": b"",
        "vectors": b"",
        "rejections": b"",
        "failure": kind,
        "failed": str(failure),
    }


def raise_failures(results: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The envelopes, until one reports a commit that could not happen: then its failure."""
    for result in results:
        if result["failed"]:
            raise STAGE_FAILURES[result["failure"]](result["failed"])
        yield result


def write_stage(batch: pa.Table, stage_spec: StageSpec) -> pa.Table:
    """Ray map_batches function: commit each embedded block, one Parquet file per collection."""
    items = []
    for item in from_table(batch):
        if item["block"]:
            try:
                item = item | commit_rejections(item, stage_spec)
                files = write_block(item, stage_spec)
            except FAILURES as failure:
                item = failure_envelope(item, failure)
            else:
                item = item | {"files": files, "written": True, "block": b"", "vectors": b""}
        items.append(item)
    return to_table(items)


def write_block(item: dict[str, Any], stage_spec: StageSpec) -> list[dict[str, Any]]:
    """The block's files, one per collection: its rows beside their vectors, each footer
    saying which fingerprint and content made it (jobs.pipeline.commit); returns each file
    with its rows."""
    parts = unpack_parts(item["block"])
    vectors = unpack(item["vectors"])
    block_id = BlockId.parse(item["block_id"])
    stage_spec.check_lease()
    inputs = json.loads(item["inputs"])
    report = {
        "rejected": item["rejected"],
        "rejected_by_kind": dict(item["rejected_by_kind"]),
        "cuts": item["cuts"],
    }
    written, start = [], 0
    for part in parts:
        collection = part.column("collection")[0].as_py()
        mine = vectors.slice(start, part.num_rows)  # a view: no copy
        start += part.num_rows
        for name in mine.column_names[1:]:
            part = part.append_column(name, mine.column(name))
        part = part.drop_columns(["collection", ROW] + (["text"] if stage_spec.drop_text else []))
        metadata = commit.footer(
            stage_spec.fingerprint_id,
            item["signature"],
            item["content_hash"],
            len(parts),
            mine.column("key").to_pylist(),
            inputs,
            report,
        )
        part = part.replace_schema_metadata(metadata)
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


def pipeline_dataset(
    items: list[dict[str, Any]],
    stage_spec: StageSpec,
    replica_spec: ReplicaSpec,
    placement: Placement,
    stats_actor,
):
    """The three stages as one Ray Dataset (lazy: nothing runs until it is iterated)."""
    import ray.data

    # Reading and writing never use the rotation (up to 128 MB at 4096 dims): only the
    # replicas get it.
    io_spec = replace(stage_spec, rotation=None)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    with warnings.catch_warnings():
        # Ray 2.60 (pinned) says ray_remote_args_fn goes in Ray 2.64, on every run's standard
        # error: a note for this code, not for the user. The optimized-plan test
        # (tests/test_tokens.py) fails the day it stops keeping the stages apart.
        warnings.filterwarnings("ignore", message="`ray_remote_args_fn` is deprecated")
        dataset = dataset.map_batches(
            read_stage,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"stage_spec": io_spec},
            compute=ray.data.TaskPoolStrategy(size=placement.read_tasks),
            num_cpus=placement.io_cpus,
            ray_remote_args_fn=apart_from_the_replicas,
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
            "stats_actor": stats_actor,
            "on_gpus": placement.on_gpus,
        },
    )
    return dataset.map_batches(
        write_stage,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"stage_spec": io_spec},
        num_cpus=placement.io_cpus,
    )


def run_pipeline(
    work: Work,
    stage_spec: StageSpec,
    replica_spec: ReplicaSpec,
    placement: Placement,
    verbose: bool = False,
) -> tuple[Tally, list[dict[str, Any]]]:
    """Run every work item to committed Parquet; returns the figures of every block (the done
    ones' too) added up, and each replica's own. No item: nothing to run, no replica loads.
    Without `verbose`, Ray's own progress output and notices are left out (jobs.pipeline.quiet)."""
    tally = Tally.of(work.done)
    if not work.items:
        return tally, []
    started = no_more_replicas_than_blocks(placement, work.blocks_to_do)
    if started.replicas < placement.replicas:
        log.info(
            "%d block(s) to embed: %d of the %d replica(s) started",
            work.blocks_to_do,
            started.replicas,
            placement.replicas,
        )
    placement = started
    items = [item.as_row() for item in work.items]
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: the figures must outlive any worker node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    stats = stats_collector_class().options(scheduling_strategy=here).remote()
    if not verbose:
        quiet.quiet_ray_data()
    dataset = pipeline_dataset(items, stage_spec, replica_spec, placement, stats)
    # Streamed into the tally: the driver keeps figures per block, not the envelopes.
    progress = Progress(work.rows_to_do, work.blocks_to_do, terminal=sys.stderr.isatty())
    with contextlib.nullcontext() if verbose else quiet.dropped_lines():
        for result in progress.track(raise_failures(dataset.iter_rows())):
            tally.add(result)
    replicas = ray.get(stats.summary.remote())
    ray.kill(stats)
    # A replica whose node died is lost: its figures end at its last report, and the blocks it
    # had not written were redone by the others.
    alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    for replica in replicas:
        replica["lost"] = replica["node_id"] not in alive
    log.info("blocks: %d; files written: %d", tally.blocks, tally.files_written)
    return tally, replicas
