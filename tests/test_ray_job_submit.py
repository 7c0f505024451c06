"""`ray job submit` against a real local Ray head, as a cluster user runs the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO, plain_env, read_output, session_pids

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_job_submit_runs_the_job_on_a_real_head(tmp_path):
    gcs_port, dashboard_port, agent_port = free_port(), free_port(), free_port()
    # Ray 2.60 heads require token auth from clients. The entrypoint's `python` is looked up
    # on the head's PATH: this environment's, as on a cluster whose image has the project.
    env = plain_env(RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    # A short temp dir: Ray's unix sockets live under it, and their paths are capped at 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={ray_tmp}",
         # Not Ray's default agent port (52365), which a job's own Ray in another test
         # process may hold: the Jobs API needs this head's agent.
         f"--dashboard-agent-listen-port={agent_port}",
         "--disable-usage-stats"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    output = tmp_path / "out"
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
                  "--", "python", "-m", "jobs.embed", "samples/corpus", str(output),
                  "all-miniLM-l6"]  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # the Jobs API answers a few seconds after the head starts
            result = subprocess.run(
                submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=400
            )
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            if "connect" not in (result.stdout + result.stderr).lower():
                break
            time.sleep(2)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "succeeded" in result.stdout + result.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    tables = read_output(output)
    assert set(tables) == {"code", "docs", "faq"}
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_in_output"] == sum(t.num_rows for t in tables.values()) == 32
    # The head and everything it started are gone.
    deadline = time.monotonic() + 60
    while session_pids(head.pid) and time.monotonic() < deadline:
        time.sleep(1)
    assert not session_pids(head.pid), subprocess.run(
        ["ps", "-o", "pid,cmd", "-p", ",".join(map(str, session_pids(head.pid)))],
        capture_output=True,
        text=True,
    ).stdout
