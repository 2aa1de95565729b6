"""LightGBM Datasets built streamed (issue 18): a shard over its memory budget is read a
batch at a time, so a rank never holds its raw features whole, only LightGBM's binned data.

The fit test runs the real estimator on the session's Ray (2 workers, an eval set) once
streamed and once in memory; the memory test builds a Dataset in a fresh process (so its
peak RSS is its own) from a source that generates its rows as they are read (no file, no
table: what a rank holds is what the builder made it hold), at two sizes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from shardtrain import DataConnector
from shardtrain.data.source import Source
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.runtime import worker_group
from tests.unit.core.test_lightgbm_streaming import build, make_data

FEATURES = [f"F{i}" for i in range(8)]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}
ROOT = Path(__file__).resolve().parents[3]


class Streamed(LightGBMEstimator):
    """Sizes scaled so that a small shard is over a small budget in memory and within it
    streamed: the budget check then chooses the streamed path, as it would for a big one."""

    def _shard_memory_bytes(self, rows, num_features, streaming):
        return rows * (1 if streaming else 100)


# -- a fit, streamed and in memory ----------------------------------------------------------------
def test_streamed_fit_matches_in_memory_fit(ray_cluster, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)  # the driver's progress lines (runtime.run.emit)
    train, holdout = make_data(30_000, 1), make_data(6_000, 2)
    params = {"num_leaves": 31, "learning_rate": 0.1}
    boosters, estimators = {}, {}
    try:
        for name, cls, budget in (
            (
                "streamed",
                Streamed,
                100_000,
            ),  # 18k rows a rank (train + eval): x 100 over, x 1 within
            ("memory", LightGBMEstimator, 2**40),
        ):
            est = cls(
                n_estimators=60,
                params=params,
                scaling_config=LightGBMScalingConfig(**TWO, memory_per_worker=budget),
            )
            boosters[name] = est.fit(
                train,
                FEATURES,
                "Y",
                eval_set=holdout,
                artifact_stage_location=str(tmp_path / name),
            )
            estimators[name] = est
    finally:
        worker_group.shutdown_workers()
    assert estimators["streamed"].get_memory_plan().external
    assert estimators["streamed"]._streamed is True
    assert not estimators["memory"].get_memory_plan().external
    assert estimators["memory"]._streamed is False
    said = caplog.text + capsys.readouterr().out
    assert "Dataset streamed" in said

    def rmse(booster):
        pred = booster.predict(holdout[FEATURES].to_numpy())
        return float(np.sqrt(np.mean((pred - holdout["Y"].to_numpy()) ** 2)))

    streamed, memory = rmse(boosters["streamed"]), rmse(boosters["memory"])
    assert abs(streamed - memory) / memory < 0.01, (streamed, memory)
    # the global eval metric is the held-out MSE whichever way the ranks binned
    eval_l2 = estimators["streamed"].get_eval_results()["eval"]["l2"]
    assert len(eval_l2) == 60 and eval_l2[-1] == pytest.approx(streamed**2, rel=1e-3)


class GeneratedSource(Source):
    """``rows`` x ``features`` float64 made batch by batch as they are read (seeded by unit
    and column):
    no storage, so nothing holds the raw features unless the reader keeps them."""

    UNIT = 32_768

    def __init__(self, rows: int, features: int) -> None:
        self._features = features
        names = [f"F{i}" for i in range(features)] + ["Y"]
        self._schema = pa.schema([(n, pa.float64()) for n in names])
        self._unit_rows = [min(self.UNIT, rows - s) for s in range(0, rows, self.UNIT)]
        super().__init__()

    def describe(self):
        return {"kind": "generated", "num_rows": self.num_rows}

    def _read_range(self, start, stop, columns):
        names = list(columns or self._schema.names)
        for unit, lo, hi in self._units_in(start, stop):
            arrays = [  # each column its own seed: a narrow read generates only its columns
                np.random.default_rng([unit, self._schema.names.index(name)]).standard_normal(
                    self._unit_rows[unit]
                )[lo:hi]
                for name in names
            ]
            yield pa.record_batch(arrays, names=names)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_construction(rows: int, features: int, streamed: bool) -> dict:
    """Peak RSS growth (bytes) of building one Dataset; run in a fresh process. The peak
    (VmHWM) is reset first (``clear_refs``: Linux), so imports' own peaks do not mask it."""
    connector = DataConnector(GeneratedSource(rows, features))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    assert _status_kib("VmHWM") <= base + 1024
    params = {"objective": "regression", "verbose": -1, "num_threads": 1}
    dtrain, _ = build(connector, None, params, streamed)
    assert dtrain.num_data() == rows
    return {"peak_growth": (_status_kib("VmHWM") - base) * 1024}


def _measure(rows: int, features: int, streamed: bool) -> int:
    code = (
        "import json, lightgbm\n"
        "from tests.integration.core.test_lightgbm_streaming import measure_construction\n"
        f"print(json.dumps(measure_construction({rows}, {features}, {streamed})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_growth"]


def test_streamed_construction_memory_does_not_grow_with_the_raw_data():
    """From 220k to 700k rows x 16 float64 features (raw: +62 MiB), a streamed build's peak
    grows by about the binned data (1 byte a value: +7 MiB), while building from the
    whole table (the in-memory path) grows by the raw data. Both sizes are past LightGBM's
    200,000-row bin sample, which is the same at both."""
    features, small, large = 16, 220_000, 700_000
    raw_growth = (large - small) * (features + 1) * 8
    binned_growth = (large - small) * features
    streamed = _measure(large, features, True) - _measure(small, features, True)
    assert streamed < binned_growth + 24 * 2**20, (streamed / 2**20, binned_growth / 2**20)
    whole = _measure(large, features, False) - _measure(small, features, False)
    assert whole > 0.8 * raw_growth, (whole / 2**20, raw_growth / 2**20)
