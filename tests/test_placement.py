"""Replica placement: one per GPU without thinking about it, and CPU replicas that leave room
for reading and writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.pipeline.placement import Node, PlacementError, place_replicas
from tests.conftest import local_ray


def on_one_node(cpus: float, gpus: float = 0, *rest, **options):
    """A one-node cluster, as these tests were first written for."""
    return place_replicas([Node(cpus, gpus)], *rest, **options)


def test_one_replica_per_gpu_by_default():
    placement = on_one_node(8, 2)
    assert (placement.replicas, placement.gpus_per_replica, placement.cpus_per_replica) == (2, 1, 1)
    assert on_one_node(64, 8).replicas == 8


def test_cpu_replicas_leave_a_cpu_for_io():
    assert on_one_node(2, 0) == on_one_node(2, 0, None, None, None)
    two_core = on_one_node(2, 0)
    assert (two_core.replicas, two_core.gpus_per_replica, two_core.cpus_per_replica) == (1, 0, 1)
    sixteen = on_one_node(16, 0)
    assert sixteen.replicas * sixteen.cpus_per_replica <= 15
    assert on_one_node(16, 0, replicas=3, cpus_per_replica=4).replicas == 3


def test_a_lone_cpu_left_for_io_is_shared_by_reads_and_writes():
    """With one CPU beside the replicas, a read and a write each hold half of it and reads run
    one at a time, so writes commit as the run goes instead of after the last read. With two
    or more, Ray Data's reservation keeps writes going and the tasks hold a CPU each. A lone
    CPU replica whose torch threads use that CPU too keeps it whole for reads and writes."""
    shared = [
        on_one_node(2, 1),  # a 2-vCPU box with one GPU
        on_one_node(3, 2),  # two GPU replicas and one CPU left
        place_replicas([Node(1, 1, "w1"), Node(2, 1, "w2")]),
        on_one_node(2, 0, cpus_per_replica=1),  # make bench-ceiling's stand-in for a GPU
    ]
    for placement in shared:
        assert (placement.io_cpus, placement.read_tasks) == (0.5, 1), placement
    for placement in [
        on_one_node(3, 1),
        on_one_node(8, 2),
        place_replicas([Node(2, 0, "head"), Node(1, 1, "w1"), Node(1, 1, "w2")]),
        on_one_node(2, 0),  # a lone CPU replica, its torch threads on both CPUs
        on_one_node(8, 0),  # the same with 7 CPUs and 8 threads
        on_one_node(16, 0, replicas=3, cpus_per_replica=4),
    ]:
        assert (placement.io_cpus, placement.read_tasks) == (1.0, None), placement


def test_requests_that_cannot_fit_are_refused():
    with pytest.raises(PlacementError, match="leaves|stays free"):
        on_one_node(2, 0, replicas=2)
    with pytest.raises(PlacementError, match="GPU"):
        on_one_node(8, 2, replicas=3)


def test_replicas_are_sized_and_counted_node_by_node():
    # Three 4-CPU nodes: no 8-CPU replica (no node could host it), two of 4, one CPU left.
    three = place_replicas([Node(4, name="a"), Node(4, name="b"), Node(4, name="c")])
    assert (three.replicas, three.cpus_per_replica, three.torch_threads) == (2, 4, 4)
    # Uneven nodes of 2 and 4 CPUs: one replica of 4 on the larger node.
    uneven = place_replicas([Node(2, name="small"), Node(4, name="large")])
    assert (uneven.replicas, uneven.cpus_per_replica) == (1, 4)
    assert place_replicas([Node(2), Node(4)], cpus_per_replica=2).replicas == 2
    # A replica larger than every node is refused, naming the largest.
    with pytest.raises(PlacementError, match=r"largest node \(large\) has 4 CPUs"):
        place_replicas([Node(2, name="small"), Node(4, name="large")], cpus_per_replica=6)
    # GPU replicas: per node, as many as its GPUs and its CPUs allow.
    gpus = place_replicas([Node(2, 0, "head"), Node(1, 1, "w1"), Node(1, 1, "w2")])
    assert (gpus.replicas, gpus.gpus_per_replica, gpus.cpus_per_replica) == (2, 1, 1)
    with pytest.raises(PlacementError, match=r"fit no more than 1 .* \(w1\) has 2 GPU and 1 CPU"):
        place_replicas([Node(2, 0, "head"), Node(1, 2, "w1")], cpus_per_replica=1, replicas=2)


def test_gpu_replicas_leave_a_cpu_for_io_or_are_refused_naming_the_node():
    # Two replicas of 4 CPUs on a node of 8 CPUs and 2 GPUs would take every CPU: the read and
    # write tasks would never run.
    with pytest.raises(PlacementError) as refused:
        place_replicas([Node(8, 2, "gpu-node")], cpus_per_replica=4)
    message = str(refused.value)
    assert "take all 8 CPUs of gpu-node (8 CPU, 2 GPU)" in message
    assert "--cpus-per-replica 3 or --replicas 1" in message
    assert place_replicas([Node(8, 2, "gpu-node")], cpus_per_replica=3).replicas == 2
    assert place_replicas([Node(8, 2, "gpu-node")], replicas=1, cpus_per_replica=4).replicas == 1
    with pytest.raises(PlacementError, match="take all 2 CPUs"):
        on_one_node(2, 2)  # one CPU per GPU replica by default: none left
    # On several nodes the free CPU may be anywhere: a CPU head runs the reads.
    assert place_replicas([Node(2, 0, "head"), Node(4, 1, "w1")], cpus_per_replica=4).replicas == 1
    with pytest.raises(PlacementError, match=r"take all 8 CPUs of w1 \(4 CPU, 1 GPU\), w2"):
        place_replicas([Node(4, 1, "w1"), Node(4, 1, "w2")], cpus_per_replica=4)


def test_gpus_per_replica_zero_forces_cpu_placement():
    placement = on_one_node(4, 2, gpus_per_replica=0)
    assert placement.gpus_per_replica == 0 and not placement.on_gpus


def test_two_logical_gpus_get_two_replicas_each_on_its_own_gpu(
    mixed_corpus, model_path, bare_model, tmp_path
):
    """Ray's logical GPUs on this CPU box: placement is real, the model runs on CPU by setting.

    The run writes two widths with int8 codes: each text's floats and codes are the same
    whichever of the two replicas embedded it, in blocks of four rows, as a lone replica gives
    for the whole corpus in one call in another order. A rerun embeds nothing and keeps the
    calibration."""
    from jobs.pipeline.job import prepare_job, run_job
    from jobs.pipeline.settings import EmbedSettings

    with local_ray(num_cpus=3, num_gpus=2):
        settings = EmbedSettings(
            input=str(mixed_corpus["root"]),
            output=str(tmp_path / "out"),
            model="all-miniLM-l6",
            device="cpu",
            dims="384,128",
            precision="int8",
            block_rows=4,
            allow_non_matryoshka=True,
        )
        record, code = run_job(prepare_job(settings))
        rerun, rerun_code = run_job(prepare_job(settings))
    assert code == 0
    assert record["replicas"] == 2
    visible = sorted(r["cuda_visible_devices"] for r in record["per_replica"])
    assert visible == ["0", "1"]
    assert all(r["device"] == "cpu" and len(r["gpu_ids"]) == 1 for r in record["per_replica"])
    assert all(r["rows"] > 0 for r in record["per_replica"])  # both replicas did some of it
    assert record["rows_embedded"] == len(mixed_corpus["expected"])
    on_disk = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert on_disk["replicas"] == 0  # the rerun's: nothing left to do, no replica started
    assert on_disk["dims"] == [384, 128] and on_disk["precision"] == "int8"
    calibration = on_disk["calibration"]
    assert calibration["rows"] == len(mixed_corpus["expected"])
    assert np.asarray(calibration["ranges"]["128"]).shape == (2, 128)
    assert_columns_are_plain_vectors_and_codes(
        tmp_path / "out", mixed_corpus["expected"], bare_model
    )
    assert_codes_match_a_lone_replica(tmp_path / "out", mixed_corpus["expected"], model_path)
    assert rerun_code == 0 and rerun["rows_embedded"] == 0
    assert rerun["calibration"] == calibration


def assert_columns_are_plain_vectors_and_codes(output, expected, bare_model) -> None:
    """Declared Arrow types, vectors as sentence-transformers makes them, and codes that are
    sentence-transformers' own quantization with the manifest's ranges."""
    import pyarrow as pa
    from sentence_transformers.util.quantization import quantize_embeddings

    from tests.conftest import read_output, reference_vectors

    ranges = json.loads((output / "_manifest.json").read_text())["calibration"]["ranges"]
    for table in read_output(output).values():
        texts = [expected[i]["text"] for i in table.column("id").to_pylist()]
        for dim in (384, 128):
            column = table.column(f"embedding_{dim}")
            assert column.type == pa.list_(pa.float32(), dim)
            ours = np.asarray(column.to_pylist(), dtype=np.float32)
            assert np.sum(ours * reference_vectors(bare_model, texts, dim), axis=1).min() >= 0.9999
            codes = table.column(f"embedding_{dim}_int8")
            assert codes.type == pa.list_(pa.int8(), dim)
            np.testing.assert_array_equal(
                np.asarray(codes.to_pylist(), dtype=np.int8),
                quantize_embeddings(ours, precision="int8", ranges=np.asarray(ranges[str(dim)])),
            )


def assert_codes_match_a_lone_replica(output, expected, model_path) -> None:
    import torch

    from embedder import Replica, ReplicaSpec
    from embedder.outputs import output_vectors
    from tests.conftest import read_output

    tables = read_output(output)
    ids = [i for table in tables.values() for i in table.column("id").to_pylist()]
    threads = torch.get_num_threads()
    spec = ReplicaSpec(
        source=model_path, source_is_local=True, dim=384, device="cpu",
        fixed_shape_batches=True, cpu_threads=1,  # as the job's replicas had
    )  # fmt: skip
    try:
        alone = Replica(spec).embed([expected[i]["text"] for i in ids][::-1])[::-1]
    finally:
        torch.set_num_threads(threads)
    ranges = json.loads((output / "_manifest.json").read_text())["calibration"]["ranges"]
    want = output_vectors(alone, [384, 128], "int8", ranges)
    for name, matrix in want.items():
        written = [table.column(name).to_pylist() for table in tables.values()]
        got = np.asarray([row for part in written for row in part], dtype=matrix.dtype)
        np.testing.assert_array_equal(got, matrix, err_msg=name)


def test_a_lone_cpu_replica_also_encodes_on_the_io_cpu():
    assert on_one_node(2, 0).torch_threads == 2
    assert on_one_node(2, 0, cpus_per_replica=1).torch_threads == 1
    several = on_one_node(32, 0)
    assert several.replicas > 1 and several.torch_threads == several.cpus_per_replica
