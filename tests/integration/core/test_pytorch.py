"""PyTorchDistributor: DDP on a real local Ray with 2 workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader

from shardtrain import ShardedDataConnector, fetch_model, load_model
from shardtrain.config import FailureConfig
from shardtrain.errors import ScalingConfigError, WorkerError
from shardtrain.modeling.distributors.pytorch import (
    PyTorchDistributor,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    get_context,
)
from shardtrain.runtime import worker_group
from tests.helpers import snowpark_table

pytestmark = pytest.mark.ray  # real Ray workers and DDP

ROWS = 3000


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()


def frame(rows=ROWS, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"ID": np.arange(rows), "A": rng.random(rows), "B": rng.random(rows)})
    data["Y"] = 2 * data["A"] - data["B"]
    return data


def record_rank(out: str, payload: dict) -> None:
    with open(os.path.join(out, f"rank{payload['rank']}.json"), "w") as handle:
        json.dump(payload, handle)


def read_ranks(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def ddp_train():
    """Trains a linear model with DDP and records what each rank saw."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    context = get_context()
    params = context.get_hyper_params()
    dist.init_process_group(backend=context.get_default_backend())
    torch.manual_seed(context.get_rank())  # different init per rank: DDP must sync them
    model = DDP(nn.Linear(2, 1))
    optimizer = optim.SGD(model.parameters(), lr=params["lr"])
    shard = context.get_dataset_map()["train"].get_shard()
    ids = []
    for epoch in range(params["epochs"]):
        for batch in DataLoader(
            shard.to_torch_dataset(batch_size=100, drop_last_batch=False), batch_size=None
        ):
            if epoch == 0:
                ids.extend(batch["ID"].tolist())
            x = torch.stack([batch["A"], batch["B"]], dim=1).float()
            loss = nn.functional.mse_loss(model(x).squeeze(1), batch["Y"].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        context.get_metrics_reporter().log_metrics({"epoch": epoch, "loss": loss.item()})
    record_rank(
        params["out"],
        {
            "rank": context.get_rank(),
            "world_size": context.get_world_size(),
            "local_rank": context.get_local_rank(),
            "node_rank": context.get_node_rank(),
            "local_world_size": context.get_local_world_size(),
            "env": {
                k: os.environ[k]
                for k in (
                    "MASTER_ADDR",
                    "MASTER_PORT",
                    "RANK",
                    "WORLD_SIZE",
                    "LOCAL_RANK",
                    "LOCAL_WORLD_SIZE",
                )
            },
            "master": [context.get_master_addr(), context.get_master_port()],
            "backend": context.get_default_backend(),
            "supported": context.get_supported_backends(),
            "datasets": sorted(context.get_dataset_map()),
            "ids": ids,
            "weights": [p.detach().flatten().tolist() for p in model.module.parameters()],
        },
    )
    if context.get_rank() == 0:
        torch.save(model.module.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))


def test_ddp_ranks_shards_sync_and_publish(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = PyTorchDistributor(ddp_train).run(
        dataset_map={"train": ShardedDataConnector.from_pandas(frame()), "extra": frame(10)},
        hyper_params={"lr": 0.5, "epochs": 3, "out": str(out)},
        artifact_stage_location=str(tmp_path / "stage"),
    )
    ranks = read_ranks(out)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["local_world_size"] == 2 for r in ranks)
    assert [r["local_rank"] for r in ranks] == [0, 1] and [r["node_rank"] for r in ranks] == [0, 0]
    assert [r["env"]["RANK"] for r in ranks] == ["0", "1"]
    assert (
        ranks[0]["env"]["MASTER_PORT"]
        == ranks[1]["env"]["MASTER_PORT"]
        == str(ranks[0]["master"][1])
    )
    assert ranks[0]["backend"] == "gloo" and ranks[0]["supported"] == ["gloo"]
    assert ranks[0]["datasets"] == ["extra", "train"]
    # disjoint shards that together hold every row once
    assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == list(range(ROWS))
    # DDP kept the replicas identical although they started from different seeds
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert result.get_metrics()["epoch"] == 2.0
    assert result.get_model_dir() == result.get_artifact().uri
    assert result.get_model_dir().startswith(str(tmp_path / "stage" / "model"))
    state = load_model(result.get_artifact())
    np.testing.assert_allclose(
        state["weight"].flatten().tolist(), ranks[0]["weights"][0], rtol=1e-6
    )
    artifact = result.get_artifact()
    assert artifact.params["lr"] == 0.5 and artifact.num_rows == {"train": ROWS, "extra": 10}
    assert artifact.source["train"]["kind"] == "pandas"
    assert artifact.metrics == {"train": {"epoch": 2.0, "loss": result.get_metrics()["loss"]}}


def failing_train():
    context = get_context()
    if context.get_rank() == 1:
        raise ValueError("bad batch on rank one")
    time.sleep(60)  # rank 0 would wait forever in a collective; it must be torn down


def test_exception_on_rank_one_surfaces_and_tears_down(tmp_path):
    PyTorchDistributor(ddp_train).run(
        dataset_map={"train": frame()},
        hyper_params={"lr": 0.1, "epochs": 1, "out": str(tmp_path)},
        artifact_stage_location=str(tmp_path / "stage"),
    )
    pids = [pid for g in worker_group.idle_groups() for pid in g["pids"]]
    start = time.monotonic()
    with pytest.raises(
        WorkerError, match="worker rank 1 failed: ValueError: bad batch on rank one"
    ) as info:
        PyTorchDistributor(failing_train).run(artifact_stage_location=str(tmp_path / "stage"))
    assert time.monotonic() - start < 30
    assert info.value.rank == 1 and "failing_train" in info.value.worker_traceback
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "worker processes leaked"
    assert not worker_group._busy and not worker_group.idle_groups()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split()[2] != "Z"


def resumable_train():
    context = get_context()
    params = context.get_hyper_params()
    start, total = 0, 0.0
    folder = context.get_checkpoint()
    if folder is not None:
        state = json.loads(open(os.path.join(folder, "state.json")).read())
        start, total = state["epoch"] + 1, state["total"]
        with open(params["progress"] + f".resumed-{context.get_rank()}", "w") as handle:
            handle.write(folder)
    for epoch in range(start, 6):
        total += epoch
        if context.get_rank() == 0 and epoch == 4:
            # Nor may rank 0 finish the first attempt before rank 1 dies: its last metrics
            # would then come from that attempt, not the resumed one.
            deadline = time.monotonic() + 60
            while not os.path.exists(params["marker"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        if context.get_rank() == 1 and epoch == 3 and not os.path.exists(params["marker"]):
            # Ranks run independently here: die only after rank 0 has checkpointed twice, so
            # a slow start of rank 0 on a loaded machine cannot leave no checkpoint to resume.
            deadline = time.monotonic() + 60
            while not os.path.exists(params["progress"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the driver polls rank 0 every 50 ms
            open(params["marker"], "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt = os.path.join(context.get_model_dir(), "ckpt")
        os.makedirs(ckpt, exist_ok=True)
        with open(os.path.join(ckpt, "state.json"), "w") as handle:
            json.dump({"epoch": epoch, "total": total}, handle)
        context.save_checkpoint(ckpt)
        context.get_metrics_reporter().log_metrics(
            {"epoch": epoch, "total": total, "started_at": start}
        )
        time.sleep(0.2)  # let the driver pick the checkpoint up before the next epoch
        if context.get_rank() == 0 and epoch == 1:
            open(params["progress"], "w").close()
    if context.get_rank() == 0:
        with open(os.path.join(context.get_model_dir(), "done.txt"), "w") as handle:
            handle.write(str(total))


def test_killed_worker_restarts_group_from_checkpoint(tmp_path):
    result = PyTorchDistributor(resumable_train, failure_config=FailureConfig(max_failures=1)).run(
        hyper_params={"marker": str(tmp_path / "killed"), "progress": str(tmp_path / "rank0")},
        artifact_stage_location=str(tmp_path / "stage"),
    )
    assert (tmp_path / "killed").exists()
    metrics = result.get_metrics()
    assert metrics["epoch"] == 5 and metrics["total"] == sum(range(6))
    assert metrics["started_at"] > 0, "restarted from scratch instead of the checkpoint"
    # the checkpoint folders the ranks were handed are gone with the run (warm workers stay)
    handed = [Path(p.read_text()) for p in tmp_path.glob("rank0.resumed-*")]
    assert len(handed) == 2 and not any(folder.exists() for folder in handed)


SEED_INPUT_COLS = ["A", "B"]


class SimpleNet(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(SimpleNet, self).__init__()  # noqa: UP008 (the vendor's code, verbatim)
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


input_cols, label_col = SEED_INPUT_COLS, "Y"


def train_func():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from shardtrain.modeling.distributors.pytorch import get_context

    context = get_context()
    rank = context.get_rank()  # noqa: F841 (as on the vendor's page)
    dist.init_process_group(backend="gloo")
    device = torch.device(
        f"cuda:{context.get_local_rank()}" if torch.cuda.is_available() else "cpu"
    )
    model = SimpleNet(input_size=len(input_cols), hidden_size=32, output_size=1).to(device)
    model = DDP(model)
    criterion = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)

    dataset_map = context.get_dataset_map()
    torch_dataset = dataset_map["train"].get_shard().to_torch_dataset(batch_size=1024)
    dataloader = DataLoader(torch_dataset)
    for epoch in range(10):
        for batch_dict in dataloader:
            features = (
                torch.cat([batch_dict[col].T for col in input_cols], dim=1).float().to(device)
            )
            labels = batch_dict[label_col].T.squeeze(0).float().to(device)
            output = model(features)
            loss = criterion(output, labels.unsqueeze(1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # noqa: E702
        print(f"Epoch [{epoch + 1}/10], Loss: {loss.item():.4f}")
    if context.get_rank() == 0:
        torch.save(model.module.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))


@pytest.mark.parametrize("source", ["snowpark", "parquet"])
def test_seed_pytorch_example_with_only_the_import_changed(
    source, snowpark_session, tmp_path, monkeypatch
):
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path))
    from shardtrain.data.sharded_data_connector import ShardedDataConnector

    data = frame(5000).drop(columns=["ID"])
    if source == "snowpark":
        session = snowpark_session
        snowpark_table(session, data, "EXAMPLE_TRAINING_DATA")
        data_connector = ShardedDataConnector.from_dataframe(session.table("EXAMPLE_TRAINING_DATA"))
    else:
        pq.write_table(pa.Table.from_pandas(data), tmp_path / "train.parquet", row_group_size=700)
        data_connector = ShardedDataConnector.from_parquet(str(tmp_path / "train.parquet"))

    from shardtrain.modeling.distributors.pytorch import (
        PyTorchDistributor,
        PyTorchScalingConfig,
        WorkerResourceConfig,
    )

    pytorch_trainer = PyTorchDistributor(train_func=train_func)
    response = pytorch_trainer.run(dataset_map={"train": data_connector})
    stage_location = response.get_model_dir()

    state = load_model(stage_location)
    model = SimpleNet(2, 32, 1)
    model.load_state_dict(state)
    assert stage_location.startswith(str(tmp_path / "stage" / "model"))
    with pytest.raises(ScalingConfigError, match="no GPUs"):  # the page's optional GPU config
        PyTorchDistributor(
            train_func=train_func,
            scaling_config=PyTorchScalingConfig(
                num_nodes=1,
                num_workers_per_node=1,
                resource_requirements_per_worker=WorkerResourceConfig(num_cpus=0, num_gpus=4),
            ),
        ).run(dataset_map={"train": data_connector})


def test_get_context_outside_and_impossible_scaling():
    with pytest.raises(RuntimeError, match="only works inside a PyTorchDistributor"):
        get_context()
    with pytest.raises(ScalingConfigError, match="num_nodes=2 but the cluster has 1 node"):
        PyTorchDistributor(train_func, PyTorchScalingConfig(num_nodes=2)).run()
    with pytest.raises(ScalingConfigError, match=r"1 node\(s\) x 3 workers .* do not fit"):
        PyTorchDistributor(train_func, PyTorchScalingConfig(num_workers_per_node=3)).run()
    with pytest.raises(ScalingConfigError, match="num_gpus must be a number"):
        WorkerResourceConfig(num_gpus=-1)


def test_two_node_cluster_gives_node_and_local_ranks(tmp_path):
    """A two-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster)."""
    script = textwrap.dedent(f"""
        import json, os, ray
        from ray.cluster_utils import Cluster
        from shardtrain.modeling.distributors.pytorch import (
            PyTorchDistributor, PyTorchScalingConfig, WorkerResourceConfig, get_context)

        def where():
            c = get_context()
            with open(os.path.join({str(tmp_path)!r}, f"r{{c.get_rank()}}.json"), "w") as f:
                json.dump([c.get_rank(), c.get_node_rank(), c.get_local_rank(),
                           c.get_local_world_size(), ray.get_runtime_context().get_node_id()], f)

        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 2}})
        cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        PyTorchDistributor(where, PyTorchScalingConfig(
            num_nodes=2, num_workers_per_node=2,
            resource_requirements_per_worker=WorkerResourceConfig(num_cpus=0.5))).run(
            artifact_stage_location={str(tmp_path / "stage")!r})
        ray.shutdown()
        cluster.shutdown()
    """)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(4)]
    assert [r[:4] for r in rows] == [[0, 0, 0, 2], [1, 0, 1, 2], [2, 1, 0, 2], [3, 1, 1, 2]]
    nodes = [r[4] for r in rows]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]


def test_master_port_is_released_after_a_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    PyTorchDistributor(ddp_train).run(
        dataset_map={"train": frame()},
        hyper_params={"lr": 0.1, "epochs": 1, "out": str(out)},
        artifact_stage_location=str(tmp_path / "stage"),
    )
    port = read_ranks(out)[0]["master"][1]
    with socket.socket() as sock:  # the process group's store was torn down with it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))


def record_shard_ids():
    """Records which rows of the 'train' dataset each rank was given."""
    context = get_context()
    shard = context.get_dataset_map()["train"].get_shard()
    ids = [i for b in shard.iter_batches(columns=["ID"]) for i in b.column("ID").to_pylist()]
    record_rank(context.get_hyper_params()["out"], {"rank": context.get_rank(), "ids": ids})


def test_run_honours_equal_shards(tmp_path):
    """A ShardedDataConnector(equal=True) gives every rank the same number of rows in run()
    (the odd last row is dropped); a plain one covers every row."""
    for equal in (True, False):
        out = tmp_path / f"out-{equal}"
        out.mkdir()
        PyTorchDistributor(record_shard_ids).run(
            dataset_map={"train": ShardedDataConnector.from_pandas(frame(101), equal=equal)},
            hyper_params={"out": str(out)},
            artifact_stage_location=str(tmp_path / "stage"),
        )
        ids = [r["ids"] for r in read_ranks(out)]
        if equal:
            assert ids == [list(range(50)), list(range(50, 100))]
        else:
            assert ids == [list(range(50)), list(range(50, 101))]


def save_report():
    """Each rank saves a report through its artifact manager; rank 0's is published."""
    context = get_context()
    manager = context.get_artifact_manager()
    report = os.path.join(context.get_hyper_params()["out"], f"report{context.get_rank()}.json")
    with open(report, "w") as out:
        json.dump({"rank": context.get_rank(), "where": manager.get_stage_location()}, out)
    manager.save_artifact(report, name="reports/report.json")


def test_artifact_manager_files_are_published_where_it_said(tmp_path):
    """Context.get_artifact_manager() (issue 31): what rank 0 saves is published with the
    model, at get_stage_location(). Its own logic: tests/unit/core/test_artifact_manager.py."""
    out = tmp_path / "out"
    out.mkdir()
    result = PyTorchDistributor(save_report).run(
        hyper_params={"out": str(out)}, artifact_stage_location=str(tmp_path / "stage")
    )
    artifact = result.get_artifact()
    assert [f["path"] for f in artifact.files] == ["reports/report.json"]
    fetch_model(artifact, tmp_path / "fetched")
    report = json.loads((tmp_path / "fetched" / "reports" / "report.json").read_text())
    assert report == {"rank": 0, "where": result.get_model_dir()}
