"""PyTorch DDP flow: train on Ray (2 ranks) -> evaluate -> register
(``python dags/pytorch_flow.py``)."""

import os

from example_data import FEATURES, LABEL, holdout, prepare, rmse
from prefect import flow, get_run_logger, task

from prefect_shardtrain import ModelStage, RayCluster, register_model, train_pytorch


def make_model():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )


def train_func():
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from shardtrain.modeling.distributors.pytorch import get_context

    context = get_context()
    dist.init_process_group(backend=context.get_default_backend())
    torch.manual_seed(0)
    model = DDP(make_model())
    optimizer = torch.optim.Adam(model.parameters(), lr=context.get_hyper_params()["lr"])
    shard = context.get_dataset_map()["train"].get_shard()
    for epoch in range(context.get_hyper_params()["epochs"]):
        for batch in shard.to_torch_dataset(batch_size=1024, shuffle=True, seed=epoch):
            x = torch.stack([batch[c] for c in FEATURES], dim=1).float()
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), batch[LABEL].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        context.get_metrics_reporter().log_metrics({"epoch": epoch, "loss": loss.item()})
    if context.get_rank() == 0:
        torch.save(model.module.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))


@task
def evaluate(artifact, holdout_path: str) -> float:
    import torch

    from shardtrain import load_model

    model = make_model()
    model.load_state_dict(load_model(artifact))
    x, y = holdout(holdout_path)
    with torch.no_grad():
        score = rmse(model(torch.from_numpy(x).float()).numpy(), y)
    logger = get_run_logger()
    logger.info("model location: %s", artifact.uri)
    return score


@flow(name="shardtrain-pytorch", persist_result=True)
def pytorch_training(
    rows: int = 20_000,
    registry: str | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
):
    data = prepare(rows)
    artifact = train_pytorch(
        train_func,
        dataset_map={"train": data["train"]},
        hyper_params={"lr": 0.01, "epochs": 3},
        scaling_config={"num_nodes": 1, "num_workers_per_node": 2},
        ray_cluster=ray_cluster,
        stage=stage,
    )
    score = evaluate(artifact, data["holdout"])
    registered = register_model(
        artifact, name="shardtrain_pytorch_flow", registry=registry, module=make_model, stage=stage
    )
    return {"artifact": artifact, "holdout_rmse": score, "registered": registered}


if __name__ == "__main__":
    pytorch_training()
