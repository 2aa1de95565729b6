"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_tune.py.]

Tuner (issue 20) on the session's real Ray: search algorithms against a known optimum, a
vendor-style program around XGBEstimator, and bad input refused before any trial starts."""

from __future__ import annotations

import pytest

from shardtrain.errors import (
    ConfigError,
    OutsideWorkerError,
    SearchSpaceError,
)
from shardtrain.modeling.tune import (
    Tuner,
    TunerConfig,
    get_tuner_context,
    loguniform,
    randint,
    uniform,
)
from shardtrain.modeling.tune.search import BayesOpt, GridSearch

OPTIMUM = (0.3, 2.0)


def quadratic():
    """Minimum 0 at x=0.3, y=2."""
    ctx = get_tuner_context()
    p = ctx.get_hyper_params()
    ctx.report(metrics={"loss": (p["x"] - OPTIMUM[0]) ** 2 + (p["y"] - OPTIMUM[1]) ** 2})


@pytest.mark.parametrize(
    "space, match",
    [
        ({}, "non-empty dict"),
        ({"x": uniform(1, 0)}, "lower < upper"),
        ({"x": loguniform(0, 1)}, "0 < lower"),
        ({"x": randint(1.5, 3)}, "integers"),
        ({"x": []}, "no options"),
        ({"x": [object()]}, "numbers, strings or booleans"),
        ({"x": {"a": 1}}, "not a search definition"),
        ({"x": float("nan")}, "not a search definition"),
    ],
)
def test_invalid_search_spaces_are_refused(space, match):
    with pytest.raises(SearchSpaceError, match=match):
        Tuner(quadratic, space, TunerConfig(metric="loss", mode="min"))


def test_grid_search_refuses_sampling_functions():
    with pytest.raises(SearchSpaceError, match="GridSearch enumerates lists") as info:
        Tuner(
            quadratic,
            {"x": [0.1, 0.2], "y": uniform(0, 4)},
            TunerConfig(metric="loss", mode="min", search_alg=GridSearch()),
        )
    assert info.value.param == "y"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"metric": "", "mode": "min"}, "metric"),
        ({"metric": "loss", "mode": "minimise"}, "mode"),
        ({"metric": "loss", "mode": "min", "num_trials": 0}, "num_trials"),
        ({"metric": "loss", "mode": "min", "max_concurrent_trials": -1}, "max_concurrent_trials"),
        (
            {"metric": "loss", "mode": "min", "resource_per_trial": {"CPU": -1}},
            "resource_per_trial",
        ),
        ({"metric": "loss", "mode": "min", "search_alg": "random"}, "search_alg"),
    ],
)
def test_invalid_tuner_configs_are_refused(kwargs, field):
    with pytest.raises(ConfigError) as info:
        TunerConfig(**kwargs)
    assert info.value.field == field


def test_train_func_with_arguments_is_refused():
    with pytest.raises(ConfigError, match="no arguments"):
        Tuner(lambda config: None, {"x": uniform(0, 1)}, TunerConfig(metric="m", mode="max"))


def test_get_tuner_context_outside_a_trial():
    with pytest.raises(OutsideWorkerError, match="inside a Tuner"):
        get_tuner_context()


def test_bayes_opt_without_optuna_names_the_extra(monkeypatch):
    from shardtrain.errors import MissingDependencyError
    from shardtrain.model import frameworks

    monkeypatch.setattr(frameworks, "_installed", lambda module: module != "optuna")
    with pytest.raises(MissingDependencyError, match=r"shardtrain\[tune\]"):
        Tuner(
            quadratic,
            {"x": uniform(0, 1)},
            TunerConfig(metric="loss", mode="min", search_alg=BayesOpt()),
        )


def raises():
    raise ValueError("boom in train_func")
