"""PyTorch's rank-side code: the ``Context`` a training function reads through
``get_context()``, and the rank that sets up the DDP environment, runs ``train_func`` and
packs rank 0's model folder. torch itself is imported only where it is used, so this module
(and ``get_context``) imports without it.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardtrain.data.data_connector import DataConnector
from shardtrain.errors import ConfigError, OutsideWorkerError, StageError
from shardtrain.runtime.events import RankMetrics
from shardtrain.stage.base import local_files

# -- the context, inside train_func ---------------------------------------------------------------


@dataclass(frozen=True)
class TorchRankResult:
    """One rank's outcome: rank 0's model folder as a tar (None on other ranks)."""

    model: bytes | None


class MetricsReporter:
    """``log_metrics(dict)``: rank 0's metrics reach the driver (its last ones are the result)."""

    def __init__(self, reporter, rank: int) -> None:
        self._reporter, self._rank = reporter, rank

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        clean = {str(k): float(v) for k, v in dict(metrics).items()}
        self._reporter.report(RankMetrics(self._rank, clean))


class DatasetShard:
    """A dataset_map value inside ``train_func``: ``get_shard()`` is this rank's connector."""

    def __init__(self, connector: DataConnector) -> None:
        self._connector = connector

    def get_shard(self) -> DataConnector:
        return self._connector


def pack(folder: Path) -> bytes:
    """The files of a model or checkpoint folder as a tar: a link inside the folder is stored
    as the file it names; a link out of it is refused (``stage.base.local_files``)."""
    buffer = io.BytesIO()
    try:
        files = local_files(folder)
    except StageError as exc:
        raise ConfigError(exc.message, path=exc.details.get("path")) from None
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(folder).as_posix())
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")


class ArtifactManager:
    """The run's artifacts as a rank sees them (``context.get_artifact_manager()``).

    The vendor's artifact manager moves a training function's files to the run's stage
    location. On a stage the closest meaning is: what rank 0 saves here is published to
    ``<stage>/model/<request_id>/`` with the model when ``train_func`` has returned on every
    rank (files first, the manifest last, so no reader sees half of it); checkpoints go to the
    stage as the run goes and come back after a restart. Other ranks' saved files stay on
    their worker and are removed with it, as their ``get_model_dir()`` is.
    """

    def __init__(self, context: Context, stage_location: str | None) -> None:
        self._context = context
        self._stage_location = stage_location

    def get_stage_location(self) -> str | None:
        """Where rank 0's artifacts are published: ``<stage>/model/<request_id>`` (the
        ``get_model_dir()`` of the run's result); None outside a run."""
        return self._stage_location

    def get_local_dir(self) -> str:
        """The local folder published from rank 0 (``context.get_model_dir()``)."""
        return self._context.get_model_dir()

    def save_artifact(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Copy a file or folder into the published folder, as ``name`` (a relative path;
        default: its own name); returns where the copy is."""
        source = Path(path)
        if not source.exists():
            raise ConfigError(f"save_artifact: {source} does not exist.", path=str(source))
        target = Path(name if name is not None else source.name)
        if target.is_absolute() or ".." in target.parts or not target.parts:
            raise ConfigError(
                f"save_artifact: name {str(name)!r} must be a relative path inside the model "
                "folder (no '..').",
                name=name,
            )
        destination = Path(self.get_local_dir()) / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            shutil.copy2(source, destination)
        return str(destination)

    def list_artifacts(self) -> list[str]:
        """The files saved so far, relative to the published folder."""
        root = Path(self.get_local_dir())
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def save_checkpoint(self, folder: str | os.PathLike) -> None:
        """``context.save_checkpoint``: the run's latest checkpoint, kept on the stage."""
        self._context.save_checkpoint(folder)

    def get_checkpoint(self) -> str | None:
        """``context.get_checkpoint``: the latest checkpoint after a restart, or None."""
        return self._context.get_checkpoint()


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
        stage_location: str | None = None,
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
        self._checkpoint_dirs: list[str] = []  # handed out by get_checkpoint; removed at the end
        self._artifacts = ArtifactManager(self, stage_location)

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

    def get_artifact_manager(self) -> ArtifactManager:
        """The run's artifacts on the stage: files published with the model, checkpoints
        (see ``ArtifactManager``)."""
        return self._artifacts

    def save_checkpoint(self, folder: str | os.PathLike) -> None:
        """Keep ``folder`` as the run's latest checkpoint (rank 0's counts; others no-op)."""
        if self._rank != 0:
            return
        self._checkpoint_steps += 1
        self._reporter.checkpoint(self._checkpoint_steps, pack(Path(folder)))

    def get_checkpoint(self) -> str | None:
        """A local folder holding the latest checkpoint of this run, or None on a first try."""
        if self._checkpoint is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="shardtrain-ckpt-"))
        self._checkpoint_dirs.append(str(folder))
        unpack(self._checkpoint, folder)
        return str(folder)

    def remove_local_folders(self) -> None:
        """Remove the model folder and the checkpoint folders this rank handed out: a warm
        worker runs many fits, and each resumed one would otherwise leave one behind."""
        for folder in (self._model_dir, *self._checkpoint_dirs):
            shutil.rmtree(folder, ignore_errors=True)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


_current_context: Context | None = None


def get_context() -> Context:
    """The calling rank's ``Context``; only inside a ``PyTorchDistributor`` training function."""
    if _current_context is None:
        raise OutsideWorkerError(
            "get_context() only works inside a PyTorchDistributor training "
            "function (train_func), on one of its workers."
        )
    return _current_context


# -- the ranks -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Master:
    """Where the process group's store listens: rank 0's node address and a free port."""

    ip: str
    port: int


def master_rank(reporter) -> Master:
    """Rank 0's address and a free port for the process group's store."""
    import ray

    return Master(ray.util.get_node_ip_address(), _free_port())


def run_rank(
    reporter,
    *,
    rank: int,
    world_size: int,
    workers_per_node: int,
    master: Master,
    train_func,
    hyper_params: dict[str, Any] | None,
    shards: dict[str, DataConnector],
    checkpoint: bytes | None,
    checkpoint_step: int,
    gpus: bool,
    stage_location: str | None = None,
) -> TorchRankResult:
    """One rank: set the DDP environment and the context, run train_func, clean up."""
    global _current_context
    env = {
        "MASTER_ADDR": master.ip,
        "MASTER_PORT": str(master.port),
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
        master_addr=master.ip,
        master_port=master.port,
        hyper_params=hyper_params,
        dataset_map={name: DatasetShard(s) for name, s in shards.items()},
        model_dir=model_dir,
        reporter=reporter,
        checkpoint=checkpoint,
        checkpoint_step=checkpoint_step,
        gpus=gpus,
        stage_location=stage_location,
    )
    context = _current_context
    try:
        train_func()
        return TorchRankResult(pack(Path(model_dir)) if rank == 0 else None)
    finally:
        _current_context = None
        _destroy_process_group()
        context.remove_local_folders()
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
