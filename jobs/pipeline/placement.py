"""How many replicas, and what each one reserves, from the cluster's resources."""

from __future__ import annotations

from dataclasses import dataclass

# CPUs a local run keeps free for Ray Data's read and write tasks: with none free, the read
# task never gets scheduled and the job hangs without an error.
CPUS_KEPT_FOR_IO = 1
MAX_DEFAULT_CPU_THREADS = 8


class PlacementError(ValueError):
    """The requested replicas cannot fit the cluster."""


@dataclass(frozen=True)
class Placement:
    replicas: int
    gpus_per_replica: float
    cpus_per_replica: int
    # Threads torch may use on a CPU replica. A lone CPU replica also gets the CPU kept for
    # I/O: Ray's reservation keeps read and write tasks schedulable, and since they run in
    # short bursts, leaving that core idle in between would cost a whole core of encoding.
    torch_threads: int = 1

    @property
    def on_gpus(self) -> bool:
        return self.gpus_per_replica > 0


def place_replicas(
    cluster_cpus: float,
    cluster_gpus: float,
    replicas: int | None = None,
    gpus_per_replica: float | None = None,
    cpus_per_replica: int | None = None,
) -> Placement:
    """One replica per GPU when there are GPUs; otherwise CPU replicas that leave room for I/O."""
    gpus_each = gpus_per_replica if gpus_per_replica is not None else (1 if cluster_gpus else 0)
    if gpus_each > 0:
        count = replicas or int(cluster_gpus // gpus_each)
        if count < 1 or count * gpus_each > cluster_gpus:
            raise PlacementError(
                f"{count or 1} replica(s) x {gpus_each} GPU need more than the cluster's "
                f"{cluster_gpus:g} GPU(s); lower --replicas or set --gpus-per-replica 0 for CPU."
            )
        return Placement(count, gpus_each, cpus_per_replica or 1, cpus_per_replica or 1)
    spare = int(cluster_cpus) - CPUS_KEPT_FOR_IO
    threads = cpus_per_replica or max(1, min(MAX_DEFAULT_CPU_THREADS, spare))
    count = replicas or max(1, spare // threads)
    if count * threads > max(spare, 1):
        raise PlacementError(
            f"{count} CPU replica(s) x {threads} CPU need {count * threads} CPUs, but only "
            f"{max(spare, 1)} of the cluster's {cluster_cpus:g} can go to replicas "
            f"({CPUS_KEPT_FOR_IO} stays free for reading and writing, or the job would hang)."
        )
    shares_io_cpu = count == 1 and cpus_per_replica is None
    return Placement(count, 0, threads, threads + CPUS_KEPT_FOR_IO if shares_io_cpu else threads)
