"""Running it in production: --print-config, --dry-run, and the summary table."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO, job_env, run_job_cli

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
