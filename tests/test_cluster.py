"""A real Ray cluster of three nodes on this machine (a head without GPUs, two workers with
one logical GPU each), joined by the job through RAY_ADDRESS as on a real cluster: placement
per worker GPU, local paths refused unless shared, and a worker node lost mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import (
    REPO,
    plain_env,
    read_output,
    real_texts,
    reference_vectors,
    run_job_cli,
    write_jsonl,
)
from tests.test_resume import assert_exactly_once, part_files, wait_until


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    workers = [nodes.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    nodes.wait_for_nodes()
    yield {"cluster": nodes, "workers": workers, "head": nodes.head_node}
    nodes.shutdown()


FILES = 40
ROWS_PER_FILE = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 files of 60 short rows, a block each (--block-rows 60): long enough to lose a node in
    the middle of the run."""
    root = tmp_path_factory.mktemp("cluster-corpus")
    lines = [p.splitlines()[0][:120] for p in real_texts(400)]
    expected = {}
    for f in range(FILES):
        records = [
            {"id": f"f{f}-r{r}", "text": f"{lines[(f * 7 + r) % len(lines)]} [{f}.{r}]"}
            for r in range(ROWS_PER_FILE)
        ]
        write_jsonl(root / ("docs", "code")[f % 2] / f"part-{f:03d}.jsonl", records)
        expected |= {r["id"]: r["text"] for r in records}
    return root, expected


def cluster_env(cluster) -> dict[str, str]:
    return plain_env(RAY_ADDRESS=cluster["cluster"].address)


def test_one_replica_per_worker_gpu_and_the_manifest_names_their_nodes(cluster, corpus, tmp_path):
    root, expected = corpus
    output = tmp_path / "out"
    args = [str(root), str(output), "all-miniLM-l6", "--device", "cpu", "--shared-filesystem",
            "--block-rows", str(ROWS_PER_FILE)]  # fmt: skip
    result = run_job_cli(args, env=cluster_env(cluster))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 node(s)" in result.stderr
    assert_exactly_once(output, expected)
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["replicas"] == 2
    workers = {node.node_id for node in cluster["workers"]}
    replicas = manifest["per_replica"]
    assert {r["node_id"] for r in replicas} == workers  # one on each worker, none on the head
    assert all(r["host"] and r["node_ip"] and not r["lost"] for r in replicas)
    assert all(r["rows"] > 0 for r in replicas)
    assert sum(r["rows"] for r in replicas) == manifest["rows_embedded"] == len(expected)
    # The read tasks (wherever they ran) tokenized every text: no replica did.
    assert all(r["tokenize_seconds"] == 0 for r in replicas)


def test_local_paths_are_refused_on_several_nodes_unless_shared(cluster, corpus, tmp_path):
    root, _ = corpus
    output = tmp_path / "out"
    result = run_job_cli([str(root), str(output), "all-miniLM-l6"], env=cluster_env(cluster))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "INPUT and OUTPUT are local paths, but this Ray cluster has 3 nodes" in result.stderr
    assert "object storage" in result.stderr and "--shared-filesystem" in result.stderr
    assert not output.exists()


def test_a_worker_node_lost_mid_run(cluster, corpus, tmp_path, bare_model):
    """Killed after some blocks are committed: the run finishes by itself with every row once
    and right vectors, or fails with exit 1 in bounded time and a rerun finishes. The manifest
    names each replica's node, marks the lost one, and its per-replica rows add up."""
    root, expected = corpus
    output = tmp_path / "out"
    args = [str(root), str(output), "all-miniLM-l6", "--device", "cpu", "--shared-filesystem",
            "--block-rows", str(ROWS_PER_FILE)]  # fmt: skip
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.embed", *args],
        cwd=REPO, env=cluster_env(cluster), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        # Some blocks committed: both replicas are at work by then (each worker has a CPU
        # besides the one its replica holds, so read tasks never keep a replica from starting).
        wait_until(lambda: len(part_files(output)) >= 5 or job.poll() is not None, 240, "slow")
        lost = cluster["workers"][0]
        cluster["cluster"].remove_node(lost, allow_graceful=False)
        killed_at = len(part_files(output))
        _, stderr = job.communicate(timeout=300)  # bounded: a hang fails the test here
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert killed_at < FILES, "the run ended before the node was lost"
    if job.returncode != 0:
        assert job.returncode == 1, stderr[-3000:]
        rerun = run_job_cli(args, env=cluster_env(cluster))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_exactly_once(output, expected)
    manifest = json.loads((output / "_manifest.json").read_text())
    replicas = manifest["per_replica"]
    assert sum(r["rows"] for r in replicas) == manifest["rows_embedded"]
    if job.returncode == 0:
        lost_replicas = [r for r in replicas if r["node_id"] == lost.node_id]
        assert lost_replicas and all(r["lost"] for r in lost_replicas), (
            lost.node_id,
            [(r["node_id"], r["lost"], r["rows"], r["rows_encoded"]) for r in replicas],
        )
        assert all(not r["lost"] for r in replicas if r["node_id"] != lost.node_id)
    for table in read_output(output).values():
        texts = [expected[i] for i in table.column("id").to_pylist()[:5]]
        ours = np.asarray(table.column("embedding").to_pylist()[:5], dtype=np.float32)
        assert np.sum(ours * reference_vectors(bare_model, texts, 384), axis=1).min() >= 0.9999


def test_a_replica_no_node_can_host_is_refused_naming_the_largest_node(cluster, corpus, tmp_path):
    # Every node has 2 CPUs: a 3-CPU CPU replica fits none, though the cluster has 6.
    root, _ = corpus
    output = tmp_path / "out"
    args = [str(root), str(output), "all-miniLM-l6", "--shared-filesystem"]
    args += ["--gpus-per-replica", "0", "--cpus-per-replica", "3"]
    result = run_job_cli(args, env=cluster_env(cluster))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "largest node" in result.stderr and "has 2 CPUs" in result.stderr
    assert not output.exists()
