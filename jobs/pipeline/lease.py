"""One run per OUTPUT: `_lease.json` names the run that holds OUTPUT now.

Taken before anything is written to OUTPUT, renewed by a heartbeat while the run lives, removed
when it ends. A second run on a leased OUTPUT is refused (exit 2), naming the holder and how old
its heartbeat is. A lease is stale, and is taken over with a warning, when its heartbeat is
older than the timeout (a crashed run on another machine), or at once when its holder ran on
this machine and its process is gone (a crashed or killed run here).

Atomicity: the lease is created only if absent (a hard link on local disk, a conditional PUT
on S3), so of two runs started together exactly one gets it. A stale lease is never deleted
to make room: whoever takes it over first creates `_lease.takeover-<stale run id>.json`, also
only if absent, and only that run replaces the lease; the marker stays until it releases the
lease, so every other run that saw the same stale lease fails to create it and finds the new
holder. The window that remains: a run that read the stale lease, stalled for the whole of
the new holder's run, and resumes just after it released the lease and a third run took a
fresh one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jobs.pipeline.folders import LEASE, LEASE_TAKEOVER, OutputFolder

log = logging.getLogger("embed")


class LeaseHeld(RuntimeError):
    """Another live run holds OUTPUT."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def this_run() -> dict[str, Any]:
    started = now().isoformat()
    return {
        "run_id": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started,
        "heartbeat_at": started,
    }


def heartbeat_age(record: dict[str, Any]) -> float:
    """Seconds since the holder's last heartbeat."""
    try:
        return (now() - dt.datetime.fromisoformat(record["heartbeat_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return float("inf")  # not a lease this job wrote: treat as long dead


def process_gone(record: dict[str, Any]) -> bool:
    """The holder ran on this machine and its process no longer exists."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False
    return False


def why_stale(record: dict[str, Any], timeout: float) -> str:
    """Why a lease no longer holds, or "" while it does."""
    age = heartbeat_age(record)
    if age > timeout:
        return f"its last heartbeat was {age:.0f} s ago (timeout {timeout:g} s)"
    if process_gone(record):
        return f"its process {record.get('pid')} on this host is gone"
    return ""


def held_by(output: OutputFolder, holder: dict[str, Any]) -> LeaseHeld:
    return LeaseHeld(
        f"OUTPUT {output.uri!r} is held by {describe(holder)}, last heartbeat "
        f"{heartbeat_age(holder):.0f} s ago. Wait for it to finish, or remove "
        f"{LEASE} from OUTPUT if you know that run is gone."
    )


def check_free(output: OutputFolder, timeout: float) -> None:
    """LeaseHeld if a live run holds OUTPUT now: a run refuses before it starts anything
    (Lease.take decides for good later)."""
    holder = output.read_json(LEASE)
    if holder is not None and not why_stale(holder, timeout):
        raise held_by(output, holder)


def take_over(output: OutputFolder, holder: dict[str, Any], record: dict[str, Any]) -> str:
    """Replace a stale lease with this run's, if this run is the first to claim that stale
    lease; returns the takeover marker, or "" when another run got there first."""
    marker = f"{LEASE_TAKEOVER}{holder.get('run_id', 'unknown')}.json"
    if not output.create_json(marker, record):
        return ""
    if output.read_json(LEASE) != holder:  # replaced in the meantime: not ours to take
        output.remove(marker)
        return ""
    output.write_json(LEASE, record)
    return marker


def describe(record: dict[str, Any]) -> str:
    return (
        f"run {record.get('run_id', '?')} (host {record.get('host', '?')}, pid "
        f"{record.get('pid', '?')}, started {record.get('started_at', '?')})"
    )


@dataclass
class Lease:
    """The lease this run holds on OUTPUT; `with Lease.take(...)` releases it on exit."""

    output: OutputFolder
    record: dict[str, Any]
    timeout: float
    takeover_marker: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def take(cls, output: OutputFolder, timeout: float) -> Lease:
        """Hold OUTPUT, taking over a stale lease with a warning; LeaseHeld if a live run
        holds it."""
        record = this_run()
        # Several rounds: a lease can vanish between a failed create and the read, and while
        # another run takes over a stale lease, the stale one is still there for a moment.
        for _ in range(40):
            if output.create_json(LEASE, record):
                return cls(output, record, timeout)._start()
            holder = output.read_json(LEASE)
            if holder is None:
                continue
            stale = why_stale(holder, timeout)
            if not stale:
                raise held_by(output, holder)
            marker = take_over(output, holder, record)
            if marker:
                log.warning("took over the lease of %s: %s", describe(holder), stale)
                return cls(output, record, timeout, takeover_marker=marker)._start()
            time.sleep(0.05)  # another run is taking it over: look again
        raise LeaseHeld(f"OUTPUT {output.uri!r}: could not take the lease (too much contention)")

    def _start(self) -> Lease:
        # A few beats per timeout, so one late write never makes a live run look dead.
        interval = max(0.05, self.timeout / 10)
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), name="lease-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as err:  # a missed beat is not fatal; the next one may work
                log.warning("lease heartbeat failed: %s", err)

    def renew(self) -> None:
        """Write a new heartbeat, if the lease is still ours."""
        current = self.output.read_json(LEASE)
        if current is None or current.get("run_id") != self.record["run_id"]:
            log.error("this run no longer holds OUTPUT's lease (now: %s)", current)
            return
        self.record["heartbeat_at"] = now().isoformat()
        self.output.write_json(LEASE, self.record)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours (then the takeover
        marker, which kept late contenders for the stale lease out until now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.output.read_json(LEASE)
        if current is not None and current.get("run_id") == self.record["run_id"]:
            self.output.remove(LEASE)
        if self.takeover_marker:
            self.output.remove(self.takeover_marker)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
