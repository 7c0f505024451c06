"""What a default run's log leaves out: other people's progress output and notices that say
nothing about this run. `--verbose` (EMBED_VERBOSE=1) brings them back.

- Ray Data's progress report (a block of lines every few seconds, with no total and an
  estimate that is often 0): off, the job's own progress line (jobs.pipeline.progress) says
  rows done of the total, the rate and an ETA. Ray Data's log file in the session folder
  keeps everything.
- Ray's notice, on every start of a local Ray, that it turned token authentication on (it
  stays on: the notice alone is left out; RAY_AUTH_MODE still decides).
- An error-level line from the driver's Ray core worker about every actor pool with restarts
  ("has constructor arguments in the object store and max_restarts > 0"): Ray Data passes its
  own arguments that way; it is harmless and comes from C++, so it is taken out of the
  process's standard error line by line (`dropped_lines`), everything else passing through.
- transformers' "Loading weights" bars: switched off in each replica (embedder.replica).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

# Lines of standard error that say nothing about this run (see the module docstring).
NOISE = (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* max_restarts > 0"),)
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"
# Ray Data's notice that its progress bars are off (because we switched them off).
RAY_DATA_NOTICES = ("Progress bars disabled", "Progress bars for operators disabled")


def not_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(AUTH_NOTICE)


def not_ray_data_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(RAY_DATA_NOTICES)


def before_ray_start() -> None:
    """A local Ray started without RAY_AUTH_MODE turns token authentication on (the secure
    default, kept) and says so on every run: that notice is left out. (A filter is added once
    however many runs one process makes.)"""
    logging.getLogger(AUTH_LOGGER).addFilter(not_auth_notice)


def quiet_ray_data() -> None:
    """Ray Data's progress output off, its INFO lines kept for its log file only."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        # The console; not the session's log file (Ray's SessionFileHandler is no stream).
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.WARNING)
            handler.addFilter(not_ray_data_notice)


@contextlib.contextmanager
def dropped_lines(patterns=NOISE) -> Iterator[None]:
    """Standard error (file descriptor 2, where C++ writes too) goes through a pipe; a thread
    passes every line on to the real standard error but those matching `patterns`. For the
    pipeline only: Ray's processes, started before, keep the real one."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(
        target=_forward, args=(read_end, real, patterns), name="stderr-filter", daemon=True
    )
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer gone: the thread reads to the end and stops
        forwarder.join(timeout=5)
        os.close(real)


def _forward(read_end: int, real: int, patterns) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not any(p.search(line) for p in patterns)]
            # A line not ended yet (a progress bar redrawn with \r) goes on as it is.
            if pending and b"\r" in pending:
                kept.append(pending)
                pending = b""
            if kept:
                _write(real, b"".join(kept))
    if pending:
        _write(real, pending)


def _write(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # standard error closed under us: nothing to tell
        os.write(fd, data)
