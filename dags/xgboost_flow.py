"""Scheduled-style XGBoost flow: train on Ray -> evaluate -> register.

Run once on the embedded defaults: ``python dags/xgboost_flow.py``. Serve it on a schedule
with ``xgboost_training.serve(name="nightly", cron="0 2 * * *")`` (or ``.deploy(...)`` to a
work pool), as any Prefect flow.
"""

from example_data import FEATURES, LABEL, holdout, prepare, rmse
from prefect import flow, get_run_logger, task

from prefect_shardtrain import ModelStage, RayCluster, register_model, train_xgboost


@task
def evaluate(artifact, holdout_path: str) -> float:
    import xgboost

    from shardtrain import load_model

    booster = load_model(artifact)
    x, y = holdout(holdout_path)
    score = rmse(booster.predict(xgboost.DMatrix(x, feature_names=FEATURES)), y)
    logger = get_run_logger()
    logger.info("model location: %s", artifact.uri)
    logger.info("holdout rmse: %.4f", score)
    return score


@flow(name="shardtrain-xgboost", persist_result=True)
def xgboost_training(
    rows: int = 20_000,
    registry: str | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
):
    data = prepare(rows)
    artifact = train_xgboost(
        data["train"],
        FEATURES,
        LABEL,
        eval_data=data["holdout"],
        params={"max_depth": 6, "eta": 0.3},
        n_estimators=50,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        ray_cluster=ray_cluster,
        stage=stage,
    )
    score = evaluate(artifact, data["holdout"])
    registered = register_model(
        artifact, name="shardtrain_xgboost_flow", registry=registry, stage=stage
    )
    return {"artifact": artifact, "holdout_rmse": score, "registered": registered}


if __name__ == "__main__":
    xgboost_training()
