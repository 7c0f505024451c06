"""`python -m jobs.embed INPUT OUTPUT MODEL [DIM]`: embed a chunked corpus into partitioned Parquet.

Exit codes: 0 every row written or rejected with a reason; 2 refused before any work (bad
settings, unknown model, truncation policy, unusable INPUT/OUTPUT); 3 more rows rejected than
--max-rejected-fraction allows; 1 the run failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
from dataclasses import dataclass

from embedder import ReplicaSpec
from embedder.outputs import CALIBRATED
from jobs.pipeline import (
    calibration,
    commit,
    corpus,
    dry_run,
    duplicates,
    manifest,
    storage,
    summary,
)
from jobs.pipeline.placement import PlacementError, ReplicaPlan, plan_replicas
from jobs.pipeline.settings import EmbedSettings, SettingsError, describe_config, load_settings
from jobs.pipeline.stages import PipelineSpec, run_pipeline, work_items
from registry import (
    ModelSpec,
    PolicyError,
    Registry,
    RegistryError,
    TruncationPlan,
    check_remote_code,
    plan_truncation,
)

log = logging.getLogger("embed")

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_TOO_MANY_REJECTED = 0, 1, 2, 3


REFUSALS = (
    SettingsError,
    RegistryError,
    PolicyError,
    corpus.InputError,
    commit.FingerprintMismatch,
    PlacementError,
)


@dataclass(frozen=True)
class Job:
    """A run that passed every check and can start."""

    settings: EmbedSettings
    spec: ModelSpec
    truncation: TruncationPlan  # for the widest dim
    dims: list[int]  # widest first
    plans: list[TruncationPlan]
    shards: list[corpus.Shard]
    input: str
    output: str
    fingerprint: dict


def absolute_uri(uri: str) -> str:
    """Local paths become absolute: Ray workers do not share the driver's working directory."""
    return uri if "://" in uri else os.path.abspath(uri)


def prepare_job(settings: EmbedSettings) -> Job:
    """Every check that can refuse the run, before Ray starts or anything is written."""
    registry = Registry.load(settings.registry_file)
    spec = registry.get(settings.model)
    dims = output_dims(spec, settings)
    plans = [plan_truncation(spec, dim, settings.allow_non_matryoshka) for dim in dims]
    check_remote_code(spec, settings.trust_remote_code, settings.revision or spec.revision)
    for warning in (w for p in plans for w in p.warnings):
        log.warning("%s", warning)
    input_uri, output_uri = absolute_uri(settings.input), absolute_uri(settings.output)
    shards = corpus.plan_shards(input_uri, settings.storage_options)
    fingerprint = run_fingerprint(spec, dims, settings)
    prepare_output(output_uri, settings, fingerprint)
    return Job(settings, spec, plans[0], dims, plans, shards, input_uri, output_uri, fingerprint)


def output_dims(spec: ModelSpec, settings: EmbedSettings) -> list[int]:
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
        dims = [settings.dim or spec.native_dim]
    if settings.precision in ("binary", "ubinary") and any(d % 8 for d in dims):
        raise SettingsError(
            f"--precision {settings.precision} packs 8 dims per byte: every dim must be a "
            f"multiple of 8, got {dims}"
        )
    return dims


def run_fingerprint(spec: ModelSpec, dims: list[int], settings: EmbedSettings) -> dict:
    """Everything that changes a vector or where it is written: a rerun must match it."""
    return {
        "hf_id": spec.hf_id,
        "revision": settings.revision or spec.revision,
        "dim": dims[0],
        "dims": dims,
        "precision": settings.precision,
        "prompt": spec.document_prompt_label(),
        "encode_kwargs": spec.encode_kwargs,
        "normalized": True,
        "dtype": settings.dtype,
        "max_tokens": settings.max_tokens,
        "text_column": settings.text_column,
        "id_column": settings.id_column,
        "drop_text": settings.drop_text,
        "block_rows": settings.block_rows,
    }


def prepare_output(output_uri: str, settings: EmbedSettings, fingerprint: dict) -> bool:
    """Clear OUTPUT if asked, then claim it for this fingerprint; True when resuming.

    A dry run changes nothing: it only checks that the fingerprint would be accepted.
    """
    if settings.dry_run:
        if settings.overwrite:
            return False  # the real run would clear OUTPUT first
        return (
            commit.claim_output(output_uri, fingerprint, settings.storage_options, False)
            is not None
        )
    if settings.overwrite and storage.folder_has_files(output_uri, settings.storage_options):
        log.warning("--overwrite: clearing %s", settings.output)
        storage.clear_folder(output_uri, settings.storage_options)
    resuming = commit.claim_output(output_uri, fingerprint, settings.storage_options) is not None
    if resuming:
        log.info("OUTPUT holds a run with the same settings: resuming, finished blocks are kept")
    return resuming


def replica_spec_for(job: Job, plan: ReplicaPlan) -> ReplicaSpec:
    settings = job.settings
    return ReplicaSpec.for_model(
        job.spec,
        job.truncation.dim,
        revision=settings.revision,
        trust_remote_code=settings.trust_remote_code,
        max_tokens=settings.max_tokens,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        cpu_threads=plan.torch_threads,
        # Quantized codes are compared across the corpus: a text's codes must not depend on
        # its batch-mates, which float noise from changing batch shapes would break.
        fixed_shape_batches=settings.precision != "float32",
    )


def start_ray() -> bool:
    """Join the cluster at RAY_ADDRESS (Ray reads it), or start a local Ray.

    Returns whether this call started or joined Ray (and so should shut it down). num_cpus and
    num_gpus are not passed: ray.init raises when they are given while joining a cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, log_to_driver=True)
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
    """Run the pipeline and write the manifest; returns it with the exit code."""
    import ray

    settings = job.settings
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    started_here = start_ray()
    try:
        cpus, gpus, accelerators = cluster_resources()
        plan = plan_replicas(
            cpus, gpus, settings.replicas, settings.gpus_per_replica, settings.cpus_per_replica
        )
        log.info(
            "cluster: %g CPU, %g GPU%s -> %d replica(s), %g GPU and %d CPU each; %d input file(s)",
            cpus,
            gpus,
            f" ({accelerators})" if accelerators else "",
            plan.replicas,
            plan.gpus_per_replica,
            plan.cpus_per_replica,
            len(job.shards),
        )
        t_ray = time.perf_counter()
        columns = corpus.Columns(text=settings.text_column, id=settings.id_column)
        excluded = duplicates.scan_corpus(
            job.shards, columns, settings.block_rows, settings.storage_options
        )
        replica_spec = replica_spec_for(job, plan)
        calibrated = None
        if settings.precision in CALIBRATED:
            calibrated = calibration.load_or_calibrate(
                job.output, job.shards, columns, settings.calibration_rows, job.dims,
                replica_spec, plan, settings.storage_options,
            )  # fmt: skip
        committed = commit.index_committed(job.output, settings.storage_options)
        t_scan = time.perf_counter()
        pipeline_spec = PipelineSpec(
            output=job.output,
            columns=columns,
            block_rows=settings.block_rows,
            drop_text=settings.drop_text,
            storage_options=settings.storage_options,
            fingerprint=commit.fingerprint_id(job.fingerprint),
            dims=tuple(job.dims),
            precision=settings.precision,
            ranges=calibrated["ranges"] if calibrated else None,
        )
        items = work_items(job.shards, committed, excluded)
        counts, replicas = run_pipeline(items, pipeline_spec, replica_spec, plan)
        t_done = time.perf_counter()
    finally:
        if started_here:
            ray.shutdown()
    remove_leftovers(job, committed)
    collections = manifest.count_output_rows(job.output, settings.storage_options)
    rejections = corpus.read_rejections(job.output, settings.storage_options)
    record = manifest.build_manifest(
        spec=job.spec,
        truncation=job.truncation,
        plans=job.plans,
        calibration=calibrated,
        settings_public=settings.public_dict(),
        replicas=replicas,
        collections=collections,
        rejections=rejections,
        timings={
            "wall_seconds": round(time.perf_counter() - t0, 3),
            "ray_start_seconds": round(t_ray - t0, 3),
            # duplicate-id scan, int8 calibration, listing OUTPUT
            "preparation_seconds": round(t_scan - t_ray, 3),
            "pipeline_seconds": round(t_done - t_scan, 3),
        },
        started_at=started_at,
        counts=counts,
    )
    manifest.write_manifest(job.output, record, settings.storage_options)
    return record, exit_code_for(record, settings.max_rejected_fraction)


def remove_leftovers(job: Job, committed: dict[str, list[commit.CommittedFile]]) -> None:
    """Output and rejection files of input files that are gone: their rows are no input now."""
    options = job.settings.storage_options
    current = {shard.digest for shard in job.shards}
    for digest, files in committed.items():
        if digest not in current:
            for stale in files:
                log.info("removing output of a deleted input file: %s", stale.path)
                storage.remove(stale.path, options)
    keys = {f"{shard.key}.jsonl" for shard in job.shards}
    fs, rejected = storage.open_fs(storage.join(job.output, storage.REJECTED_DIR), options)
    if fs.exists(rejected):
        for path in fs.find(rejected):
            if path.rsplit("/", 1)[-1] not in keys:
                fs.rm(path)


def exit_code_for(record: dict, max_rejected_fraction: float) -> int:
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
        return EXIT_TOO_MANY_REJECTED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        resolved = load_settings(argv)
        if resolved.print_config:
            print(describe_config(resolved))
            return EXIT_OK
        job = prepare_job(resolved.settings)
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    if job.settings.dry_run:
        print(dry_run.describe(dry_run.plan(job, replica_spec_for(job, plan_replicas(2, 0)))))
        return EXIT_OK
    try:
        record, code = run_job(job)
    except PlacementError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    print(summary.render(record, storage.join(job.output, storage.MANIFEST_NAME)))
    return code
