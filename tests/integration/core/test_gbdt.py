"""Distributed XGBoost and LightGBM on a real local Ray (2 CPUs, 2 workers x 1 CPU)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from shardtrain import DataConnector, ShardedDataConnector, load_model
from shardtrain.config import FailureConfig
from shardtrain.errors import (
    EmptyDataError,
    ScalingConfigError,
    SchemaError,
    WorkerError,
)
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group
from tests.helpers import kill_rank_once_checkpointed, snowpark_table

pytestmark = pytest.mark.ray  # real Ray workers

FEATURES = [f"F{i}" for i in range(8)]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()  # free the CPUs the warm pool holds for later tests


def make_data(n: int, seed: int, task: str = "regression") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURES))).astype(np.float32)
    signal_ = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] * x[:, 4]
    frame = pd.DataFrame(x, columns=FEATURES)
    if task == "regression":
        frame["Y"] = signal_ + rng.normal(0, 0.3, n)
    else:
        frame["Y"] = (signal_ + rng.normal(0, 0.5, n) > 0).astype(np.int64)
    return frame


TRAIN, HOLDOUT = make_data(20_000, 1), make_data(5_000, 2)
TRAIN_CLS, HOLDOUT_CLS = make_data(40_000, 3, "binary"), make_data(5_000, 4, "binary")


def rmse(pred, y):
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def logloss(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def as_source(kind, frame, tmp_path, snowpark_session, name):
    if kind == "pandas":
        return frame
    if kind == "parquet":
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=3000)
        return DataConnector.from_parquet(str(path))
    table = f"GBDT_{name.upper()}"
    return DataConnector.from_dataframe(snowpark_table(snowpark_session, frame, table))


@pytest.mark.parametrize("kind", ["pandas", "parquet", "snowpark"])
def test_xgboost_regression_matches_single_process(kind, tmp_path, snowpark_session):
    # Converged settings: an underfit model's holdout error swings with every bin cut point
    # (max_bin=1024 alone moves it by 10% here), which would test noise, not correctness.
    params = {"max_depth": 6, "eta": 0.1, "tree_method": "hist"}
    est = XGBEstimator(n_estimators=150, params=params, scaling_config=XGBScalingConfig(**TWO))
    booster = est.fit(
        as_source(kind, TRAIN, tmp_path, snowpark_session, "train"),
        FEATURES,
        "Y",
        eval_set=as_source(kind, HOLDOUT, tmp_path, snowpark_session, "eval"),
        artifact_stage_location=str(tmp_path / "stage"),
    )
    assert booster.num_boosted_rounds() == 150
    plain = xgb.train(
        {**params, "nthread": 2}, xgb.QuantileDMatrix(TRAIN[FEATURES], TRAIN["Y"]), 150
    )
    dist_rmse = rmse(booster.predict(xgb.DMatrix(HOLDOUT[FEATURES])), HOLDOUT["Y"])
    plain_rmse = rmse(plain.predict(xgb.DMatrix(HOLDOUT[FEATURES])), HOLDOUT["Y"])
    assert abs(dist_rmse - plain_rmse) / plain_rmse < 0.01, (dist_rmse, plain_rmse)
    results = est.get_eval_results()
    assert set(results) == {"train", "eval"} and len(results["eval"]["rmse"]) == 150
    # XGBoost's eval metric is global: it equals the held-out RMSE of the final model.
    assert results["eval"]["rmse"][-1] == pytest.approx(dist_rmse, rel=1e-4)
    artifact = est.get_artifact()
    assert artifact.framework == "xgboost" and artifact.num_rows == {"train": 20_000, "eval": 5_000}
    assert artifact.metrics["eval"]["rmse"] == pytest.approx(dist_rmse, rel=1e-4)
    assert artifact.input_cols == FEATURES and artifact.label_col == "Y"
    reloaded = load_model(artifact)
    np.testing.assert_array_equal(
        reloaded.predict(xgb.DMatrix(HOLDOUT[FEATURES])),
        booster.predict(xgb.DMatrix(HOLDOUT[FEATURES])),
    )


def test_xgboost_classification_without_eval_set(tmp_path):
    # Asking for a metric is what makes ranks evaluate the training set each round (a bare
    # fit evaluates nothing: tests/core/test_gbdt_perf.py).
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.1, "eval_metric": "logloss"}
    est = XGBEstimator(n_estimators=100, params=params, scaling_config=XGBScalingConfig(**TWO))
    booster = est.fit(TRAIN_CLS, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    plain = xgb.train(
        {**params, "nthread": 2}, xgb.QuantileDMatrix(TRAIN_CLS[FEATURES], TRAIN_CLS["Y"]), 100
    )
    dist = logloss(booster.predict(xgb.DMatrix(HOLDOUT_CLS[FEATURES])), HOLDOUT_CLS["Y"])
    ref = logloss(plain.predict(xgb.DMatrix(HOLDOUT_CLS[FEATURES])), HOLDOUT_CLS["Y"])
    assert abs(dist - ref) / ref < 0.01
    assert set(est.get_eval_results()) == {"train"}
    assert "logloss" in est.get_eval_results()["train"]


@pytest.mark.parametrize("kind", ["pandas", "parquet", "snowpark"])
def test_lightgbm_regression_matches_single_process(kind, tmp_path, snowpark_session):
    params = {"num_leaves": 31, "learning_rate": 0.1, "min_data_in_leaf": 20}
    est = LightGBMEstimator(
        n_estimators=150, params=params, scaling_config=LightGBMScalingConfig(**TWO)
    )
    booster = est.fit(
        as_source(kind, TRAIN, tmp_path, snowpark_session, "ltrain"),
        FEATURES,
        "Y",
        eval_set=as_source(kind, HOLDOUT, tmp_path, snowpark_session, "leval"),
        artifact_stage_location=str(tmp_path / "stage"),
    )
    assert booster.current_iteration() == 150
    plain = lgb.train(
        {**params, "verbose": -1, "num_threads": 2},
        lgb.Dataset(TRAIN[FEATURES].to_numpy(), TRAIN["Y"].to_numpy()),
        150,
    )
    dist_rmse = rmse(booster.predict(HOLDOUT[FEATURES].to_numpy()), HOLDOUT["Y"])
    plain_rmse = rmse(plain.predict(HOLDOUT[FEATURES].to_numpy()), HOLDOUT["Y"])
    assert abs(dist_rmse - plain_rmse) / plain_rmse < 0.02, (dist_rmse, plain_rmse)
    # Metrics are aggregated across ranks: the eval l2 is the held-out MSE of the model.
    assert est.get_eval_results()["eval"]["l2"][-1] == pytest.approx(dist_rmse**2, rel=1e-3)
    assert load_model(est.get_artifact()).current_iteration() == 150


def test_lightgbm_classification(tmp_path):
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1}
    est = LightGBMEstimator(
        n_estimators=100, params=params, scaling_config=LightGBMScalingConfig(**TWO)
    )
    booster = est.fit(
        TRAIN_CLS, FEATURES, "Y", eval_set=HOLDOUT_CLS, artifact_stage_location=str(tmp_path)
    )
    plain = lgb.train(
        {**params, "verbose": -1},
        lgb.Dataset(TRAIN_CLS[FEATURES].to_numpy(), TRAIN_CLS["Y"].to_numpy()),
        100,
    )
    dist = logloss(booster.predict(HOLDOUT_CLS[FEATURES].to_numpy()), HOLDOUT_CLS["Y"])
    ref = logloss(plain.predict(HOLDOUT_CLS[FEATURES].to_numpy()), HOLDOUT_CLS["Y"])
    assert abs(dist - ref) / ref < 0.02
    assert est.get_eval_results()["eval"]["binary_logloss"][-1] == pytest.approx(dist, rel=1e-3)


@pytest.mark.parametrize("estimator", ["xgboost", "lightgbm"])
def test_early_stopping_across_ranks(estimator, tmp_path):
    # Pure-noise labels: the eval metric stops improving after a few rounds.
    rng = np.random.default_rng(0)
    noise = TRAIN.assign(Y=rng.normal(size=len(TRAIN)))
    noise_eval = HOLDOUT.assign(Y=rng.normal(size=len(HOLDOUT)))
    if estimator == "xgboost":
        est = XGBEstimator(
            n_estimators=200,
            params={"eta": 0.5, "early_stopping_rounds": 3},
            scaling_config=XGBScalingConfig(**TWO),
        )
        booster = est.fit(
            noise, FEATURES, "Y", eval_set=noise_eval, artifact_stage_location=str(tmp_path)
        )
        history = est.get_eval_results()["eval"]["rmse"]
        best = int(np.argmin(history))
        # XGBoost keeps every round it trained and marks the best one.
        assert booster.num_boosted_rounds() == len(history) and booster.best_iteration == best
    else:
        est = LightGBMEstimator(
            n_estimators=200,
            params={"learning_rate": 0.5, "early_stopping_rounds": 3},
            scaling_config=LightGBMScalingConfig(**TWO),
        )
        booster = est.fit(
            noise, FEATURES, "Y", eval_set=noise_eval, artifact_stage_location=str(tmp_path)
        )
        history = est.get_eval_results()["eval"]["l2"]
        best = int(np.argmin(history))
        # LightGBM returns the model truncated at its best iteration.
        assert booster.current_iteration() == best + 1
    assert len(history) < 50
    assert len(history) - 1 - best == 3  # stopped exactly 3 rounds after the (global) best


@pytest.mark.parametrize("estimator", ["xgboost", "lightgbm"])
def test_distributed_predict_keeps_row_order(estimator, tmp_path):
    Est, Cfg = (
        (XGBEstimator, XGBScalingConfig)
        if estimator == "xgboost"
        else (LightGBMEstimator, LightGBMScalingConfig)
    )
    est = Est(n_estimators=10, scaling_config=Cfg(**TWO))
    booster = est.fit(TRAIN, FEATURES, "Y", artifact_stage_location=str(tmp_path / "s"))
    local = (
        booster.predict(xgb.DMatrix(HOLDOUT[FEATURES]))
        if estimator == "xgboost"
        else booster.predict(HOLDOUT[FEATURES].to_numpy())
    )
    path = tmp_path / "holdout.parquet"
    pq.write_table(pa.Table.from_pandas(HOLDOUT, preserve_index=False), path, row_group_size=777)
    distributed = est.predict(DataConnector.from_parquet(str(path)))
    np.testing.assert_allclose(distributed, local, rtol=1e-5, atol=1e-6)
    out = est.predict(HOLDOUT, output=str(tmp_path / "preds"))
    parts = sorted((tmp_path / "preds").glob("part-*.parquet"))
    assert len(parts) == 2
    written = pa.concat_tables([pq.read_table(p) for p in parts]).column("prediction")
    np.testing.assert_allclose(written.to_numpy(), local, rtol=1e-5, atol=1e-6)
    assert out == str(tmp_path / "preds")


def test_fit_honours_equal_shards(tmp_path):
    """fit() on a ShardedDataConnector(equal=True) trains every rank on the same number of
    rows: with an odd row count on two workers the last row is dropped, so the model equals
    one trained on the rows before it (same shards), and differs from one that saw it."""
    frame = TRAIN.iloc[:10_001].copy()
    frame.loc[frame.index[-1], "Y"] = 1000.0  # a row no model can learn without moving

    def fit(data):
        est = XGBEstimator(
            n_estimators=5, params={"max_depth": 3}, scaling_config=XGBScalingConfig(**TWO)
        )
        return est.fit(data, FEATURES, "Y", artifact_stage_location=str(tmp_path)).predict(
            xgb.DMatrix(HOLDOUT[FEATURES])
        )

    equal = fit(ShardedDataConnector.from_pandas(frame, equal=True))
    np.testing.assert_array_equal(equal, fit(DataConnector.from_pandas(frame.iloc[:10_000])))
    assert not np.array_equal(equal, fit(ShardedDataConnector.from_pandas(frame)))


def test_warm_workers_are_reused_and_fast(tmp_path):
    small = TRAIN.iloc[:10_000][FEATURES[:8] + ["Y"]]
    est = XGBEstimator(n_estimators=10, scaling_config=XGBScalingConfig(**TWO))
    est.fit(small, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    pids = {g["pids"][0] for g in worker_group.idle_groups()}
    start = time.perf_counter()
    est.fit(small, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    warm = time.perf_counter() - start
    assert {g["pids"][0] for g in worker_group.idle_groups()} == pids
    # Not a performance assertion (bench/ measures that): a warm fit must not pay for
    # process start-up, which alone takes over a second here.
    assert warm < 10


def test_seed_xgboost_example_runs_with_only_the_import_changed(
    snowpark_session, tmp_path, monkeypatch
):
    """The vendor page's XGBoost example, `snowflake.ml` -> `shardtrain`, on local_testing."""
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path))
    frame = TRAIN.iloc[:5000].rename(
        columns={"F0": "AGE", "F1": "INCOME", "F2": "CREDIT_SCORE", "Y": "DEFAULT_RISK"}
    )
    session = snowpark_session
    snowpark_table(session, frame, "TRAINING_DATA")
    snowpark_table(session, frame.iloc[:1000], "EVAL_DATA")

    from shardtrain.data.data_connector import DataConnector

    train_connector = DataConnector.from_dataframe(session.table("TRAINING_DATA"))
    eval_connector = DataConnector.from_dataframe(session.table("EVAL_DATA"))

    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

    params = {"objective": "reg:squarederror", "max_depth": 6, "learning_rate": 0.1}
    estimator = XGBEstimator(params=params)  # automatic scaling
    gpu_estimator = XGBEstimator(params=params, scaling_config=XGBScalingConfig(use_gpu=True))
    booster = estimator.fit(
        dataset=train_connector,
        input_cols=["AGE", "INCOME", "CREDIT_SCORE"],
        label_col="DEFAULT_RISK",
        eval_set=eval_connector,
        verbose_eval=10,
    )
    booster = estimator.get_booster()  # if the return value of fit was not kept
    feature_importance = booster.get_score(importance_type="gain")

    assert set(feature_importance) <= {"AGE", "INCOME", "CREDIT_SCORE"} and feature_importance
    assert gpu_estimator.scaling_config.use_gpu is True  # built as on the page; no GPU to fit
    assert booster.num_boosted_rounds() == 100
    assert estimator.get_artifact().uri.startswith(str(tmp_path / "stage" / "model"))
    assert estimator.get_artifact().source["train"] == {
        "kind": "snowpark",
        "table": "TRAINING_DATA",
        "num_rows": 5000,
    }


# -- failures -----------------------------------------------------------------------------------


class KillRankOnce(xgb.callback.TrainingCallback):
    """Kills its own worker process (SIGKILL) at a given round, the first time only."""

    def __init__(self, marker: str, rank: int, at_round: int):
        self.marker, self.rank, self.at_round = marker, rank, at_round

    def after_iteration(self, model, epoch, evals_log):
        import xgboost.collective as collective

        if (
            epoch + 1 == self.at_round
            and collective.get_rank() == self.rank
            and not os.path.exists(self.marker)
        ):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def test_xgboost_recovers_from_a_killed_worker(tmp_path):
    est = XGBEstimator(
        n_estimators=30,
        params={"max_depth": 3},
        scaling_config=XGBScalingConfig(**TWO),
        callbacks=[KillRankOnce(str(tmp_path / "killed"), rank=1, at_round=17)],
        failure_config=FailureConfig(max_failures=1, checkpoint_frequency=5),
    )
    booster = est.fit(
        TRAIN, FEATURES, "Y", eval_set=HOLDOUT, artifact_stage_location=str(tmp_path / "stage")
    )
    assert (tmp_path / "killed").exists()
    assert booster.num_boosted_rounds() == 30
    assert len(est.get_eval_results()["eval"]["rmse"]) == 30
    plain = XGBEstimator(
        n_estimators=30, params={"max_depth": 3}, scaling_config=XGBScalingConfig(**TWO)
    )
    reference = plain.fit(TRAIN, FEATURES, "Y", artifact_stage_location=str(tmp_path / "ref"))
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(HOLDOUT[FEATURES])),
        reference.predict(xgb.DMatrix(HOLDOUT[FEATURES])),
        rtol=1e-5,
        atol=1e-5,
    )
    # checkpoints are cleaned up once the model is published
    assert not (tmp_path / "stage" / "checkpoints" / est.get_artifact().request_id).exists()


def test_xgboost_without_restarts_names_the_dead_rank(tmp_path):
    est = XGBEstimator(
        n_estimators=30,
        scaling_config=XGBScalingConfig(**TWO),
        callbacks=[KillRankOnce(str(tmp_path / "killed"), rank=1, at_round=5)],
    )
    start = time.monotonic()
    with pytest.raises(worker_group.WorkerDiedError, match="worker rank 1 died") as info:
        est.fit(TRAIN, FEATURES, "Y", artifact_stage_location=str(tmp_path / "stage"))
    assert info.value.rank == 1 and time.monotonic() - start < 60
    # the task log's message names the rank, the round it got to, and what to do
    assert "[rank 1, after round " in str(info.value) and " of 30]" in str(info.value)
    assert 4 <= info.value.round <= 6 and "FailureConfig(max_failures=n" in str(info.value)
    assert not worker_group.idle_groups(), "the failed fit's group must not go back to the pool"


def test_lightgbm_recovers_from_a_worker_killed_from_outside(tmp_path):
    """The test kills rank 1's process once the run has checkpointed; the group is rebuilt
    and training resumes from the checkpoint, ending with exactly n_estimators rounds."""
    est = LightGBMEstimator(
        n_estimators=400,
        params={"num_leaves": 63, "learning_rate": 0.05},
        scaling_config=LightGBMScalingConfig(**TWO),
        failure_config=FailureConfig(max_failures=1, checkpoint_frequency=20),
    )
    stage = tmp_path / "stage"
    thread, killed = kill_rank_once_checkpointed(stage)
    booster = est.fit(
        TRAIN,
        FEATURES,
        "Y",
        eval_set=HOLDOUT,
        artifact_stage_location=str(stage),
        request_id="lgb-kill",
    )
    thread.join()
    assert killed, "the worker was never killed"
    assert booster.current_iteration() == 400
    assert len(est.get_eval_results()["eval"]["l2"]) == 400


def test_training_error_reaches_driver_with_rank_quickly(tmp_path):
    est = XGBEstimator(
        n_estimators=5,
        params={"objective": "multi:softprob"},  # no num_class
        scaling_config=XGBScalingConfig(**TWO),
    )
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker rank \d failed: XGBoostError") as info:
        est.fit(TRAIN, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    assert time.monotonic() - start < 30
    assert info.value.rank in (0, 1) and "num_class" in info.value.worker_traceback
    assert not list(tmp_path.glob("model/*"))  # nothing published


def test_null_labels_refused_on_the_worker_with_rank(tmp_path):
    frame = TRAIN.copy()
    frame.loc[15_000, "Y"] = np.nan
    with pytest.raises(SchemaError, match="'Y' has 1 null value") as info:
        XGBEstimator(n_estimators=5, scaling_config=XGBScalingConfig(**TWO)).fit(
            frame, FEATURES, "Y", artifact_stage_location=str(tmp_path)
        )
    assert info.value.rank == 1


# -- bad input, refused before any training ---------------------------------------------------------


@pytest.mark.parametrize(
    "Est,Cfg", [(XGBEstimator, XGBScalingConfig), (LightGBMEstimator, LightGBMScalingConfig)]
)
def test_bad_input_refused_before_training(Est, Cfg, tmp_path):
    est = Est(n_estimators=5, scaling_config=Cfg(**TWO))

    def fit(data, cols, label="Y"):
        return est.fit(data, cols, label, artifact_stage_location=str(tmp_path))

    with pytest.raises(SchemaError, match="'NOPE' not found") as info:
        fit(TRAIN, FEATURES + ["NOPE"])
    assert "F0" in str(info.value)
    with pytest.raises(SchemaError, match="more than once"):
        fit(TRAIN, ["F0", "F0"])
    with pytest.raises(SchemaError, match="'S' of the training data has type string"):
        fit(TRAIN.assign(S="x"), FEATURES + ["S"])
    with pytest.raises(SchemaError, match="label column 'Y' is also in input_cols"):
        fit(TRAIN, FEATURES + ["Y"])
    with pytest.raises(EmptyDataError, match="no rows"):
        fit(TRAIN.iloc[:0], FEATURES)
    with pytest.raises(EmptyDataError, match="fewer than the 2 workers"):
        fit(TRAIN.iloc[:1], FEATURES)
    sharded = ShardedDataConnector.from_pandas(TRAIN)
    with pytest.raises(EmptyDataError, match="eval_set data has 1 rows"):
        est.fit(
            sharded, FEATURES, "Y", eval_set=HOLDOUT.iloc[:1], artifact_stage_location=str(tmp_path)
        )
    assert not list(tmp_path.glob("model/*"))


def test_impossible_scaling_refused():
    with pytest.raises(ScalingConfigError, match="cluster has no GPUs"):
        XGBEstimator(scaling_config=XGBScalingConfig(use_gpu=True)).fit(TRAIN, FEATURES, "Y")
    with pytest.raises(ScalingConfigError, match=r"5 workers x 1 CPUs = 5 CPUs do not fit.*2 CPUs"):
        XGBEstimator(scaling_config=XGBScalingConfig(num_workers=5, num_cpu_per_worker=1)).fit(
            TRAIN, FEATURES, "Y"
        )
    with pytest.raises(ScalingConfigError, match=r"params\['nthread'\]=8 exceeds the 1 CPUs"):
        XGBEstimator(params={"nthread": 8}, scaling_config=XGBScalingConfig(**TWO)).fit(
            TRAIN, FEATURES, "Y"
        )
    with pytest.raises(ScalingConfigError, match="params ask for a GPU"):
        XGBEstimator(params={"device": "cuda"}, scaling_config=XGBScalingConfig(**TWO)).fit(
            TRAIN, FEATURES, "Y"
        )
    with pytest.raises(ScalingConfigError, match="params ask for a GPU"):
        LightGBMEstimator(
            params={"device_type": "gpu"}, scaling_config=LightGBMScalingConfig(**TWO)
        ).fit(TRAIN, FEATURES, "Y")
    with pytest.raises(ScalingConfigError, match="positive integer or -1"):
        XGBScalingConfig(num_workers=0)


# -- the returned boosters are the framework's own, and LightGBM's callbacks (issue 31) ------

SMALL, SMALL_EVAL = make_data(400, 5), make_data(100, 6)


def _learner(config: str) -> dict:
    """A booster's saved configuration, less what differs by where it ran (threads)."""
    learner = json.loads(config)["learner"]
    for key in ("nthread", "n_jobs"):
        learner["generic_param"].pop(key, None)
    learner.pop("learner_model_param")  # base_score: the mean label, summed over the ranks
    return learner


def test_the_xgboost_booster_keeps_its_training_configuration(tmp_path):
    params = {
        "max_depth": 2,
        "eta": 0.3,
        "lambda": 2.5,
        "objective": "reg:pseudohubererror",
        "huber_slope": 0.5,
        "eval_metric": ["mae", "rmse"],
        "tree_method": "hist",
    }
    booster = XGBEstimator(
        n_estimators=4, params=params, scaling_config=XGBScalingConfig(**TWO)
    ).fit(SMALL, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    plain = xgb.train(params, xgb.DMatrix(SMALL[FEATURES], SMALL["Y"]), 4)
    config = json.loads(booster.save_config())["learner"]
    assert config["gradient_booster"]["tree_train_param"]["max_depth"] == "2"  # not the default 6
    assert _learner(booster.save_config()) == _learner(plain.save_config())


def test_the_lightgbm_booster_keeps_its_params(tmp_path):
    params = {"num_leaves": 4, "learning_rate": 0.2, "min_data_in_leaf": 5, "verbose": -1}
    booster = LightGBMEstimator(
        n_estimators=4, params=params, scaling_config=LightGBMScalingConfig(**TWO)
    ).fit(SMALL, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    plain = lgb.train(
        {**params, "objective": "regression"}, lgb.Dataset(SMALL[FEATURES], SMALL["Y"]), 4
    )
    assert booster.params == plain.params
    assert "machines" not in booster.params  # the ranks' network is not a training parameter


class RecordRounds:
    """A LightGBM callback that writes what each rank saw each round to ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, env) -> None:
        from shardtrain.runtime.worker_context import current_worker

        rank = current_worker().rank
        seen = [[name, metric, value] for name, metric, value, *_ in env.evaluation_result_list]
        with open(Path(self.folder) / f"rank{rank}.jsonl", "a") as out:
            out.write(json.dumps({"iteration": env.iteration, "metrics": seen}) + "\n")


def test_lightgbm_callbacks_run_on_every_rank_with_global_metrics(tmp_path):
    folder = tmp_path / "seen"
    folder.mkdir()
    est = LightGBMEstimator(
        n_estimators=3,
        params={"num_leaves": 4, "min_data_in_leaf": 5},
        scaling_config=LightGBMScalingConfig(**TWO),
        callbacks=[RecordRounds(str(folder)), lgb.reset_parameter(learning_rate=[0.3, 0.2, 0.1])],
    )
    est.fit(
        SMALL, FEATURES, "Y", eval_set=SMALL_EVAL, artifact_stage_location=str(tmp_path / "stage")
    )
    seen = {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(folder.iterdir())
    }
    assert set(seen) == {"rank0", "rank1"}
    assert seen["rank0"] == seen["rank1"]  # the same global metrics on both ranks
    assert [r["iteration"] for r in seen["rank0"]] == [0, 1, 2]
    eval_l2 = [v for r in seen["rank0"] for name, metric, v in r["metrics"] if name == "eval"]
    assert eval_l2 == pytest.approx(est.get_eval_results()["eval"]["l2"])
