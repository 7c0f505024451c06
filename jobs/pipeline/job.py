"""One run of the embedding job, from settings to manifest: every refusal first, then Ray.

`main` is `python -m jobs.embed`. Exit codes: 0 every row written or rejected with a reason;
2 refused before any work (bad settings, unknown model, truncation policy, unusable
INPUT/OUTPUT, OUTPUT held by another run); 3 more rows rejected than --max-rejected-fraction
allows; 1 the run failed (an input file unread, a write to OUTPUT failed, OUTPUT's lease lost);
130 and 143 stopped by SIGINT or SIGTERM. Every stop keeps the blocks committed so far, and a
rerun resumes.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from embedder import ReplicaSpec
from embedder.graphs import GraphError, is_graph_backend
from embedder.outputs import output_columns
from embedder.replica import place
from embedder.tokens import TextTokenizer, cached_text_tokenizer
from embedder.weights import Weights
from jobs.pipeline import calibration, commit, dry_run, duplicates, manifest, quiet, summary
from jobs.pipeline.folders import (
    MANIFEST,
    InputError,
    InputFolder,
    OutputError,
    OutputFolder,
    check_apart,
)
from jobs.pipeline.lease import Lease, LeaseHeld, check_free
from jobs.pipeline.placement import Node, Placement, PlacementError, place_replicas
from jobs.pipeline.reading import Columns
from jobs.pipeline.settings import EmbedSettings, SettingsError, describe_config, load_settings
from jobs.pipeline.stages import STAGE_FAILURES, StageSpec, run_pipeline
from jobs.pipeline.units import InputFile
from jobs.pipeline.work import Work, plan_work
from registry import (
    ModelSpec,
    PolicyError,
    Registry,
    RegistryError,
    Truncation,
    check_remote_code,
    check_truncation,
)

log = logging.getLogger("embed")

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_TOO_MANY_REJECTED = 0, 1, 2, 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # exit 128 + the signal: 130, 143


class LocalPathOnCluster(ValueError):
    """A local INPUT/OUTPUT path on a cluster of several nodes, not declared shared."""


class RunStopped(BaseException):
    """SIGINT or SIGTERM arrived: the run stops where it is. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way can swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


REFUSALS = (
    SettingsError,
    RegistryError,
    PolicyError,
    InputError,
    OutputError,
    commit.FingerprintMismatch,
    GraphError,
    PlacementError,
    LocalPathOnCluster,
    LeaseHeld,
)
# Failures that end a run with one line, not a traceback: what happened is all there is to say
# (the same a worker reports in an envelope).
FAILURES = tuple(STAGE_FAILURES.values())


@dataclass(frozen=True)
class Resolved:
    """What only a replica's machine can say: the precision it runs in and the weights it
    loads (embedder.weights), both part of the fingerprint, so a resume can never mix them;
    and the weights' tokenizer, for the read stage (None: the replicas tokenize)."""

    dtype: str
    weights: Weights
    # Loaded, or still loading on the driver (a Future: see resolve's `background`).
    tokenizer: TextTokenizer | Future | None = dataclasses.field(default=None, compare=False)

    def read_stage_tokenizer(self) -> TextTokenizer | None:
        """The tokenizer for the read stage, waiting for it if it is still loading."""
        if isinstance(self.tokenizer, Future):
            return self.tokenizer.result()
        return self.tokenizer


@dataclass(frozen=True)
class Job:
    """A run that passed every check and can start."""

    settings: EmbedSettings
    model_spec: ModelSpec
    truncations: list[Truncation]  # one per dim, widest first
    input: InputFolder
    output: OutputFolder
    input_files: list[InputFile]
    resolved: Resolved | None = None  # set by with_resolved, where a replica would run

    @property
    def dims(self) -> list[int]:
        return [t.dim for t in self.truncations]

    @property
    def columns(self) -> Columns:
        vectors = tuple(output_columns(self.dims, self.settings.precision))
        return Columns(text=self.settings.text_column, id=self.settings.id_column, vectors=vectors)

    @property
    def max_tokens(self) -> int | None:
        """--max-tokens, else the registry's: the cap on tokens per text."""
        return self.settings.max_tokens or self.model_spec.max_tokens

    @property
    def fingerprint(self) -> dict:
        """Everything that changes a vector or where it is written: a rerun must match it.
        The precision a replica resolves (fp32 for `auto` on a CPU, bf16 or fp16 on a GPU)
        and the weights' digest are in it once resolved; before, they are left out
        (RESOLVED_KEYS)."""
        settings, model_spec = self.settings, self.model_spec
        fingerprint = {
            "hf_id": model_spec.hf_id,
            "revision": settings.revision or model_spec.revision,
            "backend": model_spec.backend,
            "dim": self.dims[0],
            "dims": self.dims,
            "precision": settings.precision,
            "rotate": settings.rotate,
            "prompt": model_spec.document_prompt_label(),
            "encode_kwargs": model_spec.encode_kwargs,
            "normalized": True,
            "max_tokens": self.max_tokens,
            "text_column": settings.text_column,
            "id_column": settings.id_column,
            "drop_text": settings.drop_text,
            "block_rows": settings.block_rows,
        }
        if settings.quantize != "none":  # absent otherwise: OUTPUTs made before it still match
            fingerprint["quantize"] = settings.quantize
        if self.resolved is not None:
            fingerprint["dtype"] = self.resolved.dtype
            fingerprint["weights"] = self.resolved.weights.pinned()
        return fingerprint


RESOLVED_KEYS = ("dtype", "weights")


def resolve(
    replica_spec: ReplicaSpec, on_gpus: bool | None = None, background: bool = False
) -> Resolved:
    """The precision and weights a replica of `replica_spec` gets on this machine (in a run,
    a Ray task with a replica's resources calls this: resolve_where_replicas_run), and the
    read stage's tokenizer; `background`: loaded in a thread of this process, so that the
    driver scans and calibrates meanwhile (importing transformers takes seconds)."""
    weights = replica_spec.locate_weights()
    if background:
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        tokenizer = loader.submit(load_read_stage_tokenizer, weights, replica_spec)
        loader.shutdown(wait=False)
    else:
        tokenizer = load_read_stage_tokenizer(weights, replica_spec)
    return Resolved(place(replica_spec, on_gpus).dtype, weights, tokenizer)


def load_read_stage_tokenizer(weights: Weights, replica_spec: ReplicaSpec) -> TextTokenizer | None:
    """The replicas' tokenizer, loaded once here for every read task (and kept on this
    machine for the next run of these weights); None (the replicas then tokenize texts
    themselves, and say why) where this job does not mirror the model's tokenization or the
    tokenizer does not load."""
    if not replica_spec.takes_token_ids:
        return None
    try:
        return cached_text_tokenizer(
            Path(weights.folder), replica_spec.tokenizer_spec(), weights.digest
        )
    except Exception as err:  # noqa: BLE001 - any failure only means: the replicas tokenize
        log.warning("the read stage will not tokenize (the replicas will): %s", err)
        return None


def with_resolved(job: Job, resolved: Resolved) -> Job:
    return dataclasses.replace(job, resolved=resolved)


def prepare_job(settings: EmbedSettings) -> Job:
    """Every check that can refuse the run, before Ray starts or anything is written."""
    registry = Registry.load(settings.registry_file)
    model_spec = with_backend(registry.get(settings.model), settings)
    dims = output_dims(model_spec, settings)
    truncations = [check_truncation(model_spec, d, settings.allow_non_matryoshka) for d in dims]
    check_remote_code(
        model_spec, settings.trust_remote_code, settings.revision or model_spec.revision
    )
    for warning in (w for t in truncations for w in t.warnings):
        log.warning("%s", warning)
    input_folder = InputFolder(settings.input, settings.storage_options)
    output = OutputFolder(settings.output, settings.storage_options)
    check_apart(input_folder, output)
    input_files = input_folder.list_files()
    job = Job(settings, model_spec, truncations, input_folder, output, input_files)
    if settings.overwrite:
        check_only_job_files(output)
    else:  # an OUTPUT that --overwrite clears cannot refuse the run
        commit.claim_output(output, job.fingerprint, write=False, unresolved=RESOLVED_KEYS)
    if not settings.dry_run:
        check_free(output)
    return job


def with_backend(model_spec: ModelSpec, settings: EmbedSettings) -> ModelSpec:
    """The registry entry with the run's --backend (what the manifest then records, and
    queries load), after refusing what does not combine with it."""
    backend = settings.backend or model_spec.backend
    if is_graph_backend(backend):
        if settings.device == "cuda" or (settings.gpus_per_replica or 0) > 0:
            raise SettingsError(
                f"--backend {backend} runs on CPUs: it does not combine with --device cuda or "
                "--gpus-per-replica; use --backend torch on GPUs"
            )
        if model_spec.encode_kwargs:
            raise SettingsError(
                f"{model_spec.name} takes encode arguments of its own "
                f"({sorted(model_spec.encode_kwargs)}), which --backend {backend} cannot pass: "
                "use --backend torch"
            )
    elif settings.quantize != "none":
        raise SettingsError(
            f"--quantize {settings.quantize} runs a quantized graph: it needs --backend onnx "
            "or --backend openvino"
        )
    return model_spec.model_copy(update={"backend": backend})


def check_only_job_files(output: OutputFolder) -> None:
    """--overwrite removes only what this job wrote: refused (before anything is touched)
    where OUTPUT holds anything else."""
    foreign = output.foreign_files()
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise OutputError(
            f"OUTPUT {output.uri!r} holds {len(foreign)} file(s) this job did not write "
            f"({shown}): --overwrite removes only the job's own files, and would leave these "
            "mixed with a new run's. Move them away, or choose another OUTPUT."
        )


def output_dims(model_spec: ModelSpec, settings: EmbedSettings) -> list[int]:
    """The dims to write, widest first: DIM, or --dims, or the native dim."""
    if settings.dims and settings.dim:
        raise SettingsError("give DIM or --dims (EMBED_DIMS), not both")
    if settings.dims:
        try:
            dims = sorted({int(d) for d in settings.dims.split(",") if d.strip()}, reverse=True)
        except ValueError:
            raise SettingsError(f"--dims must be comma-separated integers, got {settings.dims!r}")
        if not dims or min(dims) < 1:
            raise SettingsError(f"--dims must be positive integers, got {settings.dims!r}")
    else:
        dims = [settings.dim or model_spec.native_dim]
    if settings.precision in ("binary", "ubinary") and any(d % 8 for d in dims):
        raise SettingsError(
            f"--precision {settings.precision} packs 8 dims per byte: every dim must be a "
            f"multiple of 8, got {dims}"
        )
    return dims


def prepare_output(job: Job) -> None:
    """Clear OUTPUT if asked, then claim it for this fingerprint. Called with OUTPUT's lease
    held."""
    settings, output = job.settings, job.output
    if settings.overwrite:
        check_only_job_files(output)  # again: the lease now keeps other runs out
        removed = output.clear()
        if removed:
            log.warning(
                "--overwrite: removed %d file(s) this job had written to %s: %s",
                len(removed),
                output.uri,
                describe_removed(removed),
            )
    if commit.claim_output(output, job.fingerprint) is not None:
        log.info("OUTPUT holds a run with the same settings: resuming, finished blocks are kept")


def describe_weights(weights: Weights) -> str:
    revision = f", revision {weights.revision}" if weights.revision else ""
    return f"{weights.digest} ({weights.files} files in {weights.folder}{revision})"


def describe_removed(relpaths: list[str]) -> str:
    """What --overwrite removed, by kind."""
    blocks = sum(OutputFolder.parse_block_file(r) is not None for r in relpaths)
    rejections = sum(r.startswith("_rejected/") for r in relpaths)
    records = [r for r in relpaths if "/" not in r]
    kinds = [f"{blocks} block file(s)", f"{rejections} rejection list(s)"]
    others = len(relpaths) - blocks - rejections - len(records)
    if others:
        kinds.append(f"{others} temp file(s)")
    return ", ".join(kinds + records)


def replica_spec_for(job: Job, placement: Placement) -> ReplicaSpec:
    """The replica this run needs; once resolved, pinned to the resolved precision, hub
    commit and weights' digest, so that every replica loads exactly those."""
    settings, resolved = job.settings, job.resolved
    return ReplicaSpec.for_outputs(
        job.model_spec,
        job.dims,
        settings.precision,
        settings.rotate != "none",
        revision=(resolved and resolved.weights.revision) or settings.revision,
        trust_remote_code=settings.trust_remote_code,
        max_tokens=job.max_tokens,
        device=settings.device,
        dtype=resolved.dtype if resolved else settings.dtype,
        quantize=settings.quantize,
        batch_size=settings.batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        cpu_threads=placement.torch_threads,
        weights_digest=resolved.weights.digest if resolved else "",
    )


def resolve_where_replicas_run(job: Job, placement: Placement) -> Resolved:
    """`resolve` where the replicas will load the weights: here when they run on this lone
    node's CPUs; otherwise in a Ray task with a replica's resources (on a GPU node for a GPU
    run, so that the driver never starts CUDA on a GPU a replica needs)."""
    import ray

    replica_spec = replica_spec_for(job, placement)
    nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
    if not placement.on_gpus and nodes == [ray.get_runtime_context().get_node_id()]:
        return resolve(replica_spec, on_gpus=False, background=True)
    task = ray.remote(num_cpus=placement.cpus_per_replica, num_gpus=placement.gpus_per_replica)(
        resolve
    )
    return ray.get(task.remote(replica_spec, placement.on_gpus))


def start_ray(verbose: bool = False) -> bool:
    """Join the cluster at RAY_ADDRESS (Ray reads it), or start a local Ray.

    Returns whether this call started or joined Ray (and so should shut it down). num_cpus and
    num_gpus are not passed: ray.init raises when they are given while joining a cluster.
    """
    import os

    import ray

    if ray.is_initialized():
        return False
    # Without RAY_ADDRESS, ray.init() would also join the last cluster `ray start` made on
    # this machine (/tmp/ray/ray_current_cluster), and wait forever when that one is dead.
    address = None if os.environ.get("RAY_ADDRESS") else "local"
    if not verbose:
        quiet.before_ray_start()
    ray.init(address=address, include_dashboard=False, log_to_driver=True)
    return True


def cluster_resources() -> tuple[float, float, str]:
    """CPUs, GPUs, and the GPU kinds Ray found (e.g. "T4 x2")."""
    import ray

    resources = ray.cluster_resources()
    kinds = ", ".join(
        f"{key.split(':', 1)[1]} x{count:g}"
        for key, count in resources.items()
        if key.startswith("accelerator_type:")
    )
    return resources.get("CPU", 0.0), resources.get("GPU", 0.0), kinds


def run_job(job: Job) -> tuple[dict, int]:
    """Start (or join) Ray, check the cluster can host the run, hold OUTPUT's lease (LeaseHeld
    if another run does), resolve the weights, claim OUTPUT, run the pipeline and write the
    manifest; returns it with the exit code. Nothing is written to OUTPUT before the lease.

    Stops with RunStopped on SIGINT or SIGTERM, with LeaseLost as soon as the lease is lost
    (the heartbeat interrupts the main thread; a worker reports it in an envelope), with
    OutputWriteError when a write to OUTPUT fails, here or in a worker. Ray is shut down
    first, so that no worker commits after that, then the lease released.
    """
    import ray

    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    lease: Lease | None = None
    with stop_on_signals():
        started_here = start_ray(job.settings.verbose)
        catch_stop_signals()  # ray.init sets a SIGTERM handler of its own: ours again
        try:
            placement = plan_cluster(job)
            lease = Lease.take(
                job.output, job.settings.lease_timeout, on_lost=_thread.interrupt_main
            )
            job = with_resolved(job, resolve_where_replicas_run(job, placement))
            log.info("weights: %s", describe_weights(job.resolved.weights))
            prepare_output(job)
            return run_on_ray(job, placement, lease, started_at, t0)
        except RunStopped:
            if lease is not None and lease.lost is not None:  # the heartbeat's interrupt
                raise lease.lost from None
            raise
        finally:
            if started_here:
                ray.shutdown()
            if lease is not None:
                lease.release()


def catch_stop_signals() -> dict[int, object]:
    """From now on SIGINT and SIGTERM raise RunStopped in the main thread; returns the
    handlers they had."""

    def stop(signum, frame):
        raise RunStopped(signum)

    return {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise RunStopped while the run lives; the handlers they had before
    come back after."""
    previous = catch_stop_signals()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def plan_cluster(job: Job) -> Placement:
    """The replicas, sized node by node; refused (nothing written yet) when they cannot fit or
    when a local path would be read or written by several nodes."""
    settings = job.settings
    nodes = alive_nodes()
    check_shared_storage(job, nodes)
    # A graph backend runs on CPUs: its replicas take no GPU, even on a GPU cluster.
    gpus_each = 0 if is_graph_backend(job.model_spec.backend) else settings.gpus_per_replica
    placement = place_replicas(nodes, settings.replicas, gpus_each, settings.cpus_per_replica)
    cpus, gpus, accelerators = cluster_resources()
    log.info(
        "cluster: %d node(s), %g CPU, %g GPU%s -> %d replica(s), %g GPU and %d CPU each%s; "
        "%d input file(s)",
        len(nodes),
        cpus,
        gpus,
        f" ({accelerators})" if accelerators else "",
        placement.replicas,
        placement.gpus_per_replica,
        placement.cpus_per_replica,
        "" if placement.read_tasks is None else "; reads and writes share the CPU left",
        len(job.input_files),
    )
    return placement


def alive_nodes() -> list[Node]:
    """The nodes Ray has alive now, with what each offers."""
    import ray

    return [
        Node(
            node["Resources"].get("CPU", 0.0),
            node["Resources"].get("GPU", 0.0),
            f"{node.get('NodeManagerAddress', '?')}, node {node['NodeID'][:8]}",
        )
        for node in ray.nodes()
        if node.get("Alive")
    ]


def check_shared_storage(job: Job, nodes: list[Node]) -> None:
    """Local INPUT/OUTPUT paths on a cluster of several nodes would be each node's own disk:
    refused unless the user says the path is shared."""
    if len(nodes) < 2 or job.settings.shared_filesystem:
        return
    folders = (("INPUT", job.input), ("OUTPUT", job.output))
    local = [name for name, folder in folders if folder.is_local]
    if local:
        raise LocalPathOnCluster(
            f"{' and '.join(local)} {'is a local path' if len(local) == 1 else 'are local paths'}"
            f", but this Ray cluster has {len(nodes)} nodes: each would read and write its own "
            "disk, and the driver would list only its own. Use object storage (s3://, gs://, "
            "...), or pass --shared-filesystem (EMBED_SHARED_FILESYSTEM=1) if the path is a "
            "mount that every node shares (NFS, Lustre)."
        )


def run_on_ray(
    job: Job, placement: Placement, lease: Lease, started_at, t0: float
) -> tuple[dict, int]:
    """Duplicate scan, calibration, the plan, the pipeline, the stale sweep and the manifest;
    nothing but the manifest when INPUT and OUTPUT are as the last complete run left them.
    Whatever the driver writes to OUTPUT is preceded by a check that this run still holds the
    lease; the workers check before each commit (StageSpec.run_id)."""
    settings = job.settings
    t_ray = time.perf_counter()
    listing = job.output.files()
    previous = manifest.unchanged_since(job.output, job.fingerprint, job.input_files, listing)
    if previous is not None:
        log.info(
            "nothing to do: INPUT and OUTPUT are as the last run left them (%d rows in OUTPUT)",
            previous["rows_in_output"],
        )
        record = manifest.rerun_of(
            previous,
            settings_public=settings.public_dict(),
            timings=run_timings(t0, t_ray, time.perf_counter(), time.perf_counter()),
            started_at=started_at,
        )
        lease.check()
        manifest.write_manifest(job.output, record)
        return record, exit_code_for(record, settings.max_rejected_fraction)
    scan = duplicates.find_corpus_duplicates(
        job.input,
        job.input_files,
        job.columns,
        settings.block_rows,
        sample_rows=settings.calibration_rows,
    )
    readable = [f for f in job.input_files if f.relpath not in scan.unread]
    replica_spec = replica_spec_for(job, placement)
    lease.check()
    sample = functools.cache(
        lambda: calibration.sample_texts(
            job.input, readable, job.columns, settings.block_rows, scan.sample
        )
    )
    quantized = quantize(job, sample, replica_spec, placement)
    replica_spec = dataclasses.replace(
        replica_spec, quantized=calibration.quantized_graph(job.output, quantized)
    )
    calibrated = calibrate(job, sample, replica_spec, placement)
    stage_spec = stage_spec_for(job, calibrated, lease.run_id, job.resolved.read_stage_tokenizer())
    work = plan_work(
        job.input_files, scan, job.output, stage_spec.fingerprint_id, settings.block_rows, listing
    )
    log_plan(work)
    t_scan = time.perf_counter()
    tally, replicas = run_pipeline(work, stage_spec, replica_spec, placement, settings.verbose)
    t_done = time.perf_counter()
    lease.check()
    listing = job.output.files()  # one listing for the sweep and the sizes
    removed = job.output.remove_stale(tally.current_files(), listing)
    for relpath in removed:
        log.info("removed from OUTPUT, no longer part of the input: %s", relpath)
        listing.pop(relpath)
    collections = manifest.collection_figures(tally.files, listing)
    record = manifest.build_manifest(
        model_spec=job.model_spec,
        truncations=job.truncations,
        calibration=calibrated,
        quantized_model=quantized,
        fingerprint=job.fingerprint,
        weights=job.resolved.weights.pinned() | {"files": job.resolved.weights.files},
        settings_public=settings.public_dict(),
        replicas=replicas,
        tally=tally,
        collections=collections,
        timings=run_timings(t0, t_ray, t_scan, t_done),
        started_at=started_at,
        states=manifest.states(job.input_files, job.output, listing),
    )
    lease.check()
    manifest.write_manifest(job.output, record)
    return record, exit_code_for(record, settings.max_rejected_fraction)


def run_timings(t0: float, t_ray: float, t_scan: float, t_done: float) -> dict[str, float]:
    return {
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "ray_start_seconds": round(t_ray - t0, 3),
        # duplicate-id scan, calibration (rotation, int8 ranges), the plan (footers read)
        "preparation_seconds": round(t_scan - t_ray, 3),
        "pipeline_seconds": round(t_done - t_scan, 3),
    }


def log_plan(work: Work) -> None:
    done = [e for e in work.done if not e["unread"]]
    log.info(
        "plan: %d block(s); %d done already (%d rows); to do: %d block(s), %d rows, in %d "
        "read task(s)",
        work.blocks,
        len(done),
        sum(e["rows"] for e in done),
        work.blocks_to_do,
        work.rows_to_do,
        len(work.items),
    )


def stage_spec_for(
    job: Job, calibrated: dict | None, run_id: str = "", tokenizer: TextTokenizer | None = None
) -> StageSpec:
    """What every stage needs to know of this run (`run_id`: the lease's, checked before each
    commit; `tokenizer`: the replicas', for the read stage)."""
    settings = job.settings
    return StageSpec(
        input=job.input,
        output=job.output,
        columns=job.columns,
        block_rows=settings.block_rows,
        drop_text=settings.drop_text,
        fingerprint_id=commit.fingerprint_id(job.fingerprint),
        dims=tuple(job.dims),
        precision=settings.precision,
        ranges=(calibrated or {}).get("ranges"),
        rotation=calibration.load_rotation(job.output, calibrated),
        run_id=run_id,
        tokenizer=tokenizer,
    )


def quantize(
    job: Job, sample: Callable[[], list[str]], replica_spec: ReplicaSpec, placement: Placement
) -> dict | None:
    """--quantize int8: the int8 model of this OUTPUT (recorded, or made now from the scan's
    sample, spread over the corpus); None without --quantize."""
    if job.settings.quantize == "none":
        return None
    return calibration.load_or_quantize(
        job.output,
        sample,
        calibration.quantize_on_ray(replica_spec, placement),
        job.model_spec.backend,
    )


def calibrate(
    job: Job, sample: Callable[[], list[str]], replica_spec: ReplicaSpec, placement: Placement
):
    """The rotation and int8/uint8 ranges of this OUTPUT (recorded, or calibrated now from
    the scan's sample, spread over the corpus, by the model the replicas run); None when the
    run needs neither."""
    settings = job.settings
    return calibration.load_or_calibrate(
        job.output,
        sample,
        job.dims,
        calibration.embed_on_ray(replica_spec, placement),
        settings.precision,
        settings.rotate,
    )


def exit_code_for(record: dict, max_rejected_fraction: float) -> int:
    """1 when an input file could not be read (a rerun picks it up); else 3 when a whole file,
    or the rest of one, could not be decoded (its rows are unknown) or more rows than allowed
    were rejected; else 0. Every reason that applies is logged."""
    failed = report_unread_files(record)
    undecodable = report_undecodable_files(record)
    too_many = report_too_many_rows_rejected(record, max_rejected_fraction)
    if failed:
        return EXIT_FAILED
    return EXIT_TOO_MANY_REJECTED if undecodable or too_many else EXIT_OK


def report_unread_files(record: dict) -> bool:
    for unread in record["files_unread"]:
        log.error("could not read %s: %s", unread["file"], unread["error"])
    if record["files_unread"]:
        log.error(
            "%d input file(s) could not be read; everything else is committed: rerun to "
            "finish them",
            len(record["files_unread"]),
        )
    return bool(record["files_unread"])


def report_undecodable_files(record: dict) -> bool:
    for rejected in record["rejected_files"]:
        log.error(
            "set aside %s from row %d on: %s",
            rejected["file"],
            rejected["from_row"],
            rejected["reason"],
        )
    if record["files_rejected"]:
        log.error(
            "%d input file(s) could not be decoded in whole or in part: their rows are "
            "unknown (see OUTPUT/_rejected/)",
            record["files_rejected"],
        )
    return bool(record["files_rejected"])


def report_too_many_rows_rejected(record: dict, max_rejected_fraction: float) -> bool:
    seen = record["rows_in_output"] + record["rows_rejected"]
    fraction = record["rows_rejected"] / seen if seen else 0.0
    if fraction > max_rejected_fraction:
        log.error(
            "%d of %d rows rejected (%.1f%%), more than --max-rejected-fraction %.3g; "
            "see OUTPUT/_rejected/",
            record["rows_rejected"],
            seen,
            100 * fraction,
            max_rejected_fraction,
        )
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        with stop_on_signals():
            return run_command(argv)
    except RunStopped as stop:
        print(
            f"interrupted ({signal.Signals(stop.signum).name}): finished blocks are kept; "
            "rerun to resume",
            file=sys.stderr,
        )
        return 128 + stop.signum
    except FAILURES as err:
        log.debug("the run failed", exc_info=True)
        print(f"error: {err}. Finished blocks are kept; rerun to resume.", file=sys.stderr)
        return EXIT_FAILED


def run_command(argv: list[str] | None) -> int:
    """The command line's work: a refusal (exit 2), --print-config, --dry-run or a run."""
    try:
        resolved = load_settings(argv)
        if resolved.settings.print_config:
            print(describe_config(resolved))
            return EXIT_OK
        job = prepare_job(resolved.settings)
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    if job.settings.dry_run:
        # Timed with the replica this machine would run: a lone CPU replica on two cores.
        placement = place_replicas([Node(2)])
        job = with_resolved(job, resolve(replica_spec_for(job, placement)))
        print(dry_run.describe(dry_run.survey(job, replica_spec_for(job, placement))))
        return EXIT_OK
    try:
        record, code = run_job(job)
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    print(summary.render(record, job.output.url(MANIFEST)))
    return code
