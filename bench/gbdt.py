"""XGBoost and LightGBM cases: plain library, shardtrain, and Ray Train, from Parquet to a model
on disk, with the same parameters.

- plain: one process with 2 threads reads the file with pyarrow, trains, saves the model.
- shardtrain: ``XGBEstimator`` / ``LightGBMEstimator``, 2 workers x 1 CPU, publishing to a
  local stage; each worker reads its own row window of the file. The "automatic" cases
  leave the scaling config at its default: on this one-node cluster, 1 worker x 2 CPUs.
- Ray Train: ``XGBoostTrainer`` / ``LightGBMTrainer`` as Ray's documentation writes them:
  ``ray.data.read_parquet`` as the dataset, and in each worker
  ``get_dataset_shard().materialize().to_pandas()``. Two deliberate deviations, both in
  Ray Train's favour: workers take 0.5 CPU each (at 1 CPU each, the two train workers hold
  both of this machine's CPUs and Ray Data's read tasks never get one: the fit hangs), and
  the model is reported once at the end instead of through ``RayTrainReportCallback``
  (in Ray 2.60 that callback's per-round ``ray.train.report`` blocks about 2 s a round:
  a 100-round fit of 200k rows took 224 s with it and 39 s without, measured here).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from bench.data import COLUMNS, feature_names, read_xy, rmse

ROUNDS = 100
SMALL_ROUNDS = 10
SMALL_COLUMNS = 10
XGB_PARAMS = {"max_depth": 6, "eta": 0.1, "tree_method": "hist"}
LGB_PARAMS = {"num_leaves": 63, "learning_rate": 0.1, "verbose": -1}
RAY_TRAIN_CPU_PER_WORKER = 0.5


def _xgb_holdout(booster, holdout, columns=COLUMNS) -> float:
    import xgboost as xgb

    x, y = holdout
    return rmse(booster.predict(xgb.DMatrix(x, feature_names=feature_names(columns))), y)


# -- plain --------------------------------------------------------------------------------


def _lgb_holdout(booster, holdout) -> float:
    x, y = holdout
    return rmse(booster.predict(x), y)


def xgboost_plain(ctx):
    import xgboost as xgb

    x, y = read_xy(ctx.train)
    dtrain = xgb.QuantileDMatrix(x, y, nthread=2, feature_names=feature_names())
    booster = xgb.train({**XGB_PARAMS, "nthread": 2}, dtrain, ROUNDS)
    booster.save_model(ctx.work / "plain.ubj")
    return lambda: _xgb_holdout(booster, ctx.holdout())


def lightgbm_plain(ctx):
    import lightgbm as lgb

    x, y = read_xy(ctx.train)
    booster = lgb.train({**LGB_PARAMS, "num_threads": 2}, lgb.Dataset(x, y), ROUNDS)
    booster.save_model(ctx.work / "plain.txt")
    return lambda: _lgb_holdout(booster, ctx.holdout())


# -- shardtrain ---------------------------------------------------------------------------


#: The issue's distributed layout: 2 workers x 1 CPU. ``None``: the automatic config.
TWO_BY_ONE = (2, 1)


def _shardtrain_fit(
    framework: str,
    path: Path,
    stage: Path,
    rounds: int,
    columns: int,
    layout: tuple[int, int] | None = TWO_BY_ONE,
):
    from shardtrain import DataConnector
    from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

    workers, cpus = layout or (-1, -1)
    if framework == "xgboost":
        estimator = XGBEstimator(
            n_estimators=rounds,
            params={k: v for k, v in XGB_PARAMS.items() if k != "tree_method"},
            scaling_config=XGBScalingConfig(num_workers=workers, num_cpu_per_worker=cpus),
        )
    else:
        estimator = LightGBMEstimator(
            n_estimators=rounds,
            params={k: v for k, v in LGB_PARAMS.items() if k != "verbose"},
            scaling_config=LightGBMScalingConfig(num_workers=workers, num_cpu_per_worker=cpus),
        )
    return estimator.fit(
        DataConnector.from_parquet(str(path)),
        feature_names(columns),
        "y",
        artifact_stage_location=str(stage),
    )


def xgboost_shardtrain(ctx):
    booster = _shardtrain_fit("xgboost", ctx.train, ctx.work / "stage", ROUNDS, COLUMNS)
    return lambda: _xgb_holdout(booster, ctx.holdout())


def lightgbm_shardtrain(ctx):
    booster = _shardtrain_fit("lightgbm", ctx.train, ctx.work / "stage", ROUNDS, COLUMNS)
    return lambda: _lgb_holdout(booster, ctx.holdout())


def xgboost_shardtrain_auto(ctx):
    booster = _shardtrain_fit("xgboost", ctx.train, ctx.work / "stage", ROUNDS, COLUMNS, None)
    return lambda: _xgb_holdout(booster, ctx.holdout())


def lightgbm_shardtrain_auto(ctx):
    booster = _shardtrain_fit("lightgbm", ctx.train, ctx.work / "stage", ROUNDS, COLUMNS, None)
    return lambda: _lgb_holdout(booster, ctx.holdout())


def small_job_shardtrain(ctx) -> None:
    _shardtrain_fit("xgboost", ctx.small, ctx.work / "stage", SMALL_ROUNDS, SMALL_COLUMNS)


# -- Ray Train ----------------------------------------------------------------------------


def report_model_once(save) -> None:
    """Rank 0 saves the model into a checkpoint reported once; the other ranks report none."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save(folder)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({}, checkpoint=checkpoint)


def _ray_train_xgboost_loop(config: dict) -> None:
    import ray.train
    import xgboost

    frame = ray.train.get_dataset_shard("train").materialize().to_pandas()
    dtrain = xgboost.QuantileDMatrix(frame.drop(columns="y"), label=frame["y"], nthread=1)
    booster = xgboost.train({**XGB_PARAMS, "nthread": 1}, dtrain, config["rounds"])
    report_model_once(lambda folder: booster.save_model(os.path.join(folder, "model.ubj")))


def _ray_train_lightgbm_loop(config: dict) -> None:
    import lightgbm
    import ray.train
    from ray.train.lightgbm import get_network_params, normalize_pandas_for_lightgbm

    frame = ray.train.get_dataset_shard("train").materialize().to_pandas()
    frame = normalize_pandas_for_lightgbm(frame)
    params = {
        **LGB_PARAMS,
        "num_threads": 1,
        "tree_learner": "data_parallel",
        "pre_partition": True,
        **get_network_params(),
    }
    dataset = lightgbm.Dataset(frame.drop(columns="y"), label=frame["y"])
    booster = lightgbm.train(params, dataset, config["rounds"])
    report_model_once(lambda folder: booster.save_model(os.path.join(folder, "model.txt")))


def _ray_train_fit(framework: str, path: Path, storage: Path, rounds: int) -> Path:
    import ray.data
    from ray.train import RunConfig, ScalingConfig

    if framework == "xgboost":
        from ray.train.xgboost import XGBoostTrainer as Trainer

        loop = _ray_train_xgboost_loop
    else:
        from ray.train.lightgbm import LightGBMTrainer as Trainer

        loop = _ray_train_lightgbm_loop
    result = Trainer(
        loop,
        train_loop_config={"rounds": rounds},
        scaling_config=ScalingConfig(
            num_workers=2, resources_per_worker={"CPU": RAY_TRAIN_CPU_PER_WORKER}
        ),
        run_config=RunConfig(storage_path=str(storage), name=uuid.uuid4().hex),
        datasets={"train": ray.data.read_parquet(str(path))},
    ).fit()
    return Path(result.checkpoint.path)


def xgboost_ray_train(ctx):
    import xgboost

    folder = _ray_train_fit("xgboost", ctx.train, ctx.work / "ray_train", ROUNDS)
    booster = xgboost.Booster(model_file=str(folder / "model.ubj"))
    return lambda: _xgb_holdout(booster, ctx.holdout())


def lightgbm_ray_train(ctx):
    import lightgbm

    folder = _ray_train_fit("lightgbm", ctx.train, ctx.work / "ray_train", ROUNDS)
    booster = lightgbm.Booster(model_file=str(folder / "model.txt"))
    return lambda: _lgb_holdout(booster, ctx.holdout())


def small_job_ray_train(ctx) -> None:
    _ray_train_fit("xgboost", ctx.small, ctx.work / "ray_train", SMALL_ROUNDS)
