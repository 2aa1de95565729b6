"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_gbdt_perf.py.]

Issue 17's GBDT start-up and per-round work: what a rank does and does not do.

- Ranks import xgboost / lightgbm without scikit-learn (1.1 s and ~100 MiB of every new
  worker process), and a later ``import sklearn`` in that process still works.
- The training set is evaluated each round only when the fit reads the result.
- Ranks hand the trainers their shard's Arrow columns (no numpy matrix): the binned matrix
  and the model are the ones the numpy path gives, casts and missing values included.
"""

from __future__ import annotations

import decimal

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet
import xgboost as xgb

from shardtrain import DataConnector
from shardtrain.data import numeric
from shardtrain.modeling.distributors.xgboost_worker import ArrowIter

FEATURES = [f"F{i}" for i in range(5)]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}


def mixed_table(rows: int = 3000) -> pa.Table:
    """Every numeric storage type a feature may have, with nulls in a float column."""
    rng = np.random.default_rng(3)
    floats = rng.standard_normal(rows)
    nulls = rng.random(rows) < 0.1
    return pa.table(
        {
            "f32": pa.array(rng.standard_normal(rows).astype(np.float32)),
            "f64_nulls": pa.array(np.where(nulls, 0.0, floats), mask=nulls),
            "i64": pa.array(rng.integers(-50, 50, rows)),
            "u8": pa.array(rng.integers(0, 9, rows).astype(np.uint8)),
            "flag": pa.array(rng.random(rows) < 0.5),
            "money": pa.array(
                [decimal.Decimal(f"{v:.2f}") for v in rng.uniform(0, 100, rows)],
                pa.decimal128(6, 2),
            ),
            "y": pa.array(floats * 2 + rng.normal(0, 0.1, rows)),
        }
    )


def numpy_matrix(table: pa.Table, columns: list[str]) -> np.ndarray:
    return np.column_stack([numeric.to_numpy(table.column(c).combine_chunks()) for c in columns])


def test_arrow_features_build_the_matrix_the_numpy_path_builds():
    table = mixed_table()
    columns = [c for c in table.column_names if c != "y"]
    connector = DataConnector.from_arrow(table)
    batches = list(numeric.matrix_batches(connector, columns, "y", batch_rows=1000, arrow=True))
    assert len(batches) == 3 and all(isinstance(f, pa.Table) for f, _ in batches)
    # float32 / float64 columns are the batch's own buffers; the others arrive as float32
    first = batches[0][0]
    assert first.column("f32").type == pa.float32() and first.column("f64_nulls").null_count
    assert {first.column(c).type for c in ("i64", "u8", "flag", "money")} == {pa.float32()}

    arrow = xgb.QuantileDMatrix(ArrowIter(connector, columns, "y", cache_bytes=0), nthread=1)
    x = numpy_matrix(table, columns).astype(np.float32)
    plain = xgb.QuantileDMatrix(x, table.column("y").to_numpy(), nthread=1)
    for a, b in zip(arrow.get_quantile_cut(), plain.get_quantile_cut(), strict=True):
        np.testing.assert_array_equal(a, b)
    params = {"max_depth": 4, "nthread": 1}
    named = xgb.DMatrix(x, feature_names=columns)
    np.testing.assert_allclose(
        xgb.train(params, arrow, 5).predict(named, validate_features=False),
        xgb.train(params, plain, 5).predict(named, validate_features=False),
        rtol=1e-6,
    )


def test_lightgbm_reads_the_shard_table_as_it_reads_the_numpy_matrix():
    table = mixed_table()
    columns = [c for c in table.column_names if c != "y"]
    features, label = numeric.shard_table(DataConnector.from_arrow(table), columns, "y")
    assert isinstance(features, pa.Table) and features.num_rows == len(label) == 3000
    x = numpy_matrix(table, columns).astype(np.float32)
    params = {"num_leaves": 15, "num_threads": 1, "verbose": -1, "min_data_in_leaf": 5}
    from_arrow = lgb.train(params, lgb.Dataset(features, label=label), 5)
    from_numpy = lgb.train(params, lgb.Dataset(x, label=label), 5)
    np.testing.assert_allclose(from_arrow.predict(x), from_numpy.predict(x), rtol=1e-6)


def test_the_xgboost_tracker_answers_before_it_is_asked_and_frees_at_once(monkeypatch):
    """The driver's tracker starts before the group is leased and its address is fetched
    meanwhile (XGBoost polls every 0.1 s for it); freeing one that was never asked does not
    wait for XGBoost's bootstrap timeout; one older than TRACKER_FRESH_S is replaced."""
    import time

    from shardtrain.modeling.distributors import xgboost as xgb_estimator

    tracker = xgb_estimator._Tracker(2)
    started = time.monotonic()
    tracker.free()  # XGBoost's own free() right after start() blocks for the whole timeout
    assert time.monotonic() - started < 30

    tracker = xgb_estimator._Tracker(2)
    try:
        tracker._ready.join(30)
        assert not tracker._ready.is_alive()  # fetched in the background, before being asked
        args = tracker.worker_args()
        assert args["dmlc_tracker_port"] > 0 and args["dmlc_tracker_uri"]
        first = tracker._tracker
        monkeypatch.setattr(xgb_estimator, "TRACKER_FRESH_S", 0.0)
        assert tracker.worker_args()["dmlc_tracker_port"] > 0
        assert tracker._tracker is not first  # a stale tracker was replaced
    finally:
        tracker.free()
