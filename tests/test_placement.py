"""Replica placement: one per GPU without thinking about it, and CPU replicas that leave room
for reading and writing."""

from __future__ import annotations

import json

import pytest

from jobs.placement import PlacementError, plan_replicas


def test_one_replica_per_gpu_by_default():
    plan = plan_replicas(cluster_cpus=8, cluster_gpus=2)
    assert (plan.replicas, plan.gpus_per_replica, plan.cpus_per_replica) == (2, 1, 1)
    assert plan_replicas(cluster_cpus=64, cluster_gpus=8).replicas == 8


def test_cpu_replicas_leave_a_cpu_for_io():
    assert plan_replicas(cluster_cpus=2, cluster_gpus=0) == plan_replicas(2, 0, None, None, None)
    two_core = plan_replicas(cluster_cpus=2, cluster_gpus=0)
    assert (two_core.replicas, two_core.gpus_per_replica, two_core.cpus_per_replica) == (1, 0, 1)
    sixteen = plan_replicas(cluster_cpus=16, cluster_gpus=0)
    assert sixteen.replicas * sixteen.cpus_per_replica <= 15
    assert (
        plan_replicas(cluster_cpus=16, cluster_gpus=0, replicas=3, cpus_per_replica=4).replicas == 3
    )


def test_requests_that_cannot_fit_are_refused():
    with pytest.raises(PlacementError, match="leaves|stays free"):
        plan_replicas(cluster_cpus=2, cluster_gpus=0, replicas=2)
    with pytest.raises(PlacementError, match="GPU"):
        plan_replicas(cluster_cpus=8, cluster_gpus=2, replicas=3)


def test_gpus_per_replica_zero_forces_cpu_placement():
    plan = plan_replicas(cluster_cpus=4, cluster_gpus=2, gpus_per_replica=0)
    assert plan.gpus_per_replica == 0 and not plan.on_gpus


def test_two_logical_gpus_get_two_replicas_each_on_its_own_gpu(mixed_corpus, tmp_path):
    """Ray's logical GPUs on this CPU box: placement is real, the model runs on CPU by setting."""
    import ray

    from jobs.embed import prepare_job, run_job
    from jobs.settings import EmbedSettings

    ray.init(num_cpus=3, num_gpus=2, include_dashboard=False)
    try:
        settings = EmbedSettings(
            input=str(mixed_corpus["root"]),
            output=str(tmp_path / "out"),
            model="all-miniLM-l6",
            device="cpu",
        )
        record, code = run_job(prepare_job(settings))
    finally:
        ray.shutdown()
    assert code == 0
    assert record["replicas"] == 2
    visible = sorted(r["cuda_visible_devices"] for r in record["devices"])
    assert visible == ["0", "1"]
    assert all(r["device"] == "cpu" and len(r["gpu_ids"]) == 1 for r in record["devices"])
    assert record["rows_embedded"] == len(mixed_corpus["expected"])
    on_disk = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert on_disk["replicas"] == 2


def test_a_lone_cpu_replica_also_encodes_on_the_io_cpu():
    assert plan_replicas(cluster_cpus=2, cluster_gpus=0).torch_threads == 2
    assert plan_replicas(cluster_cpus=2, cluster_gpus=0, cpus_per_replica=1).torch_threads == 1
    several = plan_replicas(cluster_cpus=32, cluster_gpus=0)
    assert several.replicas > 1 and several.torch_threads == several.cpus_per_replica
