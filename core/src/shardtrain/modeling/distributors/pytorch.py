"""PyTorch DDP on Ray with the vendor's context API: ``PyTorchDistributor`` and ``get_context``.

Each rank is a Ray actor (one placement-group bundle per node, so node and local ranks are
exact) with MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE set:
``dist.init_process_group(backend=...)`` with the default ``env://`` works in user code as
in the vendor's examples. shardtrain never initialises a process group itself (so it is never
initialised twice) and destroys one the user left behind, since workers stay warm.

After ``train_func`` returns on every rank, rank 0's model folder comes back to the driver
and is published to the stage with its manifest, through the shared run engine
(``runtime.run``). The rank-side code (``Context``, ``get_context``) is in ``pytorch_worker``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardtrain.config import FailureConfig, PyTorchScalingConfig, WorkerResourceConfig
from shardtrain.data.data_connector import as_connector
from shardtrain.data.sharding import shard
from shardtrain.errors import ConfigError
from shardtrain.model.artifact import ModelArtifact, check_request_id
from shardtrain.model.frameworks import PYTORCH
from shardtrain.modeling.distributors.pytorch_worker import (
    ArtifactManager,
    Context,
    DatasetShard,
    Master,
    MetricsReporter,
    TorchRankResult,
    get_context,
    master_rank,
    run_rank,
    unpack,
)
from shardtrain.runtime import worker_group
from shardtrain.runtime.cluster import connect
from shardtrain.runtime.events import RankMetrics, Snapshot
from shardtrain.runtime.resources import cluster_shape, resolve_torch_shape
from shardtrain.runtime.run import Checkpoint, Run, RunPlan, emit

__all__ = [
    "ArtifactManager",
    "Context",
    "DatasetShard",
    "MetricsReporter",
    "PyTorchDistributor",
    "PyTorchDistributorResult",
    "PyTorchScalingConfig",
    "WorkerResourceConfig",
    "get_context",
]


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
        """Train on every worker; publish rank 0's model folder; return where it went.

        A ``ShardedDataConnector(equal=True)`` in ``dataset_map`` gives every rank the same
        number of rows.
        """
        PYTORCH.require()  # on the driver, before any worker starts
        if request_id is not None:
            check_request_id(request_id)
        try:
            json.dumps(hyper_params or {}, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"hyper_params must be JSON values (they are recorded with the model): {exc}."
            ) from None
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
        run = Run(
            RunPlan.open(
                artifact_stage_location,
                request_id,
                session=session,
                storage_options=storage_options,
                checkpoint_every=self.failure_config.checkpoint_frequency,
                checkpoint_name="checkpoint.tar",
                identity={
                    "framework": PYTORCH.name,
                    "train_func": f"{getattr(self.train_func, '__module__', '')}."
                    f"{getattr(self.train_func, '__qualname__', repr(self.train_func))}",
                    "hyper_params": hyper_params or {},
                    "data": {n: c.describe() for n, c in connectors.items()},
                },
            ),
            self.failure_config,
            unit="checkpoint",
        )
        metrics: dict[str, float] = {}

        def on_progress(events: list[RankMetrics], snapshot: Snapshot | None) -> None:
            for event in events:
                metrics.clear()
                metrics.update(event.metrics)
                emit(event.format())
            if snapshot is not None:
                run.save(Checkpoint(snapshot.step, snapshot.data))

        strategy = "STRICT_SPREAD" if nodes > 1 else "PACK"
        # where rank 0's folder is published (the artifact's uri), for get_artifact_manager()
        stage_location = run.plan.stage.child_uri(f"model/{run.plan.request_id}")

        def attempt(start: Checkpoint) -> list[TorchRankResult]:
            with worker_group.lease(
                shape, strategy, workers_per_bundle=per_node, request_id=run.plan.request_id
            ) as group:
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
                        checkpoint=start.data,
                        checkpoint_step=start.step,
                        gpus=bool(shape.gpus),
                        stage_location=stage_location,
                    )
                    for r in range(shape.num_workers)
                ]
                return group.run(run_rank, kwargs, on_progress, have_step=start.step)

        packed = run.execute(attempt)[0].model
        assert packed is not None  # rank 0 always returns its folder as a tar
        metrics = dict(metrics)
        artifact = run.plan.publish(
            PYTORCH.name,
            lambda folder: unpack(packed, folder),
            metrics={"train": metrics} if metrics else {},
            params=dict(hyper_params or {}),
            num_rows={n: c.num_rows for n, c in connectors.items()},
            source={n: c.describe() for n, c in connectors.items()},
        )
        if artifact is None:
            emit("train_func saved nothing under get_model_dir() on rank 0: nothing to publish.")
            return PyTorchDistributorResult(None, metrics, None)
        return PyTorchDistributorResult(artifact.uri, metrics, artifact)

    @staticmethod
    def _master(group) -> Master:
        import ray

        return ray.get(group.workers[0].run.remote(0, group.world_size, master_rank, {}))
