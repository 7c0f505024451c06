"""One run per OUTPUT: the lease is created only if absent, renewed while the run lives,
refused to a second live run, taken over from a dead one."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from jobs.pipeline.folders import LEASE, OutputFolder
from jobs.pipeline.lease import Lease, LeaseHeld, LeaseLost, check_holder, this_machine
from tests.conftest import dead_pid


def lease_record(**changes) -> dict:
    record = {
        "run_id": "other-run",
        "host": "another-host",
        "pid": 4242,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "heartbeat_at": dt.datetime.now(dt.UTC).isoformat(),
        "beats": 0,
    }
    return record | changes


def on_this_machine(**changes) -> dict:
    """A holder's record as a run on this machine (same boot id, same PID namespace) writes it."""
    return lease_record(host=socket.gethostname(), **this_machine()) | changes


@contextmanager
def beating(output: OutputFolder, record: dict, every: float = 0.05):
    """A live holder elsewhere: its lease renewed every `every` seconds while the block runs."""
    output.write_json(LEASE, record)
    stop = threading.Event()

    def beat():
        beats = 0
        while not stop.wait(every):
            beats += 1
            now = dt.datetime.now(dt.UTC).isoformat()
            output.write_json(LEASE, record | {"heartbeat_at": now, "beats": beats})

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_lease_is_held_while_the_run_lives_and_removed_at_its_end(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    with Lease.take(output, timeout=300) as lease:
        held = output.read_json(LEASE)
        assert held == lease.record
        assert held["host"] == socket.gethostname() and held["pid"] > 0
        assert not output.has_files()  # the lease is not content
    assert not output.exists(LEASE)


def test_a_live_holder_is_named_and_the_second_run_refused(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    # A holder on another machine is judged by watching its heartbeat, never by its clock.
    with beating(output, lease_record()), pytest.raises(LeaseHeld) as refused:
        Lease.take(output, timeout=300)
    message = str(refused.value)
    assert "run other-run (host another-host, pid 4242" in message
    assert "last heartbeat 0 s ago" in message or "last heartbeat 1 s ago" in message
    assert output.read_json(LEASE)["run_id"] == "other-run"  # untouched


def test_a_lease_unchanged_for_the_timeout_on_this_machines_clock_is_taken_over(tmp_path, caplog):
    output = OutputFolder(str(tmp_path / "out"))
    # Its own clock says it beat a moment ago: irrelevant, only what this machine sees counts.
    output.write_json(LEASE, lease_record())
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="embed"):
        with Lease.take(output, timeout=0.5) as lease:
            assert output.read_json(LEASE)["run_id"] == lease.record["run_id"]
    assert time.monotonic() - started >= 0.5
    assert "took over the lease of run other-run" in caplog.text
    assert "it did not change for 0.5 s on this machine's clock" in caplog.text
    assert output.files() == {}  # the lease and its lock are gone


def test_a_lease_whose_process_on_this_host_is_gone_is_taken_over_at_once(tmp_path, caplog):
    output = OutputFolder(str(tmp_path / "out"))
    gone = dead_pid()
    output.write_json(LEASE, on_this_machine(pid=gone))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="embed"):
        with Lease.take(output, timeout=300):
            pass
    assert time.monotonic() - started < 10  # at once, not after the timeout
    assert f"its process {gone} on this machine is gone" in caplog.text


def test_the_heartbeat_renews_the_lease(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    with Lease.take(output, timeout=0.5) as lease:
        first = output.read_json(LEASE)["heartbeat_at"]
        time.sleep(0.3)
        renewed = output.read_json(LEASE)["heartbeat_at"]
        assert renewed > first and renewed == lease.record["heartbeat_at"]


def test_of_runs_taking_the_lease_together_exactly_one_gets_it(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    output.write_json(LEASE, on_this_machine(pid=dead_pid()))  # a stale one to take over
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def contend():
        start.wait()
        try:
            lease = Lease.take(output, timeout=300)
        except LeaseHeld:
            outcomes.append("refused")
        else:
            outcomes.append(lease.record["run_id"])

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o != "refused"]
    assert len(outcomes) == 8 and len(winners) == 1
    assert json.loads((tmp_path / "out" / LEASE).read_text())["run_id"] == winners[0]


def test_clearing_output_keeps_the_lease_and_nothing_else(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    with Lease.take(output, timeout=300):
        output.write_json("_fingerprint.json", {})
        output.write_bytes("collection=docs/part-aaaaaaaaaaaaaaaa-000000000.parquet", b"x")
        assert output.has_files()
        output.clear()
        assert set(output.files()) == {LEASE}
        assert not (tmp_path / "out" / "collection=docs").exists()


def test_two_machines_with_one_hostname_never_take_each_others_live_lease(tmp_path):
    """Containers share a hostname (docker --network host, Kubernetes hostNetwork) but not a
    process table: a pid that does not exist here says nothing about the holder."""
    output = OutputFolder(str(tmp_path / "out"))
    gone = dead_pid()
    other_boot = on_this_machine(pid=gone, boot_id="another-boot-id")
    other_namespace = on_this_machine(pid=gone, pid_namespace="pid:[1]")
    for holder in (other_boot, other_namespace):
        with beating(output, holder), pytest.raises(LeaseHeld, match="other-run"):
            Lease.take(output, timeout=300)


def test_a_pid_reused_by_another_process_is_not_the_holder(tmp_path, caplog):
    output = OutputFolder(str(tmp_path / "out"))
    output.write_json(LEASE, on_this_machine(pid=os.getpid(), process_start=1))
    with caplog.at_level(logging.WARNING, logger="embed"):
        with Lease.take(output, timeout=300):
            pass
    assert f"its pid {os.getpid()} now belongs to another process" in caplog.text


def test_a_run_whose_lease_was_taken_over_loses_it_and_never_writes_it_back(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    lost_calls = []
    lease = Lease.take(output, timeout=300, on_lost=lambda: lost_calls.append(1))
    lease.check()  # held
    check_holder(output, lease.run_id)
    taker = lease_record(run_id="the-taker")
    output.write_json(LEASE, taker)  # what a taker's swap leaves
    with pytest.raises(LeaseLost, match="now held by run the-taker"):
        check_holder(output, lease.run_id)  # a worker's check before a commit
    lease.renew()  # the heartbeat's swap fails: nothing written
    assert output.read_json(LEASE) == taker
    assert lost_calls == [1]
    with pytest.raises(LeaseLost, match="it is now held by run the-taker"):
        lease.check()
    lease.release()
    assert output.read_json(LEASE) == taker  # not ours to remove


def test_a_heartbeat_that_cannot_renew_for_half_the_timeout_loses_the_lease(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    lease = Lease.take(output, timeout=300)
    lease.renewed_at -= 151  # no renewal for longer than half the timeout
    with pytest.raises(LeaseLost, match="could not be renewed for 151 s"):
        lease.check()
    lease.release()


def test_leftovers_of_killed_runs_never_block_or_litter_output(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    leftovers = ["_lease.takeover-dead.json", "._lease.json.tmp-123-456", "_lease.json.tmp-7-8"]
    for name in leftovers:
        output.write_bytes(name, b"{}")
    output.write_bytes("_lease.json.lock", b"")  # a run killed while it held the lock
    with Lease.take(output, timeout=300):
        assert set(output.files()) == {LEASE}
        # The stale sweep never takes the lease's files for a block's leftovers.
        output.write_bytes("._lease.json.tmp-1-2", b"{}")
        assert output.remove_stale(set()) == []
    assert set(output.files()) == {"._lease.json.tmp-1-2"}
