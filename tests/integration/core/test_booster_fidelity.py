"""The boosters ``fit`` returns are the framework's own, configuration included, and
LightGBM's callbacks run on every rank with the global metrics (issue 31); on the session's
Ray head, 2 workers x 1 CPU, tiny fits. The checks needing no Ray (bad callbacks refused on
the driver) are in tests/unit/core/test_gbdt_callbacks.py."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group

FEATURES = ["A", "B", "C"]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()  # free the CPUs the warm pool holds for later tests


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURES))).astype(np.float32)
    data = pd.DataFrame(x, columns=FEATURES)
    data["Y"] = 2 * x[:, 0] - x[:, 1] + rng.normal(0, 0.1, n)
    return data


TRAIN, EVAL = frame(400, 1), frame(100, 2)


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
    ).fit(TRAIN, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    plain = xgb.train(params, xgb.DMatrix(TRAIN[FEATURES], TRAIN["Y"]), 4)
    config = json.loads(booster.save_config())["learner"]
    assert config["gradient_booster"]["tree_train_param"]["max_depth"] == "2"  # not the default 6
    assert _learner(booster.save_config()) == _learner(plain.save_config())


def test_the_lightgbm_booster_keeps_its_params(tmp_path):
    params = {"num_leaves": 4, "learning_rate": 0.2, "min_data_in_leaf": 5, "verbose": -1}
    booster = LightGBMEstimator(
        n_estimators=4, params=params, scaling_config=LightGBMScalingConfig(**TWO)
    ).fit(TRAIN, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    plain = lgb.train(
        {**params, "objective": "regression"}, lgb.Dataset(TRAIN[FEATURES], TRAIN["Y"]), 4
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
    est.fit(TRAIN, FEATURES, "Y", eval_set=EVAL, artifact_stage_location=str(tmp_path / "stage"))
    seen = {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(folder.iterdir())
    }
    assert set(seen) == {"rank0", "rank1"}
    assert seen["rank0"] == seen["rank1"]  # the same global metrics on both ranks
    assert [r["iteration"] for r in seen["rank0"]] == [0, 1, 2]
    eval_l2 = [v for r in seen["rank0"] for name, metric, v in r["metrics"] if name == "eval"]
    assert eval_l2 == pytest.approx(est.get_eval_results()["eval"]["l2"])
