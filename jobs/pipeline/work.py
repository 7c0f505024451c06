"""The driver's plan of a run: every block of the corpus, either done already (its envelope
made here, from its files' footers) or work for the read stage.

    plan_work   the blocks (jobs.pipeline.packing) from the duplicate scan's row counts; the
                footers of OUTPUT's block files (one small read each); per block: done, when
                its files carry this fingerprint and its signature; unread, when a file of it
                could not be read; else a work item, with the earlier files whose vectors its
                rows may reuse (any block file of this fingerprint that held rows of its
                segments, so a repacked file reuses its vectors too) and the content hash of
                its files, if complete (the read stage finds it done when that is unchanged)

Nothing here reads an input file: deciding that a block is done costs a listing of INPUT and
OUTPUT and a footer per output file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.pipeline import commit
from jobs.pipeline.duplicates import CorpusScan, excluded_rows
from jobs.pipeline.envelopes import envelope
from jobs.pipeline.folders import CommittedFile, OutputFolder
from jobs.pipeline.packing import PlannedBlock, plan_blocks, signature
from jobs.pipeline.units import BlockId, InputFile, Segment


@dataclass(frozen=True)
class ToDo:
    """A block to read, embed and write: its plan, the signature its files will carry, and
    the earlier block files whose vectors its rows may reuse."""

    planned: PlannedBlock
    signature: str
    earlier: tuple[CommittedFile, ...] = ()
    # The content hash of the block's files in OUTPUT, when they are all there and current
    # but for the state of the input: a block read with this content is done all the same.
    content_hash: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.planned.id),
            "signature": self.signature,
            "content_hash": self.content_hash,
            "segments": [[asdict(s.file), s.first_row, s.end_row] for s in self.planned.segments],
            "earlier": [[str(c.block_id), c.collection, c.relpath] for c in self.earlier],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToDo:
        segments = tuple(
            Segment(InputFile(**file), first, end) for file, first, end in data["segments"]
        )
        earlier = tuple(
            CommittedFile(BlockId.parse(block_id), collection, relpath)
            for block_id, collection, relpath in data["earlier"]
        )
        planned = PlannedBlock(BlockId.parse(data["id"]), segments)
        return cls(planned, data["signature"], earlier, data["content_hash"])


@dataclass(frozen=True)
class WorkItem:
    """What one read task does: the blocks of one big file, or one pack of small files (each
    input file is read by one task only), and the rows of its files set aside as duplicates."""

    blocks: tuple[ToDo, ...]
    excluded: dict[str, dict[int, str]]

    def as_row(self) -> dict[str, str]:
        excluded = {
            f: {str(r): why for r, why in rows.items()} for f, rows in self.excluded.items()
        }
        work = {"blocks": [b.as_json() for b in self.blocks], "excluded": excluded}
        return {"work": json.dumps(work, ensure_ascii=False)}

    @classmethod
    def parse(cls, text: str) -> WorkItem:
        work = json.loads(text)
        excluded = {f: excluded_rows(rows) for f, rows in work["excluded"].items()}
        return cls(tuple(ToDo.from_json(b) for b in work["blocks"]), excluded)


@dataclass
class Work:
    """The plan of a run: envelopes of what needs no read task, and the work items."""

    done: list[dict[str, Any]] = field(default_factory=list)
    items: list[WorkItem] = field(default_factory=list)
    blocks: int = 0  # every block planned
    rows_to_do: int = 0  # valid rows of the blocks to do

    @property
    def blocks_to_do(self) -> int:
        return sum(len(item.blocks) for item in self.items)


def plan_work(
    input_files: list[InputFile],
    scan: CorpusScan,
    output: OutputFolder,
    fingerprint_id: str,
    block_rows: int,
    listing: dict[str, int] | None = None,
) -> Work:
    """Every block of the corpus: done, unread or to do (module docstring). `listing` is a
    files() of OUTPUT the caller already has."""
    committed = output.committed_files(listing)
    relpaths = [c.relpath for files in committed.values() for c in files]
    records = commit.read_records(output, relpaths)
    earlier = EarlierFiles(committed, records, fingerprint_id)
    # A file the scan could not read keeps the size its blocks had, so that the plan around it
    # stays as it was (its blocks are kept for a rerun).
    rows = earlier.file_rows() | scan.rows
    work = Work()
    to_do: list[ToDo] = []
    planned_files: set[str] = set()
    for planned in plan_blocks(input_files, rows, block_rows):
        work.blocks += 1
        planned_files.update(s.file.relpath for s in planned.segments)
        files = committed.get(planned.id, [])
        unread = [s.file.relpath for s in planned.segments if s.file.relpath in scan.unread]
        if unread:
            keep = earlier.of(planned)
            work.done.append(
                unread_envelope(planned, unread[0], scan.unread[unread[0]], keep, output)
            )
            continue
        block_signature = signature(planned, scan.excluded)
        made = commit.committed_content(files, records, fingerprint_id)
        if made is not None and made[0] == block_signature:
            work.done.append(done_envelope(planned, block_signature, files, records))
            continue
        content = made[1] if made is not None else ""
        to_do.append(ToDo(planned, block_signature, tuple(earlier.of(planned)), content))
        work.rows_to_do += sum(
            scan.valid_rows(s.file.relpath, s.first_row, s.end_row, block_rows)
            for s in planned.segments
        )
    for relpath, error in scan.unread.items():
        if relpath not in planned_files:  # never read, by this run or any before
            work.done.append(envelope(file=relpath, unread=error))
    work.items = work_items(to_do, scan)
    return work


def work_items(to_do: list[ToDo], scan: CorpusScan) -> list[WorkItem]:
    """The blocks to do as read tasks: a big file's blocks together (one pass over the file),
    each pack alone."""
    items: list[list[ToDo]] = []
    for block in to_do:
        files = {s.file.relpath for s in block.planned.segments}
        previous = items[-1][-1].planned.segments if items else ()
        if len(files) == 1 and len(previous) == 1 and previous[0].file.relpath in files:
            items[-1].append(block)
        else:
            items.append([block])
    return [
        WorkItem(
            tuple(blocks),
            {
                relpath: excluded_rows(scan.excluded[relpath])
                for relpath in {s.file.relpath for b in blocks for s in b.planned.segments}
                if relpath in scan.excluded
            },
        )
        for blocks in items
    ]


class EarlierFiles:
    """OUTPUT's block files of this fingerprint by the input rows they hold (their footers'
    segments): where a redone block finds vectors to reuse."""

    def __init__(
        self,
        committed: dict[BlockId, list[CommittedFile]],
        records: dict[str, commit.FileRecord | None],
        fingerprint_id: str,
    ):
        self.by_input: dict[str, list[tuple[int, int, CommittedFile]]] = {}
        for files in committed.values():
            for entry in files:
                record = records.get(entry.relpath)
                if record is None or record.fingerprint_id != fingerprint_id:
                    continue
                for relpath, first, end in record.inputs:
                    self.by_input.setdefault(relpath, []).append((first, end, entry))

    def of(self, planned: PlannedBlock) -> list[CommittedFile]:
        """The earlier files that held rows of the block's segments."""
        found: dict[str, CommittedFile] = {}
        for segment in planned.segments:
            for first, end, entry in self.by_input.get(segment.file.relpath, []):
                if segment.overlaps(first, end):
                    found[entry.relpath] = entry
        return sorted(found.values(), key=lambda c: c.relpath)

    def file_rows(self) -> dict[str, int]:
        """Each input file's rows as the earlier files' segments give them."""
        return {relpath: max(end for _, end, _ in held) for relpath, held in self.by_input.items()}


def done_envelope(
    planned: PlannedBlock,
    block_signature: str,
    files: list[CommittedFile],
    records: dict[str, commit.FileRecord | None],
) -> dict[str, Any]:
    """A block whose files are all there and current: its figures, from their footers."""
    found = [records[c.relpath] for c in files]
    report = found[0].report
    rows = sum(record.rows for record in found)
    return envelope(
        block_id=str(planned.id),
        signature=block_signature,
        inputs=json.dumps(planned.inputs()),
        rows=rows,
        skipped=rows,
        files=[{"relpath": c.relpath, "rows": r.rows} for c, r in zip(files, found)],
        rejected=report["rejected"],
        rejected_by_kind=list(report["rejected_by_kind"].items()),
        rejections_file=OutputFolder.rejections_file(planned.id) if report["rejected"] else "",
        cuts=report["cuts"],
    )


def unread_envelope(
    planned: PlannedBlock,
    relpath: str,
    error: str,
    keep: Iterable[CommittedFile],
    output: OutputFolder,
) -> dict[str, Any]:
    """A block a storage failure kept from being read: nothing about it is decided, so what
    OUTPUT holds of its rows stays as it is (the earlier files that hold them, its rejection
    list) for a rerun to pick up."""
    kept = [{"relpath": c.relpath, "rows": output.row_count(c.relpath) or 0} for c in keep]
    return envelope(
        block_id=str(planned.id),
        files=kept,
        rejections_file=OutputFolder.rejections_file(planned.id),
        file=relpath,
        unread=error,
    )
