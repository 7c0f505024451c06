"""How many replicas, and what each one reserves, from the resources of each node.

A replica is one Ray actor: everything it reserves must fit one node. So replicas are sized
and counted node by node, never from the cluster's totals (three 4-CPU nodes hold no 8-CPU
replica, and a job that asked for one would wait forever).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# CPUs the cluster keeps free for Ray Data's read and write tasks: with none free, the read
# task never gets scheduled and the job hangs without an error.
CPUS_KEPT_FOR_IO = 1
MAX_DEFAULT_CPU_THREADS = 8


class PlacementError(ValueError):
    """The requested replicas cannot fit the cluster."""


@dataclass(frozen=True)
class Node:
    """What one alive Ray node offers."""

    cpus: float
    gpus: float = 0.0
    name: str = ""  # how messages name it (its address)


@dataclass(frozen=True)
class Placement:
    replicas: int
    gpus_per_replica: float
    cpus_per_replica: int
    # Threads torch may use on a CPU replica. A lone CPU replica on a lone node also gets the
    # CPU kept for I/O: Ray's reservation keeps read and write tasks schedulable, and since
    # they run in short bursts, leaving that core idle in between would cost a whole core.
    torch_threads: int = 1
    # What a read or a write task holds, and how many read tasks may run at once (None: as
    # many as fit). See io_share().
    io_cpus: float = 1.0
    read_tasks: int | None = None

    @property
    def on_gpus(self) -> bool:
        return self.gpus_per_replica > 0


def place_replicas(
    nodes: list[Node],
    replicas: int | None = None,
    gpus_per_replica: float | None = None,
    cpus_per_replica: int | None = None,
) -> Placement:
    """One replica per GPU when there are GPUs; otherwise CPU replicas that leave room for
    I/O. Each replica fits the node that hosts it."""
    total_gpus = sum(node.gpus for node in nodes)
    gpus_each = gpus_per_replica if gpus_per_replica is not None else (1 if total_gpus else 0)
    if gpus_each > 0:
        return place_on_gpus(nodes, replicas, gpus_each, cpus_per_replica or 1)
    return place_on_cpus(nodes, replicas, cpus_per_replica)


def place_on_gpus(nodes: list[Node], replicas: int | None, gpus_each: float, cpus_each: int):
    # A node hosts as many replicas as both its GPUs and its CPUs allow.
    capacity = sum(min(int(n.gpus // gpus_each), int(n.cpus // cpus_each)) for n in nodes)
    count = replicas or capacity
    if count < 1 or count > capacity:
        largest = max(nodes, key=lambda n: n.gpus)
        raise PlacementError(
            f"{count or 1} replica(s) x {gpus_each:g} GPU and {cpus_each} CPU fit no more than "
            f"{capacity} on this cluster's {sum(n.gpus for n in nodes):g} GPU(s) (the largest "
            f"node{describe(largest)} has {largest.gpus:g} GPU and {largest.cpus:g} CPU); lower "
            "--replicas or set --gpus-per-replica 0 for CPU."
        )
    check_room_for_io(nodes, count, cpus_each)
    return io_share(nodes, Placement(count, gpus_each, cpus_each, cpus_each))


def io_share(nodes: list[Node], placement: Placement) -> Placement:
    """With a lone CPU left beside the replicas, reading and writing share it: each task holds
    half of it and reads run one at a time, so that a write always fits next to a read.

    Ray Data gives a free CPU to the stage with the least data waiting in the object store.
    When the replicas wait for reads, as fast GPUs do, that is always the read stage: with one
    CPU for both, every block would be embedded and held before the first write (measured:
    100 blocks of 200,000 rows, all committed in the run's last 4 s), so a crash would lose
    all of it and the progress line would stand still. With two free CPUs or more, Ray Data's
    per-stage reservation already keeps writes going.

    A lone CPU replica that runs torch threads on that CPU too keeps it whole: such a replica
    is rarely fed too slowly, and a read and a write beside its threads slowed it by a third
    (docs/benchmarks.md)."""
    free = sum(n.cpus for n in nodes) - placement.replicas * placement.cpus_per_replica
    threads_on_it = placement.torch_threads > placement.cpus_per_replica
    if free >= 2 * CPUS_KEPT_FOR_IO or threads_on_it:
        return placement
    return replace(placement, io_cpus=free / 2, read_tasks=1)


def no_more_replicas_than_blocks(placement: Placement, blocks: int) -> Placement:
    """A replica per block at most: a rerun with one block left loads one model, not one per
    GPU (the others would load theirs and embed nothing, and Ray Data warns about the pool)."""
    return replace(placement, replicas=min(placement.replicas, blocks))


def check_room_for_io(nodes: list[Node], count: int, cpus_each: int) -> None:
    """GPU replicas must leave a CPU free for Ray Data's read and write tasks, as CPU
    replicas do: on a lone node, on that node; on several, anywhere in the cluster (those
    tasks run on any node, e.g. a CPU head). Otherwise the job would hang without an error."""
    total = int(sum(n.cpus for n in nodes))
    if total - count * cpus_each >= CPUS_KEPT_FOR_IO:
        return
    hosts = [n for n in nodes if n.gpus > 0]
    where = ", ".join(f"{n.name or 'the node'} ({n.cpus:g} CPU, {n.gpus:g} GPU)" for n in hosts)
    fewer_cpus = (total - CPUS_KEPT_FOR_IO) // count
    fewer_replicas = (total - CPUS_KEPT_FOR_IO) // cpus_each
    remedies = [f"--cpus-per-replica {fewer_cpus}"] if fewer_cpus >= 1 else []
    remedies += [f"--replicas {fewer_replicas}"] if fewer_replicas >= 1 else []
    raise PlacementError(
        f"{count} GPU replica(s) x {cpus_each} CPU would take all {total} CPUs of {where}: "
        f"{CPUS_KEPT_FOR_IO} must stay free for reading and writing, or the job would hang. "
        f"Use {' or '.join(remedies) or 'a node with more CPUs'}."
    )


def place_on_cpus(nodes: list[Node], replicas: int | None, cpus_per_replica: int | None):
    largest = max(nodes, key=lambda n: n.cpus)
    total = int(sum(n.cpus for n in nodes))
    spare = total - CPUS_KEPT_FOR_IO
    # On a lone node the CPU kept for I/O comes out of that node; on several, any node has it.
    room = int(largest.cpus) - (CPUS_KEPT_FOR_IO if len(nodes) == 1 else 0)
    size = cpus_per_replica or max(1, min(MAX_DEFAULT_CPU_THREADS, room))
    if size > largest.cpus:
        raise PlacementError(
            f"a replica of {size} CPUs fits no node: the largest node{describe(largest)} has "
            f"{largest.cpus:g} CPUs. Lower --cpus-per-replica."
        )
    capacity = min(sum(int(n.cpus // size) for n in nodes), max(spare, 0) // size)
    count = replicas or max(1, capacity)
    if count > max(capacity, 1):
        raise PlacementError(
            f"{count} CPU replica(s) x {size} CPU need {count * size} CPUs, but only "
            f"{max(spare, 1)} of the cluster's {total} can go to replicas "
            f"({CPUS_KEPT_FOR_IO} stays free for reading and writing, or the job would hang), "
            f"and each must fit one node (the largest{describe(largest)} has {largest.cpus:g})."
        )
    lone = count == 1 and cpus_per_replica is None and len(nodes) == 1
    return io_share(nodes, Placement(count, 0, size, size + CPUS_KEPT_FOR_IO if lone else size))


def describe(node: Node) -> str:
    return f" ({node.name})" if node.name else ""
