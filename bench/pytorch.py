"""PyTorch DDP: PyTorchDistributor vs the same loop under torch.multiprocessing, same data.

    python -m bench.pytorch [--rows 1000000] [--repeats 3]

An MLP (32 -> 64 -> 1) on rows x 32 float32 features from Parquet, 2 epochs, batch 1024,
2 ranks with gloo. Both cases include start-up: spawning the processes (or, for
shardtrain, leasing the Ray workers: cold on the first run, warm afterwards) and
initialising the process group. Ray is started before timing (a driver that trains has it).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

COLUMNS = 32
EPOCHS = 2
BATCH = 1024


def loop(rank: int, world: int, batches) -> float:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DDP(
        torch.nn.Sequential(torch.nn.Linear(COLUMNS, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = None
    for _ in range(EPOCHS):
        for x, y in batches():
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return float(loss)


def _mp_worker(rank: int, world: int, path: str, port: int) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    table = pq.read_table(path)
    n = table.num_rows
    part = table.slice(rank * n // world, (rank + 1) * n // world - rank * n // world)
    x = torch.from_numpy(np.column_stack([part.column(f"f{i}").to_numpy() for i in range(COLUMNS)]))
    y = torch.from_numpy(part.column("y").to_numpy())

    def batches():
        for start in range(0, len(y), BATCH):
            yield x[start : start + BATCH], y[start : start + BATCH]

    loop(rank, world, batches)
    dist.destroy_process_group()


def multiprocessing_ddp(path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_mp_worker, args=(2, str(path), port), nprocs=2, join=True)


def _distributor_train() -> None:
    import torch
    import torch.distributed as dist

    from shardtrain.modeling.distributors.pytorch import get_context

    context = get_context()
    dist.init_process_group(backend=context.get_default_backend())
    shard = context.get_dataset_map()["train"].get_shard()
    columns = [f"f{i}" for i in range(COLUMNS)]

    def batches():
        for batch in shard.to_torch_dataset(batch_size=BATCH, drop_last_batch=False):
            yield torch.stack([batch[c] for c in columns], dim=1), batch["y"]

    loop(context.get_rank(), context.get_world_size(), batches)


def distributor(path: Path, stage: str) -> None:
    from shardtrain import ShardedDataConnector
    from shardtrain.modeling.distributors.pytorch import PyTorchDistributor

    PyTorchDistributor(_distributor_train).run(
        dataset_map={"train": ShardedDataConnector.from_parquet(str(path))},
        artifact_stage_location=stage,
    )


def main(argv=None) -> dict:
    import ray

    from bench.gbdt import make_parquet

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {
        "torch.multiprocessing DDP": [],
        "PyTorchDistributor (cold workers)": [],
        "PyTorchDistributor": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        make_parquet(path, args.rows, COLUMNS, 0)
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        for repeat in range(args.repeats + 1):
            start = time.perf_counter()
            multiprocessing_ddp(path)
            if repeat:
                times["torch.multiprocessing DDP"].append(time.perf_counter() - start)
            start = time.perf_counter()
            distributor(path, str(Path(tmp) / "stage"))
            key = "PyTorchDistributor" if repeat else "PyTorchDistributor (cold workers)"
            times[key].append(time.perf_counter() - start)
        ray.shutdown()
    base = statistics.median(times["torch.multiprocessing DDP"])
    results = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        results[name] = {
            "median_s": median,
            "min_s": min(samples),
            "max_s": max(samples),
            "vs_mp": median / base,
        }
        print(
            f"{name:36s} median {median:6.2f} s (min {min(samples):.2f}, max "
            f"{max(samples):.2f})  {median / base:.2f}x torch.multiprocessing"
        )
    return results


if __name__ == "__main__":
    main()
