"""LightGBM flow: train on Ray -> evaluate -> register (``python dags/lightgbm_flow.py``)."""

from example_data import FEATURES, LABEL, holdout, prepare, rmse
from prefect import flow, get_run_logger, task

from prefect_shardtrain import ModelStage, RayCluster, register_model, train_lightgbm


@task
def evaluate(artifact, holdout_path: str) -> float:
    from shardtrain import load_model

    x, y = holdout(holdout_path)
    score = rmse(load_model(artifact).predict(x), y)
    logger = get_run_logger()
    logger.info("model location: %s", artifact.uri)
    return score


@flow(name="shardtrain-lightgbm", persist_result=True)
def lightgbm_training(
    rows: int = 20_000,
    registry: str | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
):
    data = prepare(rows)
    artifact = train_lightgbm(
        data["train"],
        FEATURES,
        LABEL,
        eval_data=data["holdout"],
        params={"num_leaves": 31, "learning_rate": 0.2},
        n_estimators=50,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        ray_cluster=ray_cluster,
        stage=stage,
    )
    score = evaluate(artifact, data["holdout"])
    registered = register_model(
        artifact, name="shardtrain_lightgbm_flow", registry=registry, stage=stage
    )
    return {"artifact": artifact, "holdout_rmse": score, "registered": registered}


if __name__ == "__main__":
    lightgbm_training()
