"""Callbacks that no rank could run are refused on the driver, before any worker starts, with
a message that says what to pass (issue 31). The callbacks running on every rank, with the
global metrics: tests/integration/core/test_gbdt.py (the end)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import xgboost as xgb

from shardtrain.config import FailureConfig
from shardtrain.errors import ConfigError, ShardtrainError
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator
from shardtrain.modeling.distributors.xgboost import XGBEstimator

DATA = pd.DataFrame({"A": [1.0, 2.0, 3.0, 4.0], "Y": [0.0, 1.0, 0.0, 1.0]})


def on_round(env) -> None:
    pass


class HoldsALock:
    """A callback that cannot be pickled to the workers (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, env) -> None:
        pass


@pytest.mark.parametrize("Estimator", [LightGBMEstimator, XGBEstimator])
def test_a_single_callback_must_be_wrapped_in_a_list(Estimator):
    with pytest.raises(ConfigError, match="callbacks must be a list .*wrap a single callback"):
        Estimator(callbacks=on_round)


@pytest.mark.parametrize("Estimator", [LightGBMEstimator, XGBEstimator])
def test_an_item_that_is_no_callback_is_refused(Estimator):
    with pytest.raises(ConfigError, match=r"callbacks\[1\] is a str, not a callback"):
        Estimator(callbacks=[on_round, "log every round"])


def test_lightgbm_takes_callbacks_as_lightgbm_train_does():
    assert LightGBMEstimator(callbacks=[on_round]).callbacks == [on_round]
    assert LightGBMEstimator().callbacks == [] and XGBEstimator().callbacks == []


def test_a_callback_that_cannot_reach_the_workers_is_refused_before_they_start():
    est = LightGBMEstimator(callbacks=[HoldsALock()])
    # the check runs before the driver connects to Ray (the unit layer refuses ray.init)
    with pytest.raises(ShardtrainError, match=r"callbacks\[0\] \(HoldsALock\) cannot be sent"):
        est.fit(DATA, ["A"], "Y")


def test_xgboost_takes_training_callback_objects():
    est = XGBEstimator(callbacks=[on_round])  # callable, but not a TrainingCallback
    with pytest.raises(ConfigError, match="xgboost.callback.TrainingCallback objects"):
        est.fit(DATA, ["A"], "Y")
    assert XGBEstimator(callbacks=[xgb.callback.EarlyStopping(rounds=2)]).callbacks


def test_a_failure_config_in_the_old_fifth_place_still_works_with_a_warning():
    failure = FailureConfig(max_failures=2)
    with pytest.warns(DeprecationWarning, match="pass failure_config=... by keyword"):
        est = LightGBMEstimator(10, "regression", None, None, failure)
    assert est.failure_config is failure and est.callbacks == []
