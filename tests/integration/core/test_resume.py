"""Resuming a boosting run from its checkpoints after the driver died, on a real local Ray.

The driver is a real process, SIGKILLed right before it writes the manifest (after the last
checkpoint): what a retry then finds on the stage is exactly what such a crash leaves.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from shardtrain import DataConnector
from shardtrain.config import FailureConfig
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group

pytestmark = pytest.mark.ray  # real Ray workers and a killed driver

FEATURES = ["F0", "F1", "F2", "F3"]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}
ESTIMATORS = {
    "xgboost": (XGBEstimator, XGBScalingConfig),
    "lightgbm": (LightGBMEstimator, LightGBMScalingConfig),
}


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()


@pytest.fixture(scope="module")
def train_path(tmp_path_factory):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4000, len(FEATURES)))
    y = 2 * x[:, 0] - x[:, 1] + np.sin(x[:, 2]) + rng.normal(0, 0.2, len(x))
    path = tmp_path_factory.mktemp("resume") / "train.parquet"
    pq.write_table(pa.table({**{f: x[:, i] for i, f in enumerate(FEATURES)}, "Y": y}), path)
    return str(path)


def crash_before_manifest(framework, train_path, stage, request_id, rounds, params):
    """Fit in a driver process that is SIGKILLed right before its manifest is written.

    It joins with this process's runtime_env, as a retry of the same task would: both get
    their workers from one pool, so the warm group of one fit serves the next (it is back in
    the pool before the model is published, so before the kill)."""
    import ray

    runtime_env = dict(ray.get_runtime_context().runtime_env or {})
    script = textwrap.dedent(f"""
        import os, signal
        import shardtrain.model.publish as publish
        from shardtrain.runtime.cluster import connect
        connect(runtime_env={runtime_env!r})
        from shardtrain import DataConnector
        from shardtrain.config import FailureConfig
        from shardtrain.modeling.distributors.{framework} import *
        publish._write_manifest = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        Est, Cfg = {ESTIMATORS[framework][0].__name__}, {ESTIMATORS[framework][1].__name__}
        Est(n_estimators={rounds}, params={params!r}, scaling_config=Cfg(**{TWO!r}),
            failure_config=FailureConfig(checkpoint_frequency=5)).fit(
            DataConnector.from_parquet({train_path!r}), {FEATURES!r}, "Y",
            artifact_stage_location={str(stage)!r}, request_id={request_id!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-3000:]
    return sorted(p.name for p in (stage / "checkpoints" / request_id).iterdir())


def fit(framework, train_path, stage, request_id, rounds, params):
    Est, Cfg = ESTIMATORS[framework]
    est = Est(
        n_estimators=rounds,
        params=params,
        scaling_config=Cfg(**TWO),
        failure_config=FailureConfig(checkpoint_frequency=5),
    )
    booster = est.fit(
        DataConnector.from_parquet(train_path),
        FEATURES,
        "Y",
        artifact_stage_location=str(stage),
        request_id=request_id,
    )
    return est, booster


def rounds_of(booster):
    return (
        booster.num_boosted_rounds()
        if hasattr(booster, "num_boosted_rounds")
        else booster.current_iteration()
    )


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_retry_after_the_last_checkpoint_publishes_it(framework, train_path, tmp_path):
    """Items 2 and 10: a checkpoint at the final round is published as is (LightGBM used to
    fail every retry with 'Number of boosting rounds must be greater than 0'), and only the
    latest checkpoint is kept (20 rounds checkpointed every 5 used to leave 4 model files)."""
    stage = tmp_path / "stage"
    left = crash_before_manifest(framework, train_path, stage, "final", 20, {})
    assert len(left) == 2 and "state.json" in left, left  # the latest model and its state
    est, booster = fit(framework, train_path, stage, "final", 20, {})
    assert rounds_of(booster) == 20
    assert est.get_artifact().params["n_estimators"] == 20
    assert not (stage / "checkpoints" / "final").exists()


def test_retry_with_other_settings_starts_fresh(train_path, tmp_path, capsys, caplog):
    """Item 3: a checkpoint is used only by a run of the same parameters, rounds, columns and
    data; otherwise the run starts fresh and says so."""
    caplog.set_level(logging.INFO, logger="shardtrain")

    def said() -> str:  # progress goes to logging when a handler exists, else to stdout
        text = capsys.readouterr().out + caplog.text
        caplog.clear()
        return text

    stage = tmp_path / "stage"
    crash_before_manifest("xgboost", train_path, stage, "changed", 45, {"max_depth": 2})
    # fewer rounds: a 20-round model (not the checkpoint's 45 rounds labelled 20)
    est, booster = fit("xgboost", train_path, stage, "changed", 20, {"max_depth": 2})
    assert booster.num_boosted_rounds() == 20
    assert "it is a checkpoint of a different run (changed: rounds)" in said()

    crash_before_manifest("xgboost", train_path, stage, "depth", 10, {"max_depth": 2})
    _, booster = fit("xgboost", train_path, stage, "depth", 10, {"max_depth": 4})
    out = said()
    assert "changed: params" in out and "starting fresh" in out
    _, reference = fit("xgboost", train_path, tmp_path / "ref", "ref", 10, {"max_depth": 4})
    x = xgb.DMatrix(pq.read_table(train_path).to_pandas()[FEATURES])
    np.testing.assert_allclose(booster.predict(x), reference.predict(x), rtol=1e-5, atol=1e-5)

    crash_before_manifest("xgboost", train_path, stage, "cols", 10, {})
    est = XGBEstimator(
        n_estimators=10,
        scaling_config=XGBScalingConfig(**TWO),
        failure_config=FailureConfig(checkpoint_frequency=5),
    )
    booster = est.fit(
        DataConnector.from_parquet(train_path),
        FEATURES[:2],
        "Y",
        artifact_stage_location=str(stage),
        request_id="cols",
    )
    assert booster.num_boosted_rounds() == 10 and booster.num_features() == 2
    assert "changed: input_cols" in said()
