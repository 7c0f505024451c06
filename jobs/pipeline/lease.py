"""One run per OUTPUT: `_lease.json` names the run that holds OUTPUT, and only that run writes.

Taking it. The lease is created only if absent. One that is there belongs to a live run, and
the run is refused (exit 2, naming it), unless this run can tell that its holder is gone:

- The holder ran on this machine: the same boot id and the same PID namespace (a hostname is
  not enough: containers share one with `--network host` or `hostNetwork`). It is gone when
  its pid no longer exists or now belongs to a process started at another time: taken over
  at once, so a rerun after a kill just works.
- Anywhere else: this run watches the lease for `--lease-timeout` seconds on its own clock. A
  live holder renews it every tenth of that, so a lease seen unchanged for the whole timeout
  is stale and taken over. Two machines' clocks are never compared.

Every change of the lease is a compare-and-swap on the version that was read
(`OutputFolder.swap_json`: under an exclusive lock on local disk, If-Match on the ETag on
S3). Of several runs that saw one stale lease exactly one replaces it, and a run whose lease
was replaced can never write it back.

Holding it. A heartbeat renews the lease by a swap on the version this run last wrote. When
the swap finds another run's lease, or no renewal has succeeded for half the timeout (a taker
waits a whole one), the run has lost OUTPUT: `on_lost` stops the job at once. Besides, every
commit is preceded by a check that the lease still names this run (`check_holder`, in the
workers that write block files and rejection lists; `Lease.check` on the driver before the
calibration, the stale sweep and the manifest). What remains is a run frozen (suspended, a VM
paused) for longer than the timeout between such a check and the write that follows it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.pipeline.folders import LEASE, OutputFolder, storage_errors

log = logging.getLogger("embed")

# How often a contender looks at a lease it is watching, at most.
MAX_WATCH_POLL_SECONDS = 2.0


class LeaseHeld(RuntimeError):
    """Another live run holds OUTPUT."""


class LeaseLost(RuntimeError):
    """This run no longer holds OUTPUT's lease: it must not write another byte there."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def read_first_line(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.readline().strip()
    except OSError:
        return ""


def this_machine() -> dict[str, str]:
    """What names this machine and its process table: the kernel's boot id and this
    process's PID namespace ("" where the system does not say)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return {
        "boot_id": read_first_line("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": namespace,
    }


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks after boot), or None when there is no such
    process. A pid that is reused belongs to a process that started at another time."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    return int(stat.rsplit(")", 1)[1].split()[19])


def this_run() -> dict[str, Any]:
    started = now()
    return {
        "run_id": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": process_start(os.getpid()),
        **this_machine(),
        "started_at": started,
        "heartbeat_at": started,
        "beats": 0,
    }


def holder_is_here(record: dict[str, Any]) -> bool:
    """Whether the holder's pid means a process of this machine's process table."""
    machine = this_machine()
    return all(machine[key] and record.get(key) == machine[key] for key in machine)


def why_gone(record: dict[str, Any]) -> str:
    """Why a holder on this machine is gone, or "" while its process lives."""
    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return "it names no process"
    started = process_start(pid)
    if started is None:
        return f"its process {pid} on this machine is gone"
    if started != record.get("process_start"):
        return f"its pid {pid} now belongs to another process"
    return ""


def heartbeat_age(record: dict[str, Any]) -> float:
    """Seconds since the holder's last heartbeat by its own clock: shown, never relied on."""
    try:
        written = dt.datetime.fromisoformat(record["heartbeat_at"])
        return (dt.datetime.now(dt.UTC) - written).total_seconds()
    except (KeyError, TypeError, ValueError):
        return float("inf")


def describe(record: dict[str, Any]) -> str:
    return (
        f"run {record.get('run_id', '?')} (host {record.get('host', '?')}, pid "
        f"{record.get('pid', '?')}, started {record.get('started_at', '?')})"
    )


def held_by(output: OutputFolder, holder: dict[str, Any]) -> LeaseHeld:
    return LeaseHeld(
        f"OUTPUT {output.uri!r} is held by {describe(holder)}, last heartbeat "
        f"{heartbeat_age(holder):.0f} s ago. Wait for it to finish, or remove "
        f"{LEASE} from OUTPUT if you know that run is gone."
    )


def check_free(output: OutputFolder) -> None:
    """LeaseHeld when a live run on this machine holds OUTPUT: a run refuses at once, before
    it starts anything (a holder elsewhere needs watching: Lease.take decides)."""
    holder = output.read_json(LEASE)
    if holder is not None and holder_is_here(holder) and not why_gone(holder):
        raise held_by(output, holder)


def watch(output: OutputFolder, holder: dict[str, Any], version: str, timeout: float) -> str:
    """Watch a lease held from another machine for `timeout` seconds on this machine's clock:
    "" as soon as it changes (its holder renewed it, released it, or lost it), else why it
    is stale."""
    log.warning(
        "OUTPUT is held by %s from another machine: watching its heartbeat for up to %g s to "
        "tell whether it is alive (a live run renews it every %g s)",
        describe(holder),
        timeout,
        timeout / 10,
    )
    poll = min(MAX_WATCH_POLL_SECONDS, max(0.02, timeout / 20))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll, left))
        if output.read_versioned(LEASE)[1] != version:
            return ""
    return f"it did not change for {timeout:g} s on this machine's clock"


@dataclass
class Lease:
    """The lease this run holds on OUTPUT; `with Lease.take(...)` releases it on exit."""

    output: OutputFolder
    record: dict[str, Any]
    version: str
    timeout: float
    # Called from the heartbeat thread when the lease is lost: the job stops there and then.
    on_lost: Callable[[], None] | None = None
    lost: LeaseLost | None = None
    renewed_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @classmethod
    def take(
        cls, output: OutputFolder, timeout: float, on_lost: Callable[[], None] | None = None
    ) -> Lease:
        """Hold OUTPUT: create the lease, or take over a stale one with a warning; LeaseHeld
        if a live run holds it."""
        record = this_run()
        # Several rounds: a lease can vanish between a failed create and the read, and runs
        # that contend for one stale lease see the winner's lease only after their swap fails.
        for _ in range(40):
            version = output.swap_json(LEASE, record, expected=None)
            if version is not None:
                return cls(output, record, version, timeout, on_lost)._start()
            holder, seen = output.read_versioned(LEASE)
            if holder is None:
                continue
            if holder_is_here(holder):
                stale = why_gone(holder)
                if not stale:
                    raise held_by(output, holder)
            else:
                stale = watch(output, holder, seen, timeout)
                if not stale:
                    current, _ = output.read_versioned(LEASE)
                    if current is not None and current.get("run_id") == holder.get("run_id"):
                        raise held_by(output, current)
                    continue  # released or taken by another run meanwhile: look again
            version = output.swap_json(LEASE, record, expected=seen)
            if version is not None:
                log.warning("took over the lease of %s: %s", describe(holder), stale)
                return cls(output, record, version, timeout, on_lost)._start()
            time.sleep(0.05)  # another run replaced it first: look again
        raise LeaseHeld(f"OUTPUT {output.uri!r}: could not take the lease (too much contention)")

    def _start(self) -> Lease:
        # Leftovers of runs killed while they changed the lease: this run holds it now, so
        # nobody else is writing them.
        for relpath in self.output.lease_leftovers():
            self.output.remove(relpath)
        # A few beats per timeout, so one late write never makes a live run look dead.
        interval = max(0.05, self.timeout / 10)
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), name="lease-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval) and self.lost is None:
            self.renew()

    def renew(self) -> None:
        """Renew the lease if it is still this run's, by a swap on the version last written.
        Marks it lost (and calls on_lost) when another run holds it, or when no renewal has
        succeeded for half the timeout."""
        with self._lock:
            if self.lost is not None:
                return
            record = self.record | {"heartbeat_at": now(), "beats": self.record["beats"] + 1}
            try:
                version = self.output.swap_json(LEASE, record, expected=self.version)
            except Exception as err:  # a missed beat is not fatal while the next one may work
                log.warning("lease heartbeat failed: %s", err)
                self._check_renewed_recently()
                return
            if version is None:
                self._lose(self._who_holds_it())
                return
            self.record, self.version, self.renewed_at = record, version, time.monotonic()

    def check(self) -> None:
        """LeaseLost unless OUTPUT's lease is exactly the one this run last wrote, renewed
        recently: called before the driver writes to OUTPUT."""
        with self._lock:
            if self.lost is None:
                try:
                    _, version = self.output.read_versioned(LEASE)
                except storage_errors() as err:
                    self._lose(f"it could not be read ({type(err).__name__}: {err})")
                else:
                    if version != self.version:
                        self._lose(self._who_holds_it())
                    else:
                        self._check_renewed_recently()
            if self.lost is not None:
                raise self.lost

    def _check_renewed_recently(self) -> None:
        silent = time.monotonic() - self.renewed_at
        if silent > self.timeout / 2:
            self._lose(f"it could not be renewed for {silent:.0f} s")

    def _who_holds_it(self) -> str:
        try:
            current, _ = self.output.read_versioned(LEASE)
        except storage_errors() as err:
            return f"it is not the one this run wrote, and cannot be read ({err})"
        if current is None:
            return "it was removed"
        return f"it is now held by {describe(current)}"

    def _lose(self, why: str) -> None:
        self.lost = LeaseLost(
            f"this run lost OUTPUT {self.output.uri!r}: {why}. It stopped writing; blocks it "
            "committed are kept"
        )
        log.error("%s", self.lost)
        if self.on_lost is not None:
            self.on_lost()

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still the one this run wrote."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.lost is None:
                self.output.remove_versioned(LEASE, self.version)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_holder(output: OutputFolder, run_id: str) -> None:
    """LeaseLost unless OUTPUT's lease still names run `run_id`: a worker calls this before
    each commit (one small read). A lease that cannot be read (after the storage library's
    own retries) cannot be confirmed either: the commit does not happen."""
    try:
        current = output.read_json(LEASE)
    except storage_errors() as err:
        raise LeaseLost(
            f"this run could not confirm that it still holds OUTPUT {output.uri!r} "
            f"({type(err).__name__}: {err}). It stopped writing"
        ) from err
    if current is None or current.get("run_id") != run_id:
        who = "no run holds it now" if current is None else f"it is now held by {describe(current)}"
        raise LeaseLost(f"this run lost OUTPUT {output.uri!r}: {who}. It stopped writing")
