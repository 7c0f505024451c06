"""The table printed at the end of every run; every figure in it comes from the manifest."""

from __future__ import annotations

from typing import Any


def render(record: dict[str, Any], manifest_uri: str) -> str:
    timings = record["timings"]
    encoding = max((r["encode_seconds"] for r in record["per_replica"]), default=0.0)
    start_up = timings["ray_start_seconds"] + timings["preparation_seconds"]
    other = max(0.0, timings["wall_seconds"] - start_up - encoding)
    lines = [
        "",
        f"Run summary: {record['model']} at dims {record['dims']}, {record['dtype']}, "
        f"{record['replicas']} replica(s)",
        f"  rows embedded    {record['rows_embedded']:>10}",
        f"  rows skipped     {record['rows_skipped']:>10}   (already in OUTPUT)",
        f"  rows rejected    {record['rows_rejected']:>10}   (OUTPUT/_rejected/)",
        f"  rows in OUTPUT   {record['rows_in_output']:>10}",
        f"  files set aside  {record['files_rejected']:>10}   (undecodable: rows unknown)",
        f"  files not read   {len(record['files_unread']):>10}   (storage failed: rerun)",
        f"  wall time        {timings['wall_seconds']:>9.1f}s = start-up {start_up:.1f}s"
        f" + encoding {encoding:.1f}s + model load, reading, writing, rest {other:.1f}s",
        "",
        "  replica   device  dtype  rows      rows/s   tokens/s  encoding share  padding  peak MB",
    ]
    for replica in record["per_replica"]:
        device = replica["device"] + (f" {replica['gpu_name']}" if replica["gpu_name"] else "")
        lines.append(
            f"  {replica['replica_id'][:8]}  {device:<6}  {replica['dtype']:<5}  "
            f"{replica['rows']:<8}  {replica['rows_per_second']:>7.1f}  "
            f"{replica['tokens_per_second']:>9.0f}  {replica['encode_share'] * 100:>13.0f}%  "
            f"{replica['padding_share'] * 100:>6.0f}%  "
            f"{replica.get('peak_memory_bytes', 0) / 2**20:>7.0f}"
        )
    lines += ["", "  collection            rows     files        MB"]
    for name, entry in sorted(record["collections"].items()):
        lines.append(
            f"  {name:<18}  {entry['rows']:>6}  {entry['files']:>8}  {entry['bytes'] / 1e6:>8.2f}"
        )
    lines += ["", f"Manifest: {manifest_uri}"]
    return "\n".join(lines)
