"""Configs validated once, by one helper; environment knobs read at call time; every public
error exported from the package root and pickling with its details."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

import shardtrain
from shardtrain import env, errors
from shardtrain.config import (
    FailureConfig,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    XGBScalingConfig,
    check_int,
)
from shardtrain.errors import ConfigError, ScalingConfigError


@pytest.mark.parametrize("value", [True, 1.0, "2", None, -2, 0])
def test_check_int_refuses_bools_floats_and_small_numbers(value):
    with pytest.raises(ConfigError, match=r"n must be a positive integer or -1 \(automatic\)"):
        check_int(value, "n", auto=True)


def test_check_int_accepts_and_words_its_bounds():
    assert check_int(-1, "n", auto=True) == -1
    assert check_int(0, "n", minimum=0) == 0
    with pytest.raises(ConfigError, match="n must be an integer >= 3, got 2"):
        check_int(2, "n", minimum=3)
    with pytest.raises(ScalingConfigError) as info:
        check_int(0, "k", error=ScalingConfigError, field="k")
    assert info.value.field == "k"


def test_configs_refuse_bad_values_on_construction():
    with pytest.raises(ConfigError, match="FailureConfig.max_failures must be an integer >= 0"):
        FailureConfig(max_failures=True)
    with pytest.raises(ScalingConfigError, match="num_cpu_per_worker must be a positive"):
        XGBScalingConfig(num_cpu_per_worker=0)
    with pytest.raises(ScalingConfigError, match="num_nodes must be a positive integer"):
        PyTorchScalingConfig(num_nodes=0)
    with pytest.raises(ScalingConfigError, match="needs some CPU or GPU"):
        WorkerResourceConfig(num_cpus=0, num_gpus=0)
    assert WorkerResourceConfig(num_cpus=0, num_gpus=1).num_gpus == 1


def test_knobs_are_read_when_used(monkeypatch):
    monkeypatch.delenv("SHARDTRAIN_WORKER_IDLE_S", raising=False)
    assert env.WORKER_IDLE_S.get() == 60.0
    monkeypatch.setenv("SHARDTRAIN_WORKER_IDLE_S", "2.5")
    assert env.WORKER_IDLE_S.get() == 2.5
    monkeypatch.setenv("SHARDTRAIN_WORKER_IDLE_S", "soon")
    with pytest.raises(ConfigError, match="SHARDTRAIN_WORKER_IDLE_S='soon' is not valid"):
        env.WORKER_IDLE_S.get()
    assert len({k.name for k in env.KNOBS}) == len(env.KNOBS)


def test_every_public_error_is_exported_from_the_root_and_pickles():
    public = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ShardtrainError)
    }
    assert public <= set(shardtrain.__all__)
    for name in public:
        error = getattr(shardtrain, name)("what went wrong; what to do.", rank=1)
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and again.rank == 1 and str(again) == str(error)
    assert issubclass(shardtrain.NotFittedError, RuntimeError)
    assert issubclass(shardtrain.OutsideWorkerError, RuntimeError)
    assert issubclass(shardtrain.WorkerDiedError, shardtrain.WorkerError)


def test_not_fitted_and_outside_a_worker():
    with pytest.raises(shardtrain.NotFittedError, match="fit\\(\\) has not run yet"):
        shardtrain.XGBEstimator().get_booster()
    with pytest.raises(shardtrain.OutsideWorkerError, match="only works inside"):
        shardtrain.get_context()
    with pytest.raises(shardtrain.OutsideWorkerError, match="get_shard"):
        shardtrain.ShardedDataConnector.from_pandas(pd.DataFrame({"x": [1]})).get_shard()


def test_version_is_single_sourced():
    from importlib.metadata import version

    assert shardtrain.__version__ == version("shardtrain")
