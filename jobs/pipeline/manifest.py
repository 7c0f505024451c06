"""The run's record: `OUTPUT/_manifest.json`, written last.

Version 3 (this code): `weights`, the weights the run used (the hub commit where there is one,
a `sha256:` digest of the files that load, how many), also in the fingerprint with the
precision the replicas resolved (`dtype`) and the `backend`. Version 2: `per_replica` lists each
replica with its device and figures (version 1 called that list `devices`); `devices` is the
distinct devices the replicas ran on, e.g. ["cpu"] or ["cuda (NVIDIA H200)"]; `replicas` the
count; `registry_entry` and `fingerprint` (what jobs.query.QueryEncoder rebuilds the model
from), `query_prompt`, `files_rejected`, `rejected_files`, `files_unread`, per-replica peak
memory. Figures come from what the stages reported per block, not from re-reading OUTPUT.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobs.pipeline.commit import fingerprint_id
from jobs.pipeline.folders import MANIFEST, OutputFolder
from jobs.pipeline.units import InputFile

MANIFEST_VERSION = 3


@dataclass
class Tally:
    """What every envelope of a run reported, added up on the driver (per block, never per
    row)."""

    rows: int = 0
    skipped: int = 0
    embedded: int = 0
    reused: int = 0
    files_written: int = 0
    # Rows each replica embedded in blocks that were committed (a block a lost replica had
    # not written counts for the replica that redid it).
    embedded_by_replica: Counter = field(default_factory=Counter)
    rejected: int = 0
    rejected_by_kind: Counter = field(default_factory=Counter)
    files: dict[str, int] = field(default_factory=dict)  # block file -> rows, written or kept
    rejection_files: set[str] = field(default_factory=set)
    # Input files whose content could not be decoded (whole, or from a row on): rows unknown.
    cut_files: list[dict[str, Any]] = field(default_factory=list)
    # Input files a storage failure kept from being read: file -> error.
    unread: dict[str, str] = field(default_factory=dict)

    blocks: int = 0

    @classmethod
    def of(cls, results: Iterable[dict[str, Any]]) -> Tally:
        tally = cls()
        for result in results:
            tally.add(result)
        return tally

    def add(self, result: dict[str, Any]) -> None:
        """One envelope's figures (the driver keeps these, never the envelope)."""
        self.blocks += bool(result["block_id"])
        self.rows += result["rows"]
        self.skipped += result["skipped"]
        self.embedded += result["embedded"]
        self.reused += result["reused"]
        self.rejected += result["rejected"]
        self.rejected_by_kind.update(dict(result["rejected_by_kind"]))
        for entry in result["files"]:
            self.files[entry["relpath"]] = entry["rows"]
        if result["written"]:
            self.files_written += len(result["files"])
            self.embedded_by_replica[result["replica_id"]] += result["embedded"]
        if result["rejections_file"]:
            self.rejection_files.add(result["rejections_file"])
        self.cut_files += result["cuts"]
        if result["unread"]:
            self.unread[result["file"]] = result["unread"]

    def current_files(self) -> set[str]:
        """Every file in OUTPUT that this run wrote or found done: nothing else is current."""
        return set(self.files) | self.rejection_files


def collection_figures(files: dict[str, int], sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Rows, bytes and files per collection, from the block files' rows and OUTPUT's listing."""
    figures: dict[str, dict[str, int]] = {}
    for relpath, rows in sorted(files.items()):
        committed = OutputFolder.parse_block_file(relpath)
        entry = figures.setdefault(committed.collection, {"rows": 0, "bytes": 0, "files": 0})
        entry["rows"] += rows
        entry["bytes"] += sizes.get(relpath, 0)
        entry["files"] += 1
    return figures


def summarize_replicas(replicas: list[dict[str, Any]], tally: Tally) -> dict[str, Any]:
    """Totals over replicas, and each replica's own figures (added to each entry): `rows`
    that it embedded and that were committed (they add up to rows_embedded), `rows_encoded`
    (everything it encoded, work lost with it included), rates over its encoding time."""
    for replica in replicas:
        replica["rows_encoded"] = replica.pop("rows")
        replica["rows"] = tally.embedded_by_replica.get(replica["replica_id"], 0)
        encode = replica.get("encode_seconds") or 0.0
        rate = replica["rows_encoded"] / encode if encode else 0.0
        replica["rows_per_second"] = round(rate, 2)
        replica["tokens_per_second"] = round(replica["tokens"] / encode, 2) if encode else 0.0
        alive = replica.get("alive_seconds") or 0.0
        replica["encode_share"] = round(encode / alive, 3) if alive else 0.0
        padded = replica.get("padded_tokens") or 0
        replica["padding_share"] = round(1 - replica["tokens"] / padded, 3) if padded else 0.0
    return {
        "tokens": sum(r["tokens"] for r in replicas),
        "rows_truncated_to_max_tokens": sum(r["truncated_texts"] for r in replicas),
        "encode_seconds": round(sum(r["encode_seconds"] for r in replicas), 3),
    }


def device_names(replicas: list[dict[str, Any]]) -> list[str]:
    """The distinct devices the replicas ran on: "cpu", or "cuda (<GPU name>)"."""
    return sorted(
        {f"cuda ({r['gpu_name']})" if r.get("gpu_name") else r["device"] for r in replicas}
    )


def build_manifest(
    *,
    model_spec,
    truncations,
    calibration,
    fingerprint: dict[str, Any],
    quantized_model: dict[str, Any] | None = None,
    weights: dict[str, Any],
    settings_public: dict[str, Any],
    replicas: list[dict[str, Any]],
    tally: Tally,
    collections: dict[str, dict[str, int]],
    timings: dict[str, float],
    started_at: dt.datetime,
    states: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything DESIGN.md promises in the manifest, in one flat, documented dict.

    `rows_embedded` counts rows encoded by this run; `rows_skipped` rows already done
    (finished blocks, and unchanged rows of edited blocks whose vectors were reused);
    `rows_in_output` what OUTPUT holds now.
    """
    totals = summarize_replicas(replicas, tally)
    widest = truncations[0]
    wall = timings.get("wall_seconds") or 0.0
    # What the replicas ran in (the fingerprint's, when no replica ran: nothing to embed).
    dtypes = sorted({r["dtype"] for r in replicas} or {fingerprint["dtype"]})
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": model_spec.name,
        "hf_id": model_spec.hf_id,
        "revision": settings_public.get("revision") or model_spec.revision or None,
        "weights": weights,
        "model_source": "local" if model_spec.model_source()[1] else "hub",
        "native_dim": model_spec.native_dim,
        "dim": widest.dim,
        "dims": [t.dim for t in truncations],
        "matryoshka": model_spec.matryoshka,
        "matryoshka_dims": list(model_spec.matryoshka_dims),
        "truncated": any(t.truncated for t in truncations),
        "truncation_verified": all(t.verified for t in truncations),
        "warnings": [w for t in truncations for w in t.warnings],
        "normalized": True,
        "precision": settings_public.get("precision", "float32"),
        "calibration": calibration,
        # --quantize int8: the int8 model in OUTPUT the replicas ran, and queries must run.
        "backend": model_spec.backend,
        "quantized_model": quantized_model,
        "prompt": model_spec.document_prompt_label() or None,
        "query_prompt": model_spec.query_prompt_label() or None,
        # What a query encoder needs to embed queries as these documents were
        # (jobs.query.QueryEncoder): the model's registry entry and the run's fingerprint.
        "registry_entry": model_spec.model_dump(mode="json"),
        "fingerprint": fingerprint,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "devices": device_names(replicas),
        "replicas": len(replicas),
        "per_replica": replicas,
        "rows_embedded": tally.embedded,
        "rows_skipped": tally.skipped + tally.reused,
        "rows_in_output": sum(c["rows"] for c in collections.values()),
        "rows_rejected": tally.rejected,
        "rejected_by_reason": dict(tally.rejected_by_kind.most_common()),
        "files_rejected": len(tally.cut_files),
        "rejected_files": sorted(tally.cut_files, key=lambda f: f["file"]),
        "files_unread": [{"file": f, "error": e} for f, e in sorted(tally.unread.items())],
        "rows_truncated_to_max_tokens": totals["rows_truncated_to_max_tokens"],
        "collections": collections,
        "tokens": totals["tokens"],
        "tokens_per_second": round(totals["tokens"] / wall, 2) if wall else 0.0,
        "rows_per_second": round(tally.embedded / wall, 2) if wall else 0.0,
        "files_written": tally.files_written,
        "timings": timings | {"encode_seconds_all_replicas": totals["encode_seconds"]},
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": settings_public,
        # What INPUT and OUTPUT were when this run ended, and whether it finished every block:
        # a rerun that finds both unchanged has nothing to do (unchanged_since).
        **(states or {}),
        "complete": not tally.unread,
    }


def input_state(input_files: list[InputFile]) -> str:
    """A hash of INPUT as its listing shows it: every corpus file's path, size and version."""
    canonical = json.dumps([f.state for f in input_files], separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def output_state(output: OutputFolder, listing: dict[str, int]) -> str:
    """A hash of the files the job writes per block (block files, rejection lists) in OUTPUT's
    listing, with their sizes."""
    mine = sorted((r, size) for r, size in listing.items() if output.is_job_file(r))
    canonical = json.dumps(mine, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def states(input_files: list[InputFile], output: OutputFolder, listing: dict[str, int]) -> dict:
    return {
        "input_state": input_state(input_files),
        "output_state": output_state(output, listing),
    }


def unchanged_since(
    output: OutputFolder,
    fingerprint: dict[str, Any],
    input_files: list[InputFile],
    listing: dict[str, int],
) -> dict[str, Any] | None:
    """The last run's manifest, when that run finished every block with these settings and
    neither INPUT nor OUTPUT changed since (by their listings): then there is nothing to do,
    and a rerun costs two listings and this one read."""
    try:
        previous = output.read_json(MANIFEST)
    except ValueError:
        return (
            None  # not JSON: a run that stopped while writing it, on storage without atomic writes
        )
    if not isinstance(previous, dict) or previous.get("complete") is not True:
        return None
    unchanged = (
        fingerprint_id(previous.get("fingerprint") or {}) == fingerprint_id(fingerprint)
        and previous.get("input_state") == input_state(input_files)
        and previous.get("output_state") == output_state(output, listing)
    )
    return previous if unchanged else None


def rerun_of(
    previous: dict[str, Any],
    *,
    settings_public: dict[str, Any],
    timings: dict[str, float],
    started_at: dt.datetime,
) -> dict[str, Any]:
    """The manifest of a run that found nothing to do: the last run's, with this run's
    figures (nothing embedded, every row skipped, no replica started)."""
    return previous | {
        "devices": [],
        "replicas": 0,
        "per_replica": [],
        "rows_embedded": 0,
        "rows_skipped": previous["rows_in_output"],
        "rows_truncated_to_max_tokens": 0,
        "tokens": 0,
        "tokens_per_second": 0.0,
        "rows_per_second": 0.0,
        "files_written": 0,
        "timings": timings | {"encode_seconds_all_replicas": 0.0},
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": settings_public,
    }


def write_manifest(output: OutputFolder, manifest: dict[str, Any]) -> None:
    output.write_json(MANIFEST, manifest)
