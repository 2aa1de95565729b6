"""PyTorch DDP cases: the same MLP loop under torch.multiprocessing, PyTorchDistributor and
Ray Train's TorchTrainer, on the same Parquet file.

An MLP (32 -> 64 -> 1), 2 epochs, batch 1024, SGD, 2 ranks with gloo and one torch thread
each. Every case includes start-up (spawning processes or starting Ray workers, and the
process group) and ends with rank 0's weights on disk; the held-out metric is the RMSE of
those weights on the holdout file.

- ``torch.multiprocessing``: ``mp.spawn``; each rank reads its half of the file with pyarrow
  into tensors (the fastest plain way to feed it).
- shardtrain: ``PyTorchDistributor`` streams each rank's shard through
  ``to_torch_dataset(batch_size=1024)``.
- Ray Train: ``TorchTrainer`` as documented: ``ray.data.read_parquet`` as the dataset,
  ``prepare_model`` and ``get_dataset_shard().iter_torch_batches`` each epoch, 0.5 CPU per
  worker (see bench.gbdt for why), the state dict reported once at the end.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.data import COLUMNS, feature_names, rmse
from bench.gbdt import RAY_TRAIN_CPU_PER_WORKER, report_model_once

EPOCHS = 2
BATCH = 1024


def _model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(COLUMNS, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    )


def _train(model, batches) -> None:
    """The loop every case runs; ``model`` is already wrapped in DDP."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(EPOCHS):
        for x, y in batches():
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _holdout_rmse(state_dict, holdout) -> float:
    import torch

    model = _model()
    model.load_state_dict(state_dict)
    x, y = holdout
    with torch.no_grad():
        return rmse(model(torch.from_numpy(x)).squeeze(1).numpy(), y)


# -- torch.multiprocessing ----------------------------------------------------------------


def _mp_rank(rank: int, world: int, path: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    table = pq.read_table(path)
    start, stop = rank * table.num_rows // world, (rank + 1) * table.num_rows // world
    part = table.slice(start, stop - start)
    x = torch.from_numpy(np.column_stack([part.column(c).to_numpy() for c in feature_names()]))
    y = torch.from_numpy(part.column("y").to_numpy())

    def batches():
        for i in range(0, len(y), BATCH):
            yield x[i : i + BATCH], y[i : i + BATCH]

    model = DistributedDataParallel(_model())
    _train(model, batches)
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.destroy_process_group()


def torch_multiprocessing(ctx):
    import torch
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(ctx.work / "mp_model.pt")
    mp.spawn(_mp_rank, args=(2, str(ctx.train), port, out), nprocs=2, join=True)
    state = torch.load(out, weights_only=True)
    return lambda: _holdout_rmse(state, ctx.holdout())


# -- shardtrain ---------------------------------------------------------------------------


def _distributor_loop() -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from shardtrain.modeling.distributors.pytorch import get_context

    torch.set_num_threads(1)
    context = get_context()
    dist.init_process_group(backend=context.get_default_backend())
    shard = context.get_dataset_map()["train"].get_shard()
    columns = feature_names()

    def batches():
        for batch in shard.to_torch_dataset(batch_size=BATCH, drop_last_batch=False):
            yield torch.stack([batch[c] for c in columns], dim=1), batch["y"]

    model = DistributedDataParallel(_model())
    _train(model, batches)
    if context.get_rank() == 0:
        torch.save(model.module.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))


def torch_shardtrain(ctx):
    import torch

    from shardtrain import ShardedDataConnector
    from shardtrain.modeling.distributors.pytorch import PyTorchDistributor

    result = PyTorchDistributor(_distributor_loop).run(
        dataset_map={"train": ShardedDataConnector.from_parquet(str(ctx.train))},
        artifact_stage_location=str(ctx.work / "stage"),
    )

    def evaluate() -> float:
        from shardtrain.model.load import fetch_model

        with tempfile.TemporaryDirectory() as folder:
            fetch_model(result.get_model_dir(), folder)
            state = torch.load(Path(folder) / "model.pt", weights_only=True)
        return _holdout_rmse(state, ctx.holdout())

    return evaluate


# -- Ray Train ----------------------------------------------------------------------------


def _ray_train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(1)
    model = ray.train.torch.prepare_model(_model())
    shard = ray.train.get_dataset_shard("train")
    columns = feature_names()

    def batches():
        for batch in shard.iter_torch_batches(batch_size=BATCH):
            yield torch.stack([batch[c] for c in columns], dim=1), batch["y"]

    _train(model, batches)
    report_model_once(
        lambda folder: torch.save(model.module.state_dict(), os.path.join(folder, "model.pt"))
    )


def torch_ray_train(ctx):
    import ray.data
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    result = TorchTrainer(
        _ray_train_loop,
        scaling_config=ScalingConfig(
            num_workers=2, resources_per_worker={"CPU": RAY_TRAIN_CPU_PER_WORKER}
        ),
        run_config=RunConfig(storage_path=str(ctx.work / "ray_train"), name=uuid.uuid4().hex),
        datasets={"train": ray.data.read_parquet(str(ctx.train))},
    ).fit()
    state = torch.load(Path(result.checkpoint.path) / "model.pt", weights_only=True)
    return lambda: _holdout_rmse(state, ctx.holdout())
