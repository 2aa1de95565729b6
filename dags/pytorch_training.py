"""PyTorch DDP on Ray: locate data -> train (PyTorchTrainOperator, 2 ranks) -> evaluate -> register.

Runs on the embedded defaults with ``python dags/pytorch_training.py``.

Point it at a real cluster, stage and registry with the environment of the scheduler and
workers (read when the DAG file is parsed): ``SHARDTRAIN_RAY_CONN_ID`` names a ``ray``
connection (host ``ray://head:10001``; the nodes need the same ``shardtrain`` extras),
``SHARDTRAIN_STAGE`` a stage (``@DB.SCHEMA.STAGE`` with the ``snowflake_default``
connection, or ``s3://...``) and ``SHARDTRAIN_REGISTRY`` an MLflow tracking URI. Trigger it
by hand with a larger ``rows`` param: it has no schedule, so unpausing it starts nothing.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task
from example_data import FEATURES, LABEL, holdout, prepare, rmse

from shardtrain_airflow.operators import PyTorchTrainOperator, RegisterModelOperator


def make_model():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )


def train_func():
    """Runs on every rank (the vendor's context API)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from shardtrain.modeling.distributors.pytorch import get_context

    context = get_context()
    params = context.get_hyper_params()
    dist.init_process_group(backend=context.get_default_backend())
    torch.manual_seed(0)
    model = DDP(
        torch.nn.Sequential(
            torch.nn.Linear(len(FEATURES), 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    shard = context.get_dataset_map()["train"].get_shard()
    for epoch in range(params["epochs"]):
        for batch in shard.to_torch_dataset(batch_size=1024, shuffle=True, seed=epoch):
            x = torch.stack([batch[c] for c in FEATURES], dim=1).float()
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), batch[LABEL].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        context.get_metrics_reporter().log_metrics({"epoch": epoch, "loss": loss.item()})
    if context.get_rank() == 0:
        torch.save(model.module.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))


with DAG(
    dag_id="shardtrain_pytorch",
    schedule=None,  # examples run when triggered, never on unpause
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"rows": Param(20_000, type="integer", minimum=1000)},
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    tags=["shardtrain", "example"],
) as dag:

    @task
    def locate_data(**context) -> dict[str, str]:
        return prepare(int(context["params"]["rows"]))

    data = locate_data()

    train = PyTorchTrainOperator(
        task_id="train",
        train_func=train_func,
        dataset_map={"train": {"path": "{{ ti.xcom_pull(task_ids='locate_data')['train'] }}"}},
        hyper_params={"lr": 0.01, "epochs": 3},
        scaling_config={"num_nodes": 1, "num_workers_per_node": 2},
        artifact_stage_location=os.environ.get("SHARDTRAIN_STAGE"),
        ray_conn_id=os.environ.get("SHARDTRAIN_RAY_CONN_ID"),
    )
    data >> train

    @task
    def evaluate(artifact: dict, data: dict) -> dict:
        import torch

        from shardtrain import load_model

        state = load_model(artifact)
        model = torch.nn.Sequential(
            torch.nn.Linear(len(FEATURES), 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )
        model.load_state_dict(state)
        x, y = holdout(data["holdout"])
        with torch.no_grad():
            score = rmse(model(torch.from_numpy(x).float()).numpy(), y)
        print(f"model location: {artifact['uri']}")
        print(f"holdout rmse: {score:.4f}")
        return {"uri": artifact["uri"], "holdout_rmse": score}

    evaluated = evaluate(train.output, data)

    register = RegisterModelOperator(
        task_id="register",
        model=train.output,
        name="shardtrain_pytorch_example",
        module=make_model,
        registry=os.environ.get("SHARDTRAIN_REGISTRY"),  # default: sqlite MLflow
    )
    evaluated >> register


if __name__ == "__main__":
    dag.test()
