"""Crash anywhere, rerun: every input row in the output exactly once, finished work kept.

The job runs as a user runs it, as a subprocess in its own process group, and is killed with
SIGKILL at several points; reruns must complete the output without duplicates.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    REPO,
    job_env,
    local_ray,
    plain_env,
    real_texts,
    reference_vectors,
    run_job_cli,
    session_pids,
    write_jsonl,
)

FILES = 44
ROWS_PER_FILE = 30


def make_corpus(root: Path) -> dict[str, str]:
    """44 JSONL files in three collections; returns id -> text.

    Texts are first lines of real paragraphs: short, so a whole run encodes in seconds.
    """
    paragraphs = [p.splitlines()[0][:100] for p in real_texts(400)]
    expected = {}
    for f in range(FILES):
        collection = ("docs", "code", "notes")[f % 3]
        records = []
        for r in range(ROWS_PER_FILE):
            text = f"{paragraphs[(f * ROWS_PER_FILE + r) % len(paragraphs)]} [{f}.{r}]"
            records.append({"id": f"f{f}-r{r}", "text": text, "n": r})
            expected[f"f{f}-r{r}"] = text
        write_jsonl(root / collection / f"part-{f:03d}.jsonl", records)
    return expected


def part_files(output: Path) -> list[Path]:
    return sorted(output.glob("collection=*/*.parquet"))


def output_ids(output: Path) -> collections.Counter:
    ids = collections.Counter()
    for path in part_files(output):
        ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return ids


def assert_exactly_once(output: Path, expected: dict[str, str]) -> None:
    ids = output_ids(output)
    repeated = [i for i, n in ids.items() if n > 1]
    assert not repeated, f"ids written twice: {repeated[:5]}"
    assert set(ids) == set(expected)


def assert_no_duplicates_so_far(output: Path, expected: dict[str, str]) -> None:
    """What a reader sees in OUTPUT after a crash: possibly incomplete, never doubled."""
    ids = output_ids(output)
    assert all(n == 1 for n in ids.values())
    assert set(ids) <= set(expected)


def kill_when(args: list[str], ready, env=None, timeout: float = 300) -> None:
    """Start the job in its own process group and SIGKILL the whole group once ready()."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.embed", *args],
        cwd=REPO,
        env=env or plain_env(),  # its own Ray: in its process group, killed with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the job ended before the kill point"
    # Every process the job started (Ray's GCS, raylet, workers) is in its session.
    wait_until(lambda: not session_pids(proc.pid), 30, "Ray processes outlived the kill")


def wait_until(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.2)


def finish(args: list[str], env=None) -> dict:
    result = run_job_cli(args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((Path(args[1]) / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-corpus")
    return root, make_corpus(root)


def planned_blocks(root: Path, block_rows: int) -> list:
    """The blocks the job plans (each one output file: no row routes elsewhere)."""
    from jobs.pipeline.folders import InputFolder
    from jobs.pipeline.packing import plan_blocks

    files = InputFolder(str(root)).list_files()
    rows = {f.relpath: len((root / f.relpath).read_text().splitlines()) for f in files}
    return plan_blocks(files, rows, block_rows)


def test_killed_at_any_point_then_rerun_gives_every_row_exactly_once(corpus, tmp_path):
    source, expected = corpus
    # Blocks of 64 rows: the 30-row files are packed several to a block, and three files of
    # 100 rows are each cut into blocks of their own: both kinds of block in one run.
    root = tmp_path / "in"
    shutil.copytree(source, root)
    expected = dict(expected)
    for f in range(3):
        records = [
            {"id": f"big{f}-r{r}", "text": f"row {r} of a long file [{f}]"} for r in range(100)
        ]
        write_jsonl(root / "docs" / f"big-{f}.jsonl", records)
        expected |= {r["id"]: r["text"] for r in records}
    output = tmp_path / "out"
    args = [str(root), str(output), "all-miniLM-l6", "--block-rows", "64"]
    plan = planned_blocks(root, 64)
    blocks = len(plan)
    assert blocks > 8
    assert any(len(block.files) > 1 for block in plan)  # packed
    assert sum(block.files[0].relpath == "docs/big-0.jsonl" for block in plan) == 2  # own

    # Early: right after the first block is committed.
    kill_when(args, lambda: len(part_files(output)) >= 1)
    assert_no_duplicates_so_far(output, expected)
    early = len(output_ids(output))
    assert 0 < early < len(expected)

    # Middle: the rerun resumes and is killed again half way.
    kill_when(args, lambda: len(part_files(output)) >= blocks // 2)
    assert_no_duplicates_so_far(output, expected)
    middle = len(output_ids(output))
    assert early < middle < len(expected)

    # At the manifest: every block is committed, the manifest not yet written.
    manifest = output / "_manifest.json"
    kill_when(args, lambda: len(part_files(output)) >= blocks and not manifest.exists())
    assert not manifest.exists()
    assert_exactly_once(output, expected)

    record = finish(args)
    assert_exactly_once(output, expected)
    assert record["rows_embedded"] == 0  # all of it was committed before the last kill
    assert record["rows_skipped"] == record["rows_in_output"] == len(expected)


@pytest.fixture
def run_in_process():
    """The job's own entry points on one local Ray, for tests that run it several times in a
    row: saves a Ray start and the imports per run (the kill tests need real processes)."""

    from jobs.pipeline.job import prepare_job, run_job
    from jobs.pipeline.settings import EmbedSettings

    def run(args: list[str]) -> dict:
        root, output, model = args
        record, code = run_job(prepare_job(EmbedSettings(input=root, output=output, model=model)))
        assert code == 0
        return json.loads((Path(output) / "_manifest.json").read_text())

    with local_ray(num_cpus=2):
        yield run


def test_rerun_of_a_finished_job_embeds_nothing_and_an_edit_embeds_one_row(
    corpus, tmp_path, bare_model, run_in_process
):
    source, expected = corpus
    root = tmp_path / "in"
    subprocess.run(["cp", "-r", str(source), str(root)], check=True)
    output = tmp_path / "out"
    args = [str(root), str(output), "all-miniLM-l6"]
    run = run_in_process
    first = run(args)
    assert first["rows_embedded"] == len(expected)

    again = run(args)
    assert again["rows_embedded"] == 0 and again["rows_skipped"] == len(expected)
    mtimes = {p: p.stat().st_mtime_ns for p in part_files(output)}

    # Edit one chunk of one file.
    edited_file = root / "code" / "part-004.jsonl"
    lines = edited_file.read_text().splitlines()
    record = json.loads(lines[7])
    record["text"] = "def resumed(): return 'an edited chunk is embedded again'"
    lines[7] = json.dumps(record)
    edited_file.write_text("\n".join(lines) + "\n")

    after_edit = run(args)
    assert after_edit["rows_embedded"] == 1
    assert after_edit["rows_skipped"] == len(expected) - 1
    assert_exactly_once(output, expected)
    changed = [p for p in part_files(output) if p.stat().st_mtime_ns != mtimes.get(p)]
    assert len(changed) == 1  # only the edited block's file was rewritten
    rows = {row["id"]: row for row in pq.read_table(changed[0]).to_pylist()}
    row = rows["f4-r7"]  # its file shares a block with others of its collection
    assert row["text"] == record["text"]
    reference = reference_vectors(bare_model, [record["text"]], 384)[0]
    assert float(np.dot(row["embedding"], reference)) >= 0.9999
    unchanged = rows["f4-r6"]
    reference = reference_vectors(bare_model, [unchanged["text"]], 384)[0]
    assert float(np.dot(unchanged["embedding"], reference)) >= 0.9999

    # Remove a whole input file: its rows leave the output.
    (root / "docs" / "part-000.jsonl").unlink()
    after_delete = run(args)
    assert after_delete["rows_embedded"] == 0
    remaining = {k: v for k, v in expected.items() if not k.startswith("f0-")}
    assert set(output_ids(output)) == set(remaining)


def test_a_replica_killed_mid_run_is_restarted_and_nothing_is_doubled(corpus, tmp_path):
    root, expected = corpus
    output = tmp_path / "out"
    proc = subprocess.Popen(
        # A block per file (30 rows): work left when a replica dies after the third.
        [
            sys.executable,
            "-m",
            "jobs.embed",
            str(root),
            str(output),
            "all-miniLM-l6",
            "--block-rows",
            "30",
        ],  # fmt: skip
        cwd=REPO,
        env=plain_env(),  # its own Ray: its replica is found in the job's process group
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: len(part_files(output)) >= 3 or proc.poll() is not None, 240, "slow")
        replicas = session_pids(proc.pid, "EmbedBatches")
        assert replicas, "no replica process found"
        committed_at_kill = len(part_files(output))
        os.kill(min(replicas), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert committed_at_kill < FILES  # the replica died with work left to do
    assert_exactly_once(output, expected)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_in_output"] == len(expected)


def test_changing_dim_or_model_on_the_same_output_is_refused(corpus, tmp_path):
    root, _ = corpus
    output = tmp_path / "out"
    (output).mkdir()
    (output / "_fingerprint.json").write_text(
        json.dumps({"hf_id": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384})
    )
    result = run_job_cli([str(root), str(output), "all-miniLM-l6", "128", "--allow-non-matryoshka"])
    assert result.returncode == 2
    assert "dim: OUTPUT has 384, this run 128" in result.stderr
    assert "--overwrite" in result.stderr
    assert sorted(p.name for p in output.iterdir()) == ["_fingerprint.json"]


def test_of_two_runs_started_together_on_one_output_exactly_one_embeds(tmp_path):
    output = tmp_path / "out"
    args = [str(REPO / "samples" / "corpus"), str(output), "all-miniLM-l6"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "jobs.embed", *args],
            cwd=REPO,
            env=job_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for run in runs:  # communicate, not wait: a full pipe would stall the run
        stdout, stderr = run.communicate(timeout=300)
        results.append((run.returncode, stdout, stderr))
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [stderr[-2000:] for _, _, stderr in results]
    loser = next(stderr for code, _, stderr in results if code == 2)
    assert "is held by run" in loser
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_embedded"] == manifest["rows_in_output"] == 32
    assert not (output / "_lease.json").exists()
