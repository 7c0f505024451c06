"""The manifest's figures come from what the stages reported per block."""

from __future__ import annotations

import datetime as dt

from jobs.pipeline.envelopes import envelope
from jobs.pipeline.manifest import Tally, build_manifest, collection_figures, device_names
from registry import Registry, check_truncation

DOCS = "collection=docs/part-aaaaaaaaaaaaaaaa-000000000.parquet"
FAQ = "collection=faq/part-aaaaaaaaaaaaaaaa-000000000.parquet"
DOCS_2 = "collection=docs/part-aaaaaaaaaaaaaaaa-000002048.parquet"


def results() -> list[dict]:
    written = [{"relpath": DOCS, "rows": 5}, {"relpath": FAQ, "rows": 2}]
    return [
        envelope(
            block_id="a-0",
            rows=7,
            embedded=4,
            reused=3,
            files=written,
            written=True,
            replica_id="r1",
        ),  # fmt: skip
        envelope(block_id="a-2048", rows=6, skipped=6, files=[{"relpath": DOCS_2, "rows": 6}]),
        envelope(
            rejected=3,
            rejected_by_kind=[("duplicate id", 2), ("malformed JSON", 1)],
            rejections_file="_rejected/aaaaaaaaaaaaaaaa-a.jsonl.jsonl",
        ),
        envelope(rejected=1, rejected_by_kind=[("duplicate id", 1)], rejections_file="_rejected/b"),
    ]


def test_tally_adds_up_blocks_and_files():
    tally = Tally.of(results())
    assert (tally.rows, tally.embedded, tally.reused, tally.skipped) == (13, 4, 3, 6)
    assert tally.files_written == 2
    assert tally.rejected == 4 and tally.rejected_by_kind == {
        "duplicate id": 3,
        "malformed JSON": 1,
    }
    assert tally.current_files() == {
        DOCS, FAQ, DOCS_2, "_rejected/aaaaaaaaaaaaaaaa-a.jsonl.jsonl", "_rejected/b",
    }  # fmt: skip


def test_collections_take_rows_from_the_stages_and_bytes_from_the_listing():
    figures = collection_figures(Tally.of(results()).files, {DOCS: 100, FAQ: 40, DOCS_2: 90})
    assert figures == {
        "docs": {"rows": 11, "bytes": 190, "files": 2},
        "faq": {"rows": 2, "bytes": 40, "files": 1},
    }


def test_the_manifest_counts_and_names_its_replicas():
    replica = {"replica_id": "r1", "device": "cpu", "gpu_name": "", "dtype": "fp32", "rows": 4,
               "tokens": 40, "padded_tokens": 50, "truncated_texts": 1, "encode_seconds": 2.0,
               "alive_seconds": 4.0}  # fmt: skip
    model_spec = Registry.load().get("all-miniLM-l6")
    tally = Tally.of(results())
    record = build_manifest(
        model_spec=model_spec,
        truncations=[check_truncation(model_spec, 384, False)],
        calibration=None,
        fingerprint={"dims": [384]},
        weights={"revision": None, "digest": "sha256:00ff", "files": 9},
        settings_public={"precision": "float32"},
        replicas=[replica],
        tally=tally,
        collections=collection_figures(tally.files, {}),
        timings={"wall_seconds": 10.0},
        started_at=dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
    )
    assert record["manifest_version"] == 3
    assert record["weights"] == {"revision": None, "digest": "sha256:00ff", "files": 9}
    assert record["registry_entry"]["hf_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert record["fingerprint"] == {"dims": [384]}
    assert (record["replicas"], record["devices"]) == (1, ["cpu"])
    assert record["per_replica"][0]["rows_per_second"] == 2.0
    assert record["per_replica"][0]["padding_share"] == 0.2
    assert (record["rows_embedded"], record["rows_skipped"], record["rows_in_output"]) == (4, 9, 13)
    assert record["rows_rejected"] == 4 and record["rejected_by_reason"]["duplicate id"] == 3
    assert record["files_written"] == 2 and record["rows_truncated_to_max_tokens"] == 1


def test_devices_are_named_by_gpu():
    replicas = [{"device": "cuda", "gpu_name": "Tesla T4"}] * 2 + [
        {"device": "cpu", "gpu_name": ""}
    ]
    assert device_names(replicas) == ["cpu", "cuda (Tesla T4)"]


def test_per_replica_rows_add_up_to_rows_embedded_when_a_replica_is_lost():
    """r1 encoded six rows but its node died before one block of two was written: r2 redid
    that block. Committed rows count for the replica whose block was written."""
    results = [
        envelope(block_id="a-0", rows=4, embedded=4, files=[{"relpath": DOCS, "rows": 4}],
                 written=True, replica_id="r1"),
        envelope(block_id="a-4", rows=2, embedded=2, files=[{"relpath": DOCS_2, "rows": 2}],
                 written=True, replica_id="r2"),
    ]  # fmt: skip
    figures = {"device": "cpu", "gpu_name": "", "dtype": "fp32", "tokens": 1, "padded_tokens": 1,
               "truncated_texts": 0, "encode_seconds": 1.0, "alive_seconds": 1.0}  # fmt: skip
    replicas = [
        {"replica_id": "r1", "rows": 6, "lost": True, **figures},
        {"replica_id": "r2", "rows": 2, "lost": False, **figures},
    ]
    model_spec = Registry.load().get("all-miniLM-l6")
    tally = Tally.of(results)
    record = build_manifest(
        model_spec=model_spec,
        truncations=[check_truncation(model_spec, 384, False)],
        calibration=None,
        fingerprint={},
        weights={},
        settings_public={},
        replicas=replicas,
        tally=tally,
        collections=collection_figures(tally.files, {}),
        timings={"wall_seconds": 1.0},
        started_at=dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
    )
    per_replica = {r["replica_id"]: r for r in record["per_replica"]}
    assert (per_replica["r1"]["rows"], per_replica["r1"]["rows_encoded"]) == (4, 6)
    assert per_replica["r1"]["lost"] and not per_replica["r2"]["lost"]
    assert sum(r["rows"] for r in record["per_replica"]) == record["rows_embedded"] == 6
