"""The run's own progress line: rows done of the rows to do, the rate over the last interval,
and when the run should end.

The driver knows the total once the work is planned (jobs.pipeline.work), and every committed
block comes back to it as an envelope: Ray Data's own progress output (a block of lines every
few seconds, no total, an estimate often 0) is switched off instead (jobs.pipeline.quiet).
In a log (under `ray job submit`, or redirected to a file) it is one line every INTERVAL
seconds; on a terminal, one line redrawn in place.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

log = logging.getLogger("embed")

INTERVAL = 30.0  # seconds between two lines in a log
TERMINAL_INTERVAL = 1.0  # seconds between two redraws on a terminal


class Progress:
    """Counts committed rows and blocks against the plan's totals and reports them."""

    def __init__(
        self,
        rows: int,
        blocks: int,
        terminal: bool = False,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ):
        """`terminal`: redraw one line on `stream` (standard error) rather than log a line
        every INTERVAL seconds."""
        self.total_rows, self.total_blocks = rows, blocks
        self.rows = self.blocks = 0
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = terminal
        self.interval = interval or (TERMINAL_INTERVAL if self.terminal else INTERVAL)
        self.clock = clock
        self.started = self.last_time = clock()
        self.last_rows = 0
        # The rate over the last interval: the one before, until the next is measured.
        self.rate: float | None = None

    def add(self, result: dict[str, Any]) -> None:
        """One envelope back from the pipeline."""
        if result["block_id"]:
            self.blocks += 1
            self.rows += result["rows"]
        now = self.clock()
        if now - self.last_time >= self.interval:
            self.rate = (self.rows - self.last_rows) / (now - self.last_time)
            self.last_time, self.last_rows = now, self.rows
            self.report()

    def line(self) -> str:
        share = 100 * self.rows / self.total_rows if self.total_rows else 100.0
        parts = [
            f"{self.rows:,} of {self.total_rows:,} rows ({share:.0f}%)",
            f"{self.blocks:,} of {self.total_blocks:,} blocks",
        ]
        if self.rate is not None:
            parts.append(f"{self.rate:,.1f} rows/s")
            left = self.total_rows - self.rows
            parts.append(f"ETA {duration(left / self.rate)}" if self.rate > 0 else "ETA ?")
        return "progress: " + ", ".join(parts)

    def report(self) -> None:
        if self.terminal:
            self.stream.write("\r" + self.line().ljust(100)[:100])
            self.stream.flush()
        else:
            log.info("%s", self.line())

    def finish(self) -> None:
        elapsed = self.clock() - self.started
        self.rate = self.rows / elapsed if elapsed > 0 else None
        if self.terminal:
            self.report()
            self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("%s in %s", self.line().replace(", ETA 0 s", ""), duration(elapsed))

    def track(self, results: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The envelopes, counted on their way."""
        for result in results:
            self.add(result)
            yield result
        self.finish()


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
