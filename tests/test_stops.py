"""A run stopped on purpose or by a failure says so in one line, keeps what it committed and
writes nothing more; a rerun then finishes with every row exactly once.

One corpus, one OUTPUT, one run after another, as a user meets them: SIGTERM (exit 143), Ctrl-C
to the whole process group (exit 130), the lease taken over mid-run (exit 1), a write that
fails (exit 1), the rerun that completes; then the model's weights change, and a resume is
refused (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedder.weights import locate
from jobs.pipeline.folders import LEASE, OutputFolder
from jobs.pipeline.lease import this_machine
from jobs.pipeline.units import InputFile
from jobs.query import ManifestError, QueryEncoder
from tests.conftest import REPO, dead_pid, plain_env, real_texts, run_job_cli, write_jsonl
from tests.test_resume import assert_exactly_once, assert_no_duplicates_so_far, part_files

FILES, ROWS, BLOCK_ROWS = 12, 30, 5


def make_corpus(root: Path) -> dict[str, str]:
    lines = [p.splitlines()[0][:80] for p in real_texts(FILES * ROWS)]
    expected = {}
    for f in range(FILES):
        records = [
            {"id": f"s{f}-{r}", "text": f"{lines[(f * ROWS + r) % len(lines)]} [{f}.{r}]"}
            for r in range(ROWS)
        ]
        write_jsonl(root / ("docs", "code")[f % 2] / f"part-{f:02d}.jsonl", records)
        expected.update({r["id"]: r["text"] for r in records})
    return expected


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.embed", *args],
        cwd=REPO,
        env=plain_env(),  # its own Ray, in its process group as a terminal's job
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )


def stop_mid_run(args: list[str], output: Path, act) -> tuple[int, str, set[Path]]:
    """Start the job, call act(process) once it has committed two more files, and wait for
    its end: (exit code, stderr, the part files there were when act() ran)."""
    before = len(part_files(output))
    process = start(args)
    try:
        deadline = time.monotonic() + 300
        while len(part_files(output)) < before + 2 and process.poll() is None:
            assert time.monotonic() < deadline, "the job committed nothing"
            time.sleep(0.02)
        assert process.poll() is None, "the job ended before the stop point"
        at_stop = set(part_files(output))
        act(process)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, stderr, at_stop


def assert_one_line_and_no_traceback(stderr: str, line: str) -> None:
    assert line in stderr.splitlines()[-1], stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]


def test_stops_say_so_in_one_line_keep_their_work_and_a_rerun_finishes(tmp_path, model_path):
    expected = make_corpus(tmp_path / "in")
    output = tmp_path / "out"
    model = Path(shutil.copytree(model_path, tmp_path / "model"))  # weights we can change
    registry = tmp_path / "models.toml"
    registry.write_text(
        f'[models."mini"]\npath = "{model}"\nnative_dim = 384\nmatryoshka = "none"\n'
        "max_tokens = 256\n"
    )
    args = [str(tmp_path / "in"), str(output), "mini", "--registry-file", str(registry),
            "--block-rows", str(BLOCK_ROWS)]  # fmt: skip

    # SIGTERM, as `kill` or a scheduler sends it; SIGINT to the whole process group, as Ctrl-C.
    stops = (
        ("SIGTERM", 143, lambda p: os.kill(p.pid, signal.SIGTERM)),
        ("SIGINT", 130, lambda p: os.killpg(p.pid, signal.SIGINT)),
    )
    for name, expected_code, send in stops:
        code, stderr, _ = stop_mid_run(args, output, send)
        assert code == expected_code
        assert_one_line_and_no_traceback(
            stderr, f"interrupted ({name}): finished blocks are kept; rerun to resume"
        )
        assert not (output / LEASE).exists()
        assert_no_duplicates_so_far(output, expected)

    # The lease taken over mid-run (by a run that then dies): this run stops writing at once.
    taker = {"run_id": "the-taker", "host": "here", "pid": dead_pid(), **this_machine()}

    def take_over(process):
        OutputFolder(str(output)).write_json(LEASE, taker)

    code, stderr, at_take_over = stop_mid_run(args, output, take_over)
    assert code == 1
    assert_one_line_and_no_traceback(stderr, "error: this run lost OUTPUT")
    assert "it is now held by run the-taker" in stderr
    # At most the commits already past their check (one per write task in flight) landed.
    assert len(set(part_files(output)) - at_take_over) <= 2
    assert json.loads((output / LEASE).read_text()) == taker  # neither renewed nor removed
    assert not (output / "_manifest.json").exists()
    assert_no_duplicates_so_far(output, expected)

    # A write that fails (here: a folder where a block's file must go; a full disk or missing
    # permissions look the same): one line naming the file in OUTPUT, and no temp file left.
    blocked = pending_block_file(tmp_path / "in", output)
    blocked.mkdir(parents=True)
    failed = run_job_cli(args)
    assert failed.returncode == 1
    assert_one_line_and_no_traceback(failed.stderr, f"error: could not write {blocked}")
    assert "took over the lease of run the-taker" in failed.stderr  # its process is gone
    # The failed write left no temp file of its own. Another block's write, killed in flight
    # as the run ended, may have left one (a worker cannot clean up after SIGKILL): the next
    # complete run sweeps those (checked after it).
    assert not list(blocked.parent.glob(f".{blocked.name}.tmp-*"))
    blocked.rmdir()

    # The fingerprint holds the precision the replicas resolved: `auto` (the runs above) and
    # `fp32` are one and the same on a CPU.
    finished = run_job_cli([*args, "--dtype", "fp32"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_exactly_once(output, expected)
    assert not [p for p in output.rglob(".*") if ".tmp-" in p.name]  # swept
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_in_output"] == len(expected)
    assert 0 < manifest["rows_embedded"] < len(expected)  # the stopped runs' work was kept
    pinned = locate(str(model), True).pinned()
    assert manifest["weights"] == pinned | {"files": 11}
    assert manifest["fingerprint"]["weights"] == pinned
    assert (manifest["fingerprint"]["dtype"], manifest["fingerprint"]["backend"]) == (
        "fp32",
        "torch",
    )

    # The weights change under OUTPUT: a resume is refused, naming the difference, and
    # queries are refused too (they would not match the stored vectors).
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 128}))
    refused = run_job_cli(args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"weights: OUTPUT has {pinned!r}, this run" in refused.stderr
    with pytest.raises(ManifestError, match="queries would not match"):
        QueryEncoder.from_output(str(output))

    # --overwrite: the job's own files go, and everything is embedded again with these weights.
    overwritten = run_job_cli([*args, "--overwrite"])
    assert overwritten.returncode == 0, overwritten.stderr[-3000:]
    assert "--overwrite: removed" in overwritten.stderr
    assert_exactly_once(output, expected)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows_embedded"] == len(expected)
    assert manifest["weights"]["digest"] == locate(str(model), True).digest != pinned["digest"]


def pending_block_file(root: Path, output: Path) -> Path:
    """The output file of a block not written yet (of the last files: read last)."""
    for f in reversed(range(FILES)):
        collection = ("docs", "code")[f % 2]
        input_file = InputFile(f"{collection}/part-{f:02d}.jsonl", collection, "jsonl")
        for first in reversed(range(0, ROWS, BLOCK_ROWS)):
            block = input_file.block_of(first, BLOCK_ROWS)
            path = output / OutputFolder.block_file(collection, block)
            if not path.exists():
                return path
    raise AssertionError("every block is written already")
