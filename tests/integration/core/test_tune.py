"""Tuner (issue 20) on the session's real Ray: search algorithms against a known optimum, a
vendor-style program around XGBEstimator, and bad input refused before any trial starts."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from shardtrain.errors import (
    MetricNotReportedError,
    ScalingConfigError,
    TuneError,
)
from shardtrain.modeling.tune import (
    TRIALS_FILE,
    Tuner,
    TunerConfig,
    get_tuner_context,
    uniform,
)
from shardtrain.modeling.tune.search import BayesOpt, GridSearch, RandomSearch
from tests.unit.core.test_tune import quadratic, raises

OPTIMUM = (0.3, 2.0)


def distance(row) -> float:
    return math.dist((row["config/x"], row["config/y"]), OPTIMUM)


def test_random_search_gets_near_a_known_optimum_and_publishes_nothing_without_a_model(
    ray_cluster,
):
    """16 seeded random draws of (x, y) in [0, 1] x [0, 4]: the best is within 0.5 of (0.3, 2)."""
    results = Tuner(
        quadratic,
        {"x": uniform(0, 1), "y": uniform(0, 4), "kind": "quadratic"},
        TunerConfig(
            metric="loss", mode="min", search_alg=RandomSearch(random_state=7), num_trials=16
        ),
    ).run()
    frame = results.results
    assert len(frame) == 16 and set(frame["status"]) == {"ok"}
    assert {"trial_id", "loss", "config/x", "config/y", "config/kind"} <= set(frame.columns)
    best = results.best_result.iloc[0]
    assert best["loss"] == frame["loss"].min()
    assert distance(best) < 0.5, best
    assert results.best_model is None and results.artifact is None


def test_grid_search_enumerates_every_combination(ray_cluster):
    results = Tuner(
        quadratic,
        {"x": [0.0, 0.3, 1.0], "y": [2.0, 3.0]},
        TunerConfig(metric="loss", mode="min", search_alg=GridSearch(), num_trials=99),
    ).run()
    pairs = set(zip(results.results["config/x"], results.results["config/y"], strict=True))
    assert pairs == {(x, y) for x in (0.0, 0.3, 1.0) for y in (2.0, 3.0)}
    assert results.best_result.iloc[0]["loss"] == 0.0


def test_bayes_opt_runs_model_based_search(ray_cluster):
    results = Tuner(
        quadratic,
        {"x": uniform(0, 1), "y": uniform(0, 4)},
        TunerConfig(
            metric="loss",
            mode="min",
            search_alg=BayesOpt(random_state=0),
            num_trials=10,
            max_concurrent_trials=1,
        ),
    ).run()
    assert len(results.results) == 10
    assert distance(results.best_result.iloc[0]) < 1.0


def no_metric():
    get_tuner_context().report(metrics={"accuracy": 1.0})


def test_a_metric_never_reported_and_failing_trials_are_clear_errors(ray_cluster):
    config = TunerConfig(metric="loss", mode="min", num_trials=1)
    with pytest.raises(MetricNotReportedError, match="optimises 'loss'") as info:
        Tuner(no_metric, {"x": uniform(0, 1)}, config).run()
    assert info.value.reported == ["accuracy"]
    with pytest.raises(TuneError, match="boom in train_func"):
        Tuner(raises, {"x": uniform(0, 1)}, config).run()


def test_more_resources_per_trial_than_a_node_has(ray_cluster):
    with pytest.raises(ScalingConfigError, match="no node has that many"):
        Tuner(
            quadratic,
            {"x": uniform(0, 1), "y": 1.0},
            TunerConfig(metric="loss", mode="min", resource_per_trial={"CPU": 64}),
        ).run()
    with pytest.raises(ScalingConfigError, match="Insufficient CPU resources"):
        Tuner(
            quadratic,
            {"x": uniform(0, 1), "y": 1.0},
            TunerConfig(
                metric="loss", mode="min", resource_per_trial={"CPU": 1}, max_concurrent_trials=4
            ),
        ).run()


def vendor_program(stage: str):
    """The vendor's HPO example with the import prefix `snowflake.ml` -> `shardtrain` only."""
    from shardtrain.data.data_connector import DataConnector
    from shardtrain.modeling import tune
    from shardtrain.modeling.distributors.xgboost import XGBEstimator
    from shardtrain.modeling.tune import get_tuner_context
    from shardtrain.modeling.tune.search import RandomSearch

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.1, size=400)
    frame = pd.DataFrame(X, columns=["A", "B", "C"]).assign(Y=y)
    dataset_map = {
        "train": DataConnector.from_dataframe(frame.iloc[:300]),
        "test": DataConnector.from_dataframe(frame.iloc[300:]),
    }

    def train_func():
        tuner_context = get_tuner_context()
        config = tuner_context.get_hyper_params()
        dm = tuner_context.get_dataset_map()
        model = XGBEstimator(
            n_estimators=int(config["n_estimators"]),
            params={"max_depth": int(config["max_depth"]), "eta": config["learning_rate"]},
        )  # default scaling: every CPU of the cluster; concurrent trials' fits queue for them
        booster = model.fit(dm["train"], input_cols=["A", "B", "C"], label_col="Y")
        test = dm["test"].to_pandas()
        predictions = model.predict(dm["test"])
        rmse = float(np.sqrt(np.mean((predictions - test["Y"].to_numpy()) ** 2)))
        tuner_context.report(metrics={"rmse": rmse}, model=booster)

    search_space = {
        "n_estimators": tune.randint(10, 30),
        "max_depth": tune.choice([2, 4]),
        "learning_rate": tune.loguniform(0.05, 0.5),
    }
    tuner_config = tune.TunerConfig(
        metric="rmse", mode="min", search_alg=RandomSearch(random_state=1), num_trials=3
    )
    tuner = tune.Tuner(train_func, search_space, tuner_config)
    return tuner.run(dataset_map=dataset_map, artifact_stage_location=stage)


def test_vendor_style_tuner_around_xgb_estimator(ray_cluster, tmp_path):
    import xgboost

    from shardtrain import load_model
    from shardtrain.stage import open_stage

    results = vendor_program(str(tmp_path / "stage"))
    assert len(results.results) == 3 and set(results.results["status"]) == {"ok"}
    assert isinstance(results.best_model, xgboost.Booster)
    artifact = results.artifact
    assert artifact.framework == "xgboost"
    assert artifact.metrics["best_trial"]["rmse"] == results.best_result.iloc[0]["rmse"]
    assert set(artifact.params) == {"n_estimators", "max_depth", "learning_rate"}
    assert TRIALS_FILE in {f["path"] for f in artifact.files}
    booster = load_model(artifact)
    assert booster.num_boosted_rounds() == artifact.params["n_estimators"]
    stage = open_stage(artifact.uri)  # the trial table, beside the model in its manifest
    trials_path = next(p for p in stage.list("") if p.endswith(TRIALS_FILE))
    trials = pd.read_parquet(io.BytesIO(stage.read_bytes(trials_path)))
    assert len(trials) == 3 and set(trials["config/max_depth"]) <= {2, 4}
    # The estimators' worker pool, created inside a trial, outlived the trials: it is not in
    # a trial's placement group (which Ray Tune removes when the trial ends).
    from ray.util.state import list_actors

    from shardtrain.runtime.dashboard import _webui_url
    from shardtrain.runtime.worker_pool import POOL_PREFIX

    url = _webui_url()
    address = url if url.startswith("http") else f"http://{url}"
    actors = list_actors(address=address, detail=True, limit=10_000)
    pools = [a for a in actors if (a.name or "").startswith(POOL_PREFIX)]
    assert pools and all(a.state == "ALIVE" for a in pools), pools
    assert not any(a.placement_group_id for a in pools), pools
    payload = results.to_dict()
    assert payload["uri"] == artifact.uri and len(payload["trials"]) == 3
