"""Issue 17's GBDT start-up and per-round work: what a rank does and does not do.

- Ranks import xgboost / lightgbm without scikit-learn (1.1 s and ~100 MiB of every new
  worker process), and a later ``import sklearn`` in that process still works.
- The training set is evaluated each round only when the fit reads the result.
- Ranks hand the trainers their shard's Arrow columns (no numpy matrix): the binned matrix
  and the model are the ones the numpy path gives, casts and missing values included.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet
import pytest

from shardtrain import DataConnector
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.modeling.distributors.xgboost_worker import ArrowIter
from shardtrain.runtime import worker_group
from tests.integration.core.gbdt_perf_callbacks import RecordImports

FEATURES = [f"F{i}" for i in range(5)]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}


def make_data(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["Y"] = 2 * x[:, 0] - x[:, 1] + np.sin(x[:, 2]) + rng.normal(0, 0.2, rows)
    return frame


def test_an_in_memory_rank_reads_batches_as_stored_and_frees_before_training(tmp_path, monkeypatch):
    """The rank hands XGBoost its Parquet shard's batches as decoded (never concatenated across
    row groups: copies, ~60 MiB more at the peak of a 1M x 32 build), and gives what building
    freed back to the OS before the first round."""
    from shardtrain.modeling.distributors import xgboost_worker
    from shardtrain.modeling.distributors.boosting import BoostingJob
    from shardtrain.runtime.train_worker import Reporter

    frame = make_data(40_000)
    pq_path = tmp_path / "shard.parquet"
    pa.parquet.write_table(pa.Table.from_pandas(frame), pq_path, row_group_size=10_000)
    events: list = []
    batch_rows: list[int] = []
    real_next, real_release = ArrowIter.next, xgboost_worker.release_freed_memory
    real_train = xgboost_worker.xgboost.train

    def next_batch(self, input_data):
        def record(*, data, **kwargs):
            batch_rows.append(data.num_rows)
            return input_data(data=data, **kwargs)

        return real_next(self, record)

    def release():
        events.append("release")
        real_release()

    def train(*args, **kwargs):
        events.append("train")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ArrowIter, "next", next_batch)
    monkeypatch.setattr(xgboost_worker, "release_freed_memory", release)
    monkeypatch.setattr(xgboost_worker.xgboost, "train", train)
    job = BoostingJob(
        params={"max_depth": 3, "nthread": 1, "objective": "reg:squarederror"},
        num_boost_round=2,
        early_stopping_rounds=None,
        input_cols=FEATURES,
        label_col="Y",
        init_model=None,
        checkpoint_every=0,
        evaluate_train=False,
    )
    result = xgboost_worker.train_rank(
        Reporter(),
        rank=0,
        job=job,
        tracker_args=None,
        train=DataConnector.from_parquet(str(pq_path)),
        evals=None,
        callbacks=[],
    )
    assert result.rows == 40_000 and result.model
    assert batch_rows and max(batch_rows) <= 10_000, batch_rows  # within a row group each
    assert events == ["release", "train"], events


def test_ranks_import_xgboost_without_sklearn_and_sklearn_still_imports(ray_cluster, tmp_path):
    worker_group.shutdown_workers()  # new worker processes: what a cold fit starts
    est = XGBEstimator(
        n_estimators=2,
        scaling_config=XGBScalingConfig(**TWO),
        callbacks=[RecordImports(str(tmp_path))],
    )
    est.fit(make_data(2000), FEATURES, "Y", artifact_stage_location=str(tmp_path / "stage"))
    worker_group.shutdown_workers()  # these processes believe sklearn is absent: drop them
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert seen == {
            "sklearn_before": False,
            "xgboost_saw_sklearn": False,
            "sklearn_after": True,
        }, (rank, seen)
    import xgboost.compat

    assert xgboost.compat.SKLEARN_INSTALLED  # the driver's xgboost is untouched


@pytest.mark.parametrize(
    "framework, metric_param, metric",
    [("xgboost", {"eval_metric": "mae"}, "mae"), ("lightgbm", {"metric": "l1"}, "l1")],
)
def test_the_training_set_is_evaluated_only_when_asked(
    ray_cluster, tmp_path, framework, metric_param, metric
):
    if framework == "xgboost":
        est_cls, cfg = XGBEstimator, XGBScalingConfig(**TWO)
    else:
        est_cls, cfg = LightGBMEstimator, LightGBMScalingConfig(**TWO)
    data = make_data(3000)

    def fit(params=None, **kwargs):
        est = est_cls(n_estimators=4, params=params, scaling_config=cfg)
        est.fit(data, FEATURES, "Y", artifact_stage_location=str(tmp_path), **kwargs)
        return est

    quiet = fit()
    assert quiet.get_eval_results() == {} and quiet.get_artifact().metrics == {}
    asked = fit(metric_param)
    assert list(asked.get_eval_results()["train"]) == [metric]
    assert len(asked.get_eval_results()["train"][metric]) == 4
    verbose = fit(verbose_eval=2)
    assert set(verbose.get_eval_results()) == {"train"}
    with_eval = fit(eval_set=make_data(500, seed=1))
    assert set(with_eval.get_eval_results()) == {"train", "eval"}
    worker_group.shutdown_workers()
