"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_lightgbm_streaming.py.]

LightGBM Datasets built streamed (issue 18): a shard over its memory budget is read a
batch at a time, so a rank never holds its raw features whole, only LightGBM's binned data.

The fit test runs the real estimator on the session's Ray (2 workers, an eval set) once
streamed and once in memory; the memory test builds a Dataset in a fresh process (so its
peak RSS is its own) from a source that generates its rows as they are read (no file, no
table: what a rank holds is what the builder made it hold), at two sizes.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb  # before lightgbm_worker (which otherwise looks for a Ray worker)
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shardtrain import DataConnector
from shardtrain.errors import MemoryBudgetError
from shardtrain.modeling.distributors.boosting import BoostingJob
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator

FEATURES = [f"F{i}" for i in range(8)]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}
ROOT = Path(__file__).resolve().parents[3]


def make_data(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURES)))  # float64: streamed as float64
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["Y"] = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] * x[:, 4]
    frame["Y"] += rng.normal(0, 0.3, n)
    return frame


# -- the Dataset builder, in process ---------------------------------------------------------------
def job(cols, params=None) -> BoostingJob:
    return BoostingJob(
        params=dict(params or {"objective": "regression", "verbose": -1, "num_threads": 1}),
        num_boost_round=10,
        early_stopping_rounds=None,
        input_cols=list(cols),
        label_col="Y",
        init_model=None,
        checkpoint_every=0,
    )


def build(connector, evals, params, streamed, batch_rows=None, construct=True):
    from shardtrain.modeling.distributors import lightgbm_worker

    spec = job([c for c in connector.columns if c != "Y"], params)
    dtrain, deval = lightgbm_worker.shard_datasets(
        connector, evals, spec, streamed=streamed, batch_rows=batch_rows
    )
    for dataset in (dtrain, deval):
        if dataset is not None:
            dataset.params = dict(spec.params)
    if not construct:  # as on a rank: lightgbm.train constructs (with init_model: scores)
        return dtrain, deval
    dtrain.construct()
    if deval is not None:
        deval.construct()
    return dtrain, deval


def test_streamed_dataset_bins_exactly_as_the_arrow_path(tmp_path):
    """The same sample rows, the same bin boundaries, the same binned rows (train and eval,
    nulls included), the same model, and a resumed fit (init_model) scores alike."""
    frame = make_data(7_000, 3)
    frame.loc[::97, "F1"] = np.nan
    frame["F7"] = frame["F7"].astype(np.float32)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    train = DataConnector.from_arrow(table.slice(0, 5_000))
    evals = DataConnector.from_arrow(table.slice(5_000))
    params = {
        "objective": "regression",
        "verbose": -1,
        "num_threads": 1,
        "bin_construct_sample_cnt": 3_000,  # a sample of part of the rows, spread over batches
    }
    models = {}
    for streamed in (False, True):
        dtrain, deval = build(train, evals, params, streamed, batch_rows=700)
        dtrain._dump_text(str(tmp_path / f"train_{streamed}.txt"))
        deval._dump_text(str(tmp_path / f"eval_{streamed}.txt"))
        first = lgb.train(params, dtrain, 10, valid_sets=[deval])
        dtrain, deval = build(train, evals, params, streamed, batch_rows=700, construct=False)
        resumed = lgb.train(params, dtrain, 5, valid_sets=[deval], init_model=first)
        models[streamed] = (first.model_to_string(), resumed.model_to_string())
        assert resumed.current_iteration() == 15
    for name in ("train", "eval"):
        assert (tmp_path / f"{name}_True.txt").read_text() == (
            tmp_path / f"{name}_False.txt"
        ).read_text()
    assert models[True] == models[False]


def test_sequence_reads_forward_one_batch_at_a_time():
    from shardtrain.modeling.distributors.lightgbm_worker import ShardSequence

    frame = make_data(1_000, 4)
    seq = ShardSequence(DataConnector.from_pandas(frame), FEATURES, batch_rows=64)
    x = frame[FEATURES].to_numpy()
    assert len(seq) == 1_000 and seq[5].dtype == np.float64
    np.testing.assert_array_equal(seq[5], x[5])
    np.testing.assert_array_equal(seq[900], x[900])
    np.testing.assert_array_equal(seq[60:200], x[60:200])  # across batches, from a new pass
    assert seq.passes == 2
    np.testing.assert_array_equal(seq[200:264], x[200:264])  # forward: the same pass
    assert seq.passes == 2
    with pytest.raises(IndexError):
        seq[1_000]


# -- the budget LightGBM's memory implies ----------------------------------------------------------
def test_memory_need_streamed_is_the_binned_data_not_the_raw():
    est = LightGBMEstimator()
    rows, features = 10_000_000, 100
    streamed = est._shard_memory_bytes(rows, features, True)
    in_memory = est._shard_memory_bytes(rows, features, False)
    # the binned data (1 GB here) is in both; the raw float32 table (4 GB) only in memory
    assert streamed > rows * features
    assert in_memory - streamed > 0.9 * rows * features * 4
    wide = LightGBMEstimator(params={"max_bin": 1023})._shard_memory_bytes(rows, features, True)
    assert wide - streamed == rows * features  # two bytes a value past 255 bins
    classes = LightGBMEstimator(params={"objective": "multiclass", "num_class": 5})
    assert classes._shard_memory_bytes(rows, features, True) - streamed == rows * 4 * 16


def test_a_shard_whose_binned_data_is_over_the_budget_is_refused(monkeypatch):
    """LightGBM has no external memory: when even the streamed need is over the budget the
    fit is refused before any worker starts, saying what it needed."""
    from shardtrain.runtime.memory import plan_memory

    est = LightGBMEstimator()
    rows = [40_000_000, 40_000_000]
    with pytest.raises(MemoryBudgetError, match="even streamed") as info:
        plan_memory(
            2 * 2**30, "test", rows, 50, est._shard_memory_bytes, est.can_stream, "lightgbm"
        )
    assert info.value.streaming is True
    plan = plan_memory(
        8 * 2**30, "test", rows, 50, est._shard_memory_bytes, est.can_stream, "lightgbm"
    )
    assert plan.external  # 40M x 51 float32 (8 GB) is over 8 GiB in memory, fits streamed
