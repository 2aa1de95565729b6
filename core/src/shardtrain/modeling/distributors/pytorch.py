"""PyTorch DDP on Ray with the vendor's context API: ``PyTorchDistributor`` and ``get_context``.

Each rank is a Ray actor (one placement-group bundle per node, so node and local ranks are
exact) with MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE set:
``dist.init_process_group(backend=...)`` with the default ``env://`` works in user code as
in the vendor's examples. shardtrain never initialises a process group itself (so it is never
initialised twice) and destroys one the user left behind, since workers stay warm.

After ``train_func`` returns on every rank, rank 0's model folder comes back to the driver
and is published to the stage with its manifest.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardtrain.artifact import ModelArtifact
from shardtrain.config import FailureConfig
from shardtrain.data.data_connector import DataConnector
from shardtrain.errors import ConfigError, ScalingConfigError
from shardtrain.modeling.distributors._gbdt import as_connector, emit, plan_run, shard
from shardtrain.stage.publish import publish_model


@dataclass(frozen=True)
class WorkerResourceConfig:
    """Resources of one worker. Example: ``WorkerResourceConfig(num_cpus=0, num_gpus=4)``."""

    num_cpus: float = 1
    num_gpus: float = 0

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ScalingConfigError(
                    f"{name} must be a number >= 0, got {value!r}.", field=name
                )


@dataclass(frozen=True)
class PyTorchScalingConfig:
    """Nodes, workers per node (-1: as many as fit) and resources per worker.

    Example:
        >>> PyTorchScalingConfig(num_nodes=1, num_workers_per_node=2)
        PyTorchScalingConfig(num_nodes=1, num_workers_per_node=2, resource_requirements_per_worker=None)
    """

    num_nodes: int = 1
    num_workers_per_node: int = -1
    resource_requirements_per_worker: WorkerResourceConfig | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.num_nodes, bool)
            or not isinstance(self.num_nodes, int)
            or self.num_nodes < 1
        ):
            raise ScalingConfigError(
                f"num_nodes must be a positive integer, got {self.num_nodes!r}.", field="num_nodes"
            )
        value = self.num_workers_per_node
        if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
            raise ScalingConfigError(
                f"num_workers_per_node must be a positive integer or -1, got {value!r}.",
                field="num_workers_per_node",
            )


# -- the context, inside train_func ---------------------------------------------------------------


class MetricsReporter:
    """``log_metrics(dict)``: rank 0's metrics reach the driver (its last ones are the result)."""

    def __init__(self, reporter, rank: int) -> None:
        self._reporter, self._rank = reporter, rank

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        clean = {str(k): float(v) for k, v in dict(metrics).items()}
        self._reporter.report({"rank": self._rank, "metrics": clean})


class DatasetShard:
    """A dataset_map value inside ``train_func``: ``get_shard()`` is this rank's connector."""

    def __init__(self, connector: DataConnector) -> None:
        self._connector = connector

    def get_shard(self) -> DataConnector:
        return self._connector


def _pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _unpack(data: bytes, folder: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")


class Context:
    """What a rank knows about itself and its run (see ``get_context``)."""

    def __init__(
        self,
        *,
        rank,
        world_size,
        local_rank,
        local_world_size,
        node_rank,
        master_addr,
        master_port,
        hyper_params,
        dataset_map,
        model_dir,
        reporter,
        checkpoint: bytes | None,
        checkpoint_step: int,
        gpus: bool,
    ) -> None:
        self._rank, self._world_size = rank, world_size
        self._local_rank, self._local_world_size = local_rank, local_world_size
        self._node_rank = node_rank
        self._master_addr, self._master_port = master_addr, master_port
        self._hyper_params = dict(hyper_params or {})
        self._dataset_map = dataset_map
        self._model_dir = model_dir
        self._reporter = reporter
        self._metrics = MetricsReporter(reporter, rank)
        self._checkpoint = checkpoint
        self._checkpoint_steps = checkpoint_step  # continues across restarts
        self._gpus = gpus

    def get_world_size(self) -> int:
        return self._world_size

    def get_rank(self) -> int:
        return self._rank

    def get_local_rank(self) -> int:
        return self._local_rank

    def get_local_world_size(self) -> int:
        return self._local_world_size

    def get_node_rank(self) -> int:
        return self._node_rank

    def get_master_addr(self) -> str:
        return self._master_addr

    def get_master_port(self) -> int:
        return self._master_port

    def get_default_backend(self) -> str:
        return "nccl" if self._gpus and _cuda_available() else "gloo"

    def get_supported_backends(self) -> list[str]:
        return ["nccl", "gloo"] if self._gpus and _cuda_available() else ["gloo"]

    def get_hyper_params(self) -> dict[str, Any]:
        return dict(self._hyper_params)

    def get_dataset_map(self) -> dict[str, DatasetShard]:
        return dict(self._dataset_map)

    def get_model_dir(self) -> str:
        """A local folder on this worker; rank 0's is published to the stage after the run."""
        return self._model_dir

    def get_metrics_reporter(self) -> MetricsReporter:
        return self._metrics

    def save_checkpoint(self, folder: str | os.PathLike) -> None:
        """Keep ``folder`` as the run's latest checkpoint (rank 0's counts; others no-op)."""
        if self._rank != 0:
            return
        self._checkpoint_steps += 1
        self._reporter.checkpoint(self._checkpoint_steps, _pack(Path(folder)))

    def get_checkpoint(self) -> str | None:
        """A local folder holding the latest checkpoint of this run, or None on a first try."""
        if self._checkpoint is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="shardtrain-ckpt-"))
        _unpack(self._checkpoint, folder)
        return str(folder)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


_current_context: Context | None = None


def get_context() -> Context:
    """The calling rank's ``Context``; only inside a ``PyTorchDistributor`` training function."""
    if _current_context is None:
        raise RuntimeError(
            "get_context() only works inside a PyTorchDistributor training "
            "function (train_func), on one of its workers."
        )
    return _current_context


# -- the ranks -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _master_rank(reporter) -> dict[str, Any]:
    import ray

    return {"ip": ray.util.get_node_ip_address(), "port": _free_port()}


def _run_rank(
    reporter,
    *,
    rank,
    world_size,
    workers_per_node,
    master,
    train_func,
    hyper_params,
    shards,
    checkpoint,
    checkpoint_step,
    gpus,
):
    """One rank: set the DDP environment and the context, run train_func, clean up."""
    global _current_context
    env = {
        "MASTER_ADDR": master["ip"],
        "MASTER_PORT": str(master["port"]),
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank % workers_per_node),
        "LOCAL_WORLD_SIZE": str(workers_per_node),
        "NODE_RANK": str(rank // workers_per_node),
        "GROUP_RANK": str(rank // workers_per_node),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    model_dir = tempfile.mkdtemp(prefix=f"shardtrain-model-r{rank}-")
    _current_context = Context(
        rank=rank,
        world_size=world_size,
        local_rank=rank % workers_per_node,
        local_world_size=workers_per_node,
        node_rank=rank // workers_per_node,
        master_addr=master["ip"],
        master_port=master["port"],
        hyper_params=hyper_params,
        dataset_map={name: DatasetShard(s) for name, s in shards.items()},
        model_dir=model_dir,
        reporter=reporter,
        checkpoint=checkpoint,
        checkpoint_step=checkpoint_step,
        gpus=gpus,
    )
    try:
        train_func()
        return {"model": _pack(Path(model_dir)) if rank == 0 else None}
    finally:
        _current_context = None
        _destroy_process_group()
        shutil.rmtree(model_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _destroy_process_group() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- the driver ------------------------------------------------------------------------------------


@dataclass
class PyTorchDistributorResult:
    """What ``run`` returns: where the model went, rank 0's last metrics, the artifact."""

    model_dir: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    artifact: ModelArtifact | None = None

    def get_model_dir(self) -> str | None:
        """The stage URI of the published model (``<stage>/model/<request_id>``)."""
        return self.model_dir

    def get_metrics(self) -> dict[str, float]:
        return dict(self.metrics)

    def get_artifact(self) -> ModelArtifact | None:
        return self.artifact


class PyTorchDistributor:
    """Runs ``train_func`` as DDP on Ray workers and publishes rank 0's model folder.

    Args:
        train_func: a function of no arguments; it calls ``get_context()`` for its rank, data
            and model folder.
        scaling_config: a ``PyTorchScalingConfig`` (default: every CPU (or GPU) of one node,
            one worker each).
        failure_config: a ``FailureConfig``; on a worker death the whole group restarts and
            ``context.get_checkpoint()`` hands back the last ``save_checkpoint`` folder.

    Example:
        >>> result = PyTorchDistributor(train_func).run(      # doctest: +SKIP
        ...     dataset_map={"train": ShardedDataConnector.from_parquet("data/")},
        ...     hyper_params={"lr": 0.01})
        >>> result.get_model_dir(), result.get_metrics()      # doctest: +SKIP
    """

    def __init__(
        self,
        train_func: Callable[[], Any],
        scaling_config: PyTorchScalingConfig | None = None,
        failure_config: FailureConfig | None = None,
    ) -> None:
        if not callable(train_func):
            raise ConfigError(f"train_func must be callable, got {type(train_func).__name__}.")
        self.train_func = train_func
        self.scaling_config = scaling_config or PyTorchScalingConfig()
        self.failure_config = failure_config or FailureConfig()

    def _shape(self):
        from shardtrain.runtime.resources import cluster_shape, resolve_torch_shape

        shape = cluster_shape()
        resources = self.scaling_config.resource_requirements_per_worker
        if resources is None:
            resources = WorkerResourceConfig(
                num_cpus=0 if shape.total_gpus else 1, num_gpus=1 if shape.total_gpus else 0
            )
        return resolve_torch_shape(
            self.scaling_config.num_nodes,
            self.scaling_config.num_workers_per_node,
            resources.num_cpus,
            resources.num_gpus,
            shape,
        )

    def run(
        self,
        *,
        dataset_map: dict[str, Any] | None = None,
        hyper_params: dict[str, Any] | None = None,
        artifact_stage_location: str | None = None,
        request_id: str | None = None,
        session: Any = None,
        storage_options: dict | None = None,
    ) -> PyTorchDistributorResult:
        """Train on every worker; publish rank 0's model folder; return where it went."""
        from shardtrain.runtime import worker_group
        from shardtrain.runtime.cluster import connect

        connectors = {
            name: as_connector(data, f"dataset_map[{name!r}]")
            for name, data in (dataset_map or {}).items()
        }
        connect()
        shape = self._shape()
        nodes = self.scaling_config.num_nodes
        per_node = shape.num_workers // nodes
        shards = {
            name: shard(c, shape.num_workers, f"dataset_map[{name!r}]")
            for name, c in connectors.items()
        }
        plan = plan_run(
            artifact_stage_location,
            request_id,
            session,
            storage_options,
            self.failure_config.checkpoint_frequency,
            "checkpoint.tar",
        )
        step, checkpoint, _ = plan.checkpoints.load() if plan.checkpoints else (0, None, {})
        latest = {"step": step, "data": checkpoint, "metrics": {}}

        def on_progress(events, new_checkpoint):
            for event in events:
                latest["metrics"] = event["metrics"]
                emit(
                    f"[rank {event['rank']}] "
                    + " ".join(f"{k}={v:.6g}" for k, v in event["metrics"].items())
                )
            if new_checkpoint is not None:
                latest["step"], latest["data"] = new_checkpoint
                if plan.checkpoints is not None:
                    plan.checkpoints.save(new_checkpoint[0], new_checkpoint[1], {})

        strategy = "STRICT_SPREAD" if nodes > 1 else "PACK"

        def attempt():
            with worker_group.lease(shape, strategy, workers_per_bundle=per_node) as group:
                master = self._master(group)
                kwargs = [
                    dict(
                        rank=r,
                        world_size=shape.num_workers,
                        workers_per_node=per_node,
                        master=master,
                        train_func=self.train_func,
                        hyper_params=hyper_params,
                        shards={n: s[r] for n, s in shards.items()},
                        checkpoint=latest["data"],
                        checkpoint_step=latest["step"],
                        gpus=bool(shape.gpus),
                    )
                    for r in range(shape.num_workers)
                ]
                return group.run(_run_rank, kwargs, on_progress, have_step=latest["step"])

        def on_restart(exc, failures):
            emit(
                f"{exc} Restarting the worker group ({failures}/"
                f"{self.failure_config.max_failures}) from checkpoint {latest['step']}."
            )

        results = worker_group.with_restarts(attempt, self.failure_config.max_failures, on_restart)
        return self._publish(plan, results[0]["model"], latest["metrics"], hyper_params, connectors)

    @staticmethod
    def _master(group) -> dict[str, Any]:
        import ray

        return ray.get(group.workers[0].run.remote(0, group.world_size, _master_rank, {}))

    def _publish(self, plan, packed: bytes, metrics, hyper_params, connectors):
        with tempfile.TemporaryDirectory(prefix="shardtrain-publish-") as tmp:
            _unpack(packed, Path(tmp))
            files = sorted(
                p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file()
            )
            if not files:
                emit(
                    "train_func saved nothing under get_model_dir() on rank 0: nothing to publish."
                )
                return PyTorchDistributorResult(None, metrics, None)
            model_file = next((f for f in ("model.pt", "model.pth") if f in files), None)
            artifact = publish_model(
                tmp,
                framework="pytorch",
                stage=plan.stage,
                request_id=plan.request_id,
                model_file=model_file,
                metrics={"train": metrics} if metrics else {},
                params=dict(hyper_params or {}),
                num_rows={n: c.num_rows for n, c in connectors.items()},
                source={n: c.describe() for n, c in connectors.items()},
            )
        if plan.checkpoints is not None:
            plan.checkpoints.clear()
        return PyTorchDistributorResult(artifact.uri, metrics, artifact)
