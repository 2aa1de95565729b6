"""tune_hyperparameters and register_model in one flow under the Prefect harness with a real
local Ray: the result is the best model's artifact plus the trial table, and it registers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prefect import flow

from prefect_shardtrain import ModelStage, register_model, tune_hyperparameters
from shardtrain import load_model
from shardtrain.modeling.tune import get_tuner_context

pytestmark = pytest.mark.prefect  # the Prefect harness and a real local Ray


def train_func():
    import xgboost

    ctx = get_tuner_context()
    depth = ctx.get_hyper_params()["max_depth"]
    df = ctx.get_dataset_map()["train"].to_pandas()
    model = xgboost.XGBRegressor(n_estimators=5, max_depth=depth, n_jobs=1).fit(df[["x"]], df["y"])
    rmse = float(np.sqrt(np.mean((model.predict(df[["x"]]) - df["y"]) ** 2)))
    ctx.report(metrics={"rmse": rmse}, model=model)


def test_tune_flow_publishes_the_best_model_and_registers_it(
    prefect_harness, ray_cluster, mlflow_registry, tmp_path
):
    x = np.random.default_rng(0).normal(size=200)
    frame = pd.DataFrame({"x": x, "y": np.sin(3 * x)})
    stage = ModelStage(uri=str(tmp_path / "stage"))
    registry = mlflow_registry

    @flow
    def tuning():
        best = tune_hyperparameters(
            train_func,
            {"max_depth": [1, 4]},
            metric="rmse",
            mode="min",
            search_alg="grid",
            dataset_map={"train": frame},
            stage=stage,
        )
        return best, register_model(best, name="tuned", registry=registry, stage=stage)

    best, registered = tuning()
    assert [
        t["config/max_depth"] for t in sorted(best["trials"], key=lambda t: t["config/max_depth"])
    ] == [1, 4]
    assert best["best_result"]["config/max_depth"] == 4  # deeper fits sin(3x) better
    assert best["params"] == {"max_depth": 4}
    assert best["request_id"].startswith("prefect-")
    assert load_model(best).num_boosted_rounds() == 5
    assert registered.name == "tuned"
