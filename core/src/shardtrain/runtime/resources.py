"""What the Ray cluster has, and how a (validated) scaling config maps onto it."""

from __future__ import annotations

from dataclasses import dataclass

from shardtrain.errors import ScalingConfigError


@dataclass(frozen=True)
class ClusterShape:
    """CPUs and GPUs of each alive node."""

    node_cpus: tuple[float, ...]
    node_gpus: tuple[float, ...]

    @property
    def total_cpus(self) -> float:
        return sum(self.node_cpus)

    @property
    def total_gpus(self) -> float:
        return sum(self.node_gpus)

    def describe(self) -> str:
        return (
            f"{len(self.node_cpus)} node(s), {self.total_cpus:g} CPUs "
            f"({', '.join(f'{c:g}' for c in self.node_cpus)} per node), "
            f"{self.total_gpus:g} GPUs"
        )


def cluster_shape() -> ClusterShape:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = tuple(float(n["Resources"].get("CPU", 0)) for n in nodes)
    gpus = tuple(float(n["Resources"].get("GPU", 0)) for n in nodes)
    return ClusterShape(cpus, gpus)


@dataclass(frozen=True)
class WorkerShape:
    """The resolved request: ``num_workers`` actors of ``cpus`` CPUs and ``gpus`` GPUs."""

    num_workers: int
    cpus: float
    gpus: float


def resolve_gbdt_shape(
    num_workers: int, num_cpu_per_worker: int, use_gpu: bool | None, shape: ClusterShape
) -> WorkerShape:
    """XGBoost / LightGBM: one worker per node (or per GPU) with all of its CPUs by default.

    One multi-threaded worker per node is the fastest layout the frameworks have on CPUs:
    both thread their histogram building within a process, while ranks on one node would
    exchange histograms over sockets every split (LightGBM) or every level (XGBoost), hold one
    Python runtime each and sketch/bin their shards separately (issue 17 measured 1 x 2 against
    2 x 1 on a 2-CPU node: docs/benchmarks.md). More workers per node are what to ask for when
    one process cannot use the node well: a node with several GPUs (one worker per GPU, which
    ``use_gpu`` picks), or a large multi-socket node where one process's threads stop scaling.

    The arguments come from a validated scaling config (``shardtrain.config``)."""
    if use_gpu is None:
        use_gpu = shape.total_gpus > 0
    if use_gpu and shape.total_gpus < 1:
        raise ScalingConfigError(
            f"use_gpu=True but the cluster has no GPUs ({shape.describe()}); set use_gpu=False "
            "or None, or add GPU nodes.",
            field="use_gpu",
        )
    if use_gpu:
        workers = int(shape.total_gpus) if num_workers == -1 else num_workers
        if workers > shape.total_gpus:
            raise ScalingConfigError(
                f"{workers} GPU workers need {workers} GPUs; the cluster has {shape.describe()}.",
                field="num_workers",
            )
    else:
        workers = len(shape.node_cpus) if num_workers == -1 else num_workers
    if num_cpu_per_worker == -1:
        per_node = max(1, workers // max(len(shape.node_cpus), 1))
        cpus = max(1.0, min(shape.node_cpus, default=1) // per_node)
        if use_gpu:
            cpus = max(1.0, cpus // max(1, int(max(shape.node_gpus))))
    else:
        cpus = float(num_cpu_per_worker)
    if cpus > max(shape.node_cpus, default=0) or workers * cpus > shape.total_cpus:
        raise ScalingConfigError(
            f"{workers} workers x {cpus:g} CPUs = {workers * cpus:g} CPUs do not fit; the cluster "
            f"has {shape.describe()}. Lower num_workers or num_cpu_per_worker (or leave them "
            "at -1 to use everything).",
            field="num_workers",
        )
    return WorkerShape(workers, cpus, 1.0 if use_gpu else 0.0)


def resolve_torch_shape(
    num_nodes: int, num_workers_per_node: int, cpus: float, gpus: float, shape: ClusterShape
) -> WorkerShape:
    """PyTorch: ``num_nodes`` nodes x workers per node (-1: as many as the smallest of the
    used nodes fits), each worker with ``cpus`` CPUs and ``gpus`` GPUs. The arguments come
    from a validated ``PyTorchScalingConfig`` (``shardtrain.config``)."""
    nodes = sorted(zip(shape.node_cpus, shape.node_gpus, strict=True), reverse=True)
    if num_nodes > len(nodes):
        raise ScalingConfigError(
            f"num_nodes={num_nodes} but the cluster has {shape.describe()}; lower num_nodes or "
            "add nodes.",
            field="num_nodes",
        )
    if gpus > 0 and shape.total_gpus == 0:
        raise ScalingConfigError(
            f"workers ask for {gpus:g} GPU(s) each but the cluster has no GPUs "
            f"({shape.describe()}); set num_gpus=0.",
            field="num_gpus",
        )
    used = nodes[:num_nodes]
    fits = [
        min(c // cpus if cpus else float("inf"), g // gpus if gpus else float("inf"))
        for c, g in used
    ]
    if num_workers_per_node == -1:
        per_node = int(min(fits))
        if per_node < 1:
            raise ScalingConfigError(
                f"no node can hold a worker of {cpus:g} CPUs and {gpus:g} GPUs; the cluster "
                f"has {shape.describe()}.",
                field="resource_requirements_per_worker",
            )
    else:
        per_node = num_workers_per_node
        if per_node > min(fits):
            raise ScalingConfigError(
                f"{num_nodes} node(s) x {per_node} workers x ({cpus:g} CPUs, {gpus:g} GPUs) do "
                f"not fit: the cluster has {shape.describe()}. Lower num_workers_per_node or "
                "the resources per worker.",
                field="num_workers_per_node",
            )
    return WorkerShape(num_nodes * per_node, float(cpus), float(gpus))
