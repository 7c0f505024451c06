"""One run per OUTPUT: the lease is created only if absent, renewed while the run lives,
refused to a second live run, taken over from a dead one."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from jobs.pipeline.folders import LEASE, OutputFolder
from jobs.pipeline.lease import Lease, LeaseHeld


def lease_record(**changes) -> dict:
    record = {
        "run_id": "other-run",
        "host": "another-host",
        "pid": 4242,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "heartbeat_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return record | changes


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


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
    output.write_json(LEASE, lease_record())
    with pytest.raises(LeaseHeld) as refused:
        Lease.take(output, timeout=300)
    message = str(refused.value)
    assert "run other-run (host another-host, pid 4242" in message
    assert "last heartbeat 0 s ago" in message or "last heartbeat 1 s ago" in message
    assert output.read_json(LEASE)["run_id"] == "other-run"  # untouched


def test_a_lease_without_heartbeat_for_longer_than_the_timeout_is_taken_over(tmp_path, caplog):
    output = OutputFolder(str(tmp_path / "out"))
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    output.write_json(LEASE, lease_record(heartbeat_at=long_ago))
    with caplog.at_level(logging.WARNING, logger="embed"):
        with Lease.take(output, timeout=300) as lease:
            assert output.read_json(LEASE)["run_id"] == lease.record["run_id"]
    assert "took over the lease of run other-run" in caplog.text
    assert "last heartbeat was 3600 s ago" in caplog.text
    assert output.files() == {}  # the lease and the takeover marker are gone


def test_a_lease_whose_process_on_this_host_is_gone_is_taken_over_at_once(tmp_path, caplog):
    output = OutputFolder(str(tmp_path / "out"))
    gone = dead_pid()
    output.write_json(LEASE, lease_record(host=socket.gethostname(), pid=gone))
    with caplog.at_level(logging.WARNING, logger="embed"):
        with Lease.take(output, timeout=300):
            pass
    assert f"its process {gone} on this host is gone" in caplog.text


def test_the_heartbeat_renews_the_lease(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    with Lease.take(output, timeout=0.5) as lease:
        first = output.read_json(LEASE)["heartbeat_at"]
        time.sleep(0.3)
        renewed = output.read_json(LEASE)["heartbeat_at"]
        assert renewed > first and renewed == lease.record["heartbeat_at"]


def test_of_runs_taking_the_lease_together_exactly_one_gets_it(tmp_path):
    output = OutputFolder(str(tmp_path / "out"))
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    output.write_json(LEASE, lease_record(heartbeat_at=long_ago))  # a stale one to take over
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
