"""The run's record: `OUTPUT/_manifest.json`, written last."""

from __future__ import annotations

import collections
import datetime as dt
from typing import Any

import pyarrow.parquet as pq

from jobs.pipeline import storage

MANIFEST_VERSION = 1


def count_output_rows(output_uri: str, storage_options: dict[str, Any] | None = None):
    """Rows and bytes per collection, from the Parquet footers actually in OUTPUT."""
    fs, root = storage.open_fs(output_uri, storage_options)
    per_collection: dict[str, dict[str, int]] = {}
    if not fs.exists(root):
        return per_collection
    for path in sorted(fs.find(root)):
        relpath = path[len(root.rstrip("/")) :].lstrip("/")
        first = relpath.split("/")[0]
        if not (first.startswith("collection=") and path.endswith(".parquet")):
            continue
        with fs.open(path, "rb") as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        entry = per_collection.setdefault(
            first.split("=", 1)[1], {"rows": 0, "bytes": 0, "files": 0}
        )
        entry["rows"] += rows
        entry["bytes"] += fs.size(path)
        entry["files"] += 1
    return per_collection


def summarize_replicas(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over replicas, and each replica's own rates."""
    for replica in replicas:
        encode = replica.get("encode_seconds") or 0.0
        replica["rows_per_second"] = round(replica["rows"] / encode, 2) if encode else 0.0
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


def build_manifest(
    *,
    spec,
    truncation,
    plans,
    calibration,
    settings_public: dict[str, Any],
    replicas: list[dict[str, Any]],
    collections: dict[str, dict[str, int]],
    rejections: list[dict[str, Any]],
    timings: dict[str, float],
    started_at: dt.datetime,
    counts: dict[str, int],
) -> dict[str, Any]:
    """Everything DESIGN.md promises in the manifest, in one flat, documented dict.

    `rows_embedded` counts rows encoded by this run; `rows_skipped` rows already done
    (finished blocks, and unchanged rows of edited blocks whose vectors were reused);
    `rows_in_output` what OUTPUT holds now, from the Parquet footers.
    """
    totals = summarize_replicas(replicas)
    rows_embedded = counts["embedded"]
    rows_in_output = sum(c["rows"] for c in collections.values())
    wall = timings.get("wall_seconds") or 0.0
    dtypes = sorted({r["dtype"] for r in replicas})
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": spec.name,
        "hf_id": spec.hf_id,
        "revision": settings_public.get("revision") or spec.revision or None,
        "model_source": "local" if spec.model_source()[1] else "hub",
        "native_dim": spec.native_dim,
        "dim": truncation.dim,
        "dims": [plan.dim for plan in plans],
        "matryoshka": spec.matryoshka,
        "matryoshka_dims": list(spec.matryoshka_dims),
        "truncated": any(plan.truncated for plan in plans),
        "truncation_verified": all(plan.verified for plan in plans),
        "warnings": [w for plan in plans for w in plan.warnings],
        "normalized": True,
        "precision": settings_public.get("precision", "float32"),
        "calibration": calibration,
        "prompt": spec.document_prompt_label() or None,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "devices": replicas,
        "replicas": len(replicas),
        "rows_embedded": rows_embedded,
        "rows_skipped": counts["skipped"] + counts["reused"],
        "rows_in_output": rows_in_output,
        "rows_rejected": len(rejections),
        "rejected_by_reason": rejected_by_reason(rejections),
        "rows_truncated_to_max_tokens": totals["rows_truncated_to_max_tokens"],
        "collections": collections,
        "tokens": totals["tokens"],
        "tokens_per_second": round(totals["tokens"] / wall, 2) if wall else 0.0,
        "rows_per_second": round(rows_embedded / wall, 2) if wall else 0.0,
        "files_written": counts["files"],
        "timings": timings | {"encode_seconds_all_replicas": totals["encode_seconds"]},
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": settings_public,
    }


def rejected_by_reason(rejections: list[dict[str, Any]]) -> dict[str, int]:
    """Counts per kind of reason (the part before the first colon)."""
    counts = collections.Counter(r["reason"].split(":")[0] for r in rejections)
    return dict(counts.most_common())


def write_manifest(output_uri: str, manifest: dict[str, Any], storage_options=None) -> str:
    uri = storage.join(output_uri, storage.MANIFEST_NAME)
    storage.write_json_atomic(uri, manifest, storage_options)
    return uri
