"""`python -m benchmarks.read_memory` (`make bench-read-memory`): the peak memory of one read
task, and of the duplicate-id scan, on one large JSON Lines file.

A multi-GB shard is a common corpus layout. Each phase runs in a fresh process, doing exactly
what its Ray task does for that one file, and prints that process's peak resident set (VmHWM):

  read   jobs.pipeline.stages.read_stage over the file's work item, every envelope consumed as
         Ray Data would hand it on (packed rows of each block, the rejection list written).
  scan   jobs.pipeline.duplicates.scan_group over the file: every valid row's id hash.

The file: about --size-mb of rows of ~1 KB (an id, a text of prose-like words, a page number
and a title), written once and kept under --workdir. A process that only imports the job's
modules is measured too (`imports`), so the rest is what reading costs. Running the same script
with PYTHONPATH at an older checkout measures that checkout's code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.throughput import machine

WORDS = (
    "index vector chunk query search model token batch replica block commit parquet storage "
    "cluster node driver worker embed rerun manifest shard lease reader writer corpus"
).split()
TEXT_CHARS = 900


def write_corpus(root: Path, size_mb: int) -> Path:
    """INPUT/docs/big.jsonl of about size_mb megabytes (kept: written once per workdir)."""
    path = root / "input" / "docs" / "big.jsonl"
    if path.exists() and path.stat().st_size >= size_mb * 2**20 * 0.95:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    target = size_mb * 2**20
    written = 0
    with path.open("w", encoding="utf-8") as handle:
        row = 0
        while written < target:
            words = [WORDS[(row * 7 + i * 13) % len(WORDS)] for i in range(TEXT_CHARS // 6)]
            record = {
                "id": f"big-{row}",
                "text": f"chunk {row}: " + " ".join(words),
                "page": row % 500,
                "title": f"section {row // 100}",
            }
            line = json.dumps(record) + "\n"
            handle.write(line)
            written += len(line)
            row += 1
    return path


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def phase(name: str, workdir: Path) -> dict:
    import pyarrow as pa

    from jobs.pipeline.folders import InputFolder, OutputFolder
    from jobs.pipeline.packing import plan_blocks
    from jobs.pipeline.reading import Columns
    from jobs.pipeline.stages import StageSpec, read_stage
    from jobs.pipeline.work import ToDo, WorkItem

    folder = InputFolder(str(workdir / "input"))
    (input_file,) = folder.list_files()
    started = time.perf_counter()
    blocks = rows = 0
    if name == "read":
        spec = StageSpec(
            input=folder,
            output=OutputFolder(tempfile.mkdtemp(dir=workdir)),
            columns=Columns(),
            block_rows=2048,
            drop_text=False,
            fingerprint_id="0" * 16,
            dims=(384,),
        )
        # The plan a run makes from the duplicate scan's row count (here: the file's lines).
        with open(folder.path(input_file.relpath), "rb") as handle:
            lines = sum(1 for _ in handle)
        planned = plan_blocks([input_file], {input_file.relpath: lines}, spec.block_rows)
        item = WorkItem(tuple(ToDo(block, "") for block in planned), {})
        for envelope in read_stage(pa.table({"work": [item.as_row()["work"]]}), spec):
            blocks += int(bool(envelope["block_id"][0].as_py()))
            rows += envelope["rows"][0].as_py()
    elif name == "scan":
        from jobs.pipeline.duplicates import scan_group

        (unread, _), *parts = scan_group(folder, [(0, input_file)], Columns(), 2048, 4)
        rows = sum(len(p) for p in parts)
    return {
        "phase": name,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "blocks": blocks,
    }


def run_phase(name: str, workdir: Path) -> dict:
    """One phase in a fresh interpreter, so that its peak is its own."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.read_memory",
            "--phase",
            name,
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_memory", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the JSONL file")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "read-mem")
    parser.add_argument("--phase", choices=("imports", "read", "scan"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        if args.phase == "imports":
            import jobs.pipeline.stages  # noqa: F401

            print(json.dumps({"phase": "imports", "peak_rss_mib": round(peak_rss_mib(), 1)}))
        else:
            print(json.dumps(phase(args.phase, args.workdir)))
        return 0
    path = write_corpus(args.workdir, args.size_mb)
    size_mib = path.stat().st_size / 2**20
    print(machine())
    print(f"file: {path} ({size_mib:.0f} MiB)")
    for name in ("imports", "read", "scan"):
        figures = run_phase(name, args.workdir)
        extra = "" if name == "imports" else f", {figures['rows']:,} rows, {figures['seconds']} s"
        print(f"{name:>8}: peak RSS {figures['peak_rss_mib']:,.0f} MiB{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
