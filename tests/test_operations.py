"""Running it in production: --print-config, --dry-run, and the summary table."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO, job_env, run_job_cli, write_jsonl

SAMPLE = str(REPO / "samples" / "corpus")


def test_print_config_shows_each_source_and_masks_secrets(tmp_path):
    (tmp_path / ".env").write_text("EMBED_BATCH_SIZE=32\nEMBED_DEVICE=cuda\n")
    env = job_env(
        EMBED_DEVICE="cpu",  # env outranks .env
        EMBED_STORAGE_OPTIONS=json.dumps({"secret": "hunter2-secret", "endpoint_url": "http://s3"}),
    )
    result = run_job_cli(
        [SAMPLE, str(tmp_path / "out"), "all-miniLM-l6", "384", "--print-config"],
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split(None, 2)[1:]
        for line in result.stdout.splitlines()[1:]
        if line.strip()
    }
    assert rows["input"] == ["cli", SAMPLE]
    assert rows["dim"] == ["cli", "384"]
    assert rows["device"] == ["env", "cpu"]
    assert rows["batch_size"] == [".env", "32"]
    assert rows["block_rows"] == ["default", "2048"]
    assert rows["storage_options"][0] == "env"
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert '"secret": "***"' in rows["storage_options"][1]
    assert not (tmp_path / "out").exists()


def summary_numbers(stdout: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^  rows (embedded|skipped|rejected|in OUTPUT)\s+(\d+)", stdout, re.M)
    }


def test_summary_table_matches_the_manifest_and_dry_run_writes_nothing(tmp_path):
    output = tmp_path / "out"
    result = run_job_cli([SAMPLE, str(output), "all-miniLM-l6"])
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((output / "_manifest.json").read_text())
    assert summary_numbers(result.stdout) == {
        "embedded": manifest["rows_embedded"],
        "skipped": manifest["rows_skipped"],
        "rejected": manifest["rows_rejected"],
        "in OUTPUT": manifest["rows_in_output"],
    }
    assert manifest["rows_embedded"] == 32
    for name, entry in manifest["collections"].items():
        assert re.search(rf"^  {name}\s+{entry['rows']}\s+{entry['files']}\s", result.stdout, re.M)
    assert "replica " in result.stdout and "on cpu in fp32" in result.stdout

    # A dry run on the finished OUTPUT: everything already done, nothing touched.
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*")}
    planned = run_job_cli([SAMPLE, str(output), "all-miniLM-l6", "--dry-run"])
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "rows already done: 32" in planned.stdout and "rows to embed:    0" in planned.stdout
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*")} == before

    # A dry run into a new OUTPUT: the plan, an estimate, and no OUTPUT at all.
    fresh = tmp_path / "fresh"
    planned = run_job_cli([SAMPLE, str(fresh), "all-miniLM-l6", "--dry-run"])
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "input files:      3" in planned.stdout
    assert "code (8 rows), docs (20 rows), faq (4 rows)" in planned.stdout
    assert "rows to embed:    32" in planned.stdout and "estimate:" in planned.stdout
    assert "Started a local Ray instance" not in planned.stderr
    assert not fresh.exists()


# What a default run's log leaves out: Ray Data's progress report, Ray's start-up notice on
# token authentication, a core-worker error line about actor restarts, transformers' bars.
NOISE = (
    "logging_progress",
    "Running Dataset",
    "Token authentication is enabled",
    "max_restarts",
    "Loading weights",
)


def small_files(root, count: int) -> None:
    for f in range(count):
        write_jsonl(
            root / "notes" / f"n{f:03d}.jsonl",
            [{"id": f"n{f}-{r}", "text": f"note {f}, part {r}: about blocks"} for r in range(3)],
        )


def test_the_log_has_the_jobs_progress_line_and_a_dry_run_counts_as_the_run(tmp_path):
    small_files(tmp_path / "in", 60)
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "all-miniLM-l6", "--block-rows", "32"]
    first = run_job_cli(args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "progress: 180 of 180 rows (100%)" in first.stderr
    for noise in NOISE:
        assert noise not in first.stderr + first.stdout, noise
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows_embedded"] == 180 and manifest["files_written"] <= 18

    # Edits: one row changed, one file added, one removed, one file that cannot be decoded.
    write_jsonl(
        tmp_path / "in" / "notes" / "n010.jsonl",
        [{"id": f"n10-{r}", "text": f"note 10, part {r}: about blocks"} for r in range(2)]
        + [{"id": "n10-2", "text": "an edited part"}],
    )
    write_jsonl(
        tmp_path / "in" / "notes" / "n010b.jsonl",
        [{"id": f"new-{r}", "text": f"a new note, part {r}"} for r in range(3)],
    )
    (tmp_path / "in" / "notes" / "n031.jsonl").unlink()
    (tmp_path / "in" / "notes" / "n040.jsonl.gz").write_bytes(b"\x1f\x8b not gzip at all")
    planned = run_job_cli([*args, "--dry-run"])
    assert planned.returncode == 0, planned.stderr[-3000:]
    to_embed = int(re.search(r"rows to embed:\s+(\d+)", planned.stdout).group(1))
    assert to_embed == 4  # the edited row and the new file's three
    assert "cannot decode:    notes/n040.jsonl.gz from row 0" in planned.stdout
    assert "the run will exit 3" in planned.stdout

    second = run_job_cli(args)
    assert second.returncode == 3, second.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows_embedded"] == to_embed
    assert manifest["rows_in_output"] == 180 - 3 + 3

    # Nothing left to do: decided from the listings and the manifest alone, same exit code.
    third = run_job_cli(args)
    assert third.returncode == 3 and "nothing to do" in third.stderr
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert (manifest["rows_embedded"], manifest["rows_skipped"]) == (0, 180)
    assert manifest["files_rejected"] == 1
