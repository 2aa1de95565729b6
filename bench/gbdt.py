"""XGBoost / LightGBM end to end from Parquet: shardtrain vs the plain single-process library.

    python -m bench.gbdt [--rows 1000000] [--repeats 3] [--small-repeats 5]

Same data (rows x 32 float32 features, Parquet), same params (100 rounds, depth 6 / 63
leaves, hist), same run. Wall time covers reading Parquet to a trained model (and, for
shardtrain, publishing it to a local stage). Peak memory is the resident set of the whole
process tree (driver, raylet, Ray workers) sampled every 20 ms, minus that tree's idle
baseline just before the case, so Ray's own daemons are not charged to training. Quality is
the held-out RMSE. The small-job case is 10k rows x 10 features, 10 rounds, 2 workers, after
Ray is up (warm workers: the pool keeps them between fits, as in a long-running driver).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = 32


def make_parquet(path: Path, rows: int, columns: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, columns), dtype=np.float32)
    y = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] * x[:, 4]
    y += rng.normal(0, 0.3, rows).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(columns)}, "y": y})
    pq.write_table(table, path, row_group_size=128 * 1024)


class PeakRSS:
    """Peak RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def tree_rss() -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self.baseline = self.tree_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.used = max(self.peak - self.baseline, 0)


def rmse(pred, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - y) ** 2)))


def plain_xgboost(train: Path, holdout, rounds: int):
    import xgboost as xgb

    table = pq.read_table(train)
    features = np.column_stack([table.column(f"f{i}").to_numpy() for i in range(COLUMNS)])
    dtrain = xgb.QuantileDMatrix(features, table.column("y").to_numpy(), nthread=2)
    booster = xgb.train(
        {"max_depth": 6, "eta": 0.1, "tree_method": "hist", "nthread": 2}, dtrain, rounds
    )
    return rmse(booster.predict(xgb.DMatrix(holdout[0])), holdout[1])


def plain_lightgbm(train: Path, holdout, rounds: int):
    import lightgbm as lgb

    table = pq.read_table(train)
    features = np.column_stack([table.column(f"f{i}").to_numpy() for i in range(COLUMNS)])
    booster = lgb.train(
        {"num_leaves": 63, "learning_rate": 0.1, "num_threads": 2, "verbose": -1},
        lgb.Dataset(features, table.column("y").to_numpy()),
        rounds,
    )
    return rmse(booster.predict(holdout[0]), holdout[1])


def shardtrain_fit(framework: str, train: Path, holdout, rounds: int, stage: str, columns=COLUMNS):
    from shardtrain import DataConnector
    from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

    if framework == "xgboost":
        est = XGBEstimator(
            n_estimators=rounds,
            params={"max_depth": 6, "eta": 0.1},
            scaling_config=XGBScalingConfig(num_workers=2, num_cpu_per_worker=1),
        )
    else:
        est = LightGBMEstimator(
            n_estimators=rounds,
            params={"num_leaves": 63, "learning_rate": 0.1},
            scaling_config=LightGBMScalingConfig(num_workers=2, num_cpu_per_worker=1),
        )
    booster = est.fit(
        DataConnector.from_parquet(str(train)),
        [f"f{i}" for i in range(columns)],
        "y",
        artifact_stage_location=stage,
    )
    if holdout is None:
        return None
    if framework == "xgboost":
        import xgboost as xgb

        names = [f"f{i}" for i in range(columns)]
        return rmse(booster.predict(xgb.DMatrix(holdout[0], feature_names=names)), holdout[1])
    return rmse(booster.predict(holdout[0]), holdout[1])


def measure(fn, repeats: int) -> dict:
    times, mems, metric = [], [], None
    for _ in range(repeats):
        with PeakRSS() as peak:
            start = time.perf_counter()
            metric = fn()
            times.append(time.perf_counter() - start)
        mems.append(peak.used)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_gib": statistics.median(mems) / 2**30,
        "metric": metric,
        "runs": times,
    }


def main(argv=None) -> dict:
    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small-repeats", type=int, default=5)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_parquet(tmp / "train.parquet", args.rows, COLUMNS, 0)
        make_parquet(tmp / "holdout.parquet", 100_000, COLUMNS, 1)
        make_parquet(tmp / "small.parquet", 10_000, 10, 2)
        hold = pq.read_table(tmp / "holdout.parquet")
        holdout = (
            np.column_stack([hold.column(f"f{i}").to_numpy() for i in range(COLUMNS)]),
            hold.column("y").to_numpy(),
        )
        stage = str(tmp / "stage")
        results["xgboost plain"] = measure(
            lambda: plain_xgboost(tmp / "train.parquet", holdout, 100), args.repeats
        )
        results["lightgbm plain"] = measure(
            lambda: plain_lightgbm(tmp / "train.parquet", holdout, 100), args.repeats
        )
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        for framework in ("xgboost", "lightgbm"):
            cold = measure(
                lambda f=framework: shardtrain_fit(f, tmp / "train.parquet", holdout, 100, stage), 1
            )
            warm = measure(
                lambda f=framework: shardtrain_fit(f, tmp / "train.parquet", holdout, 100, stage),
                args.repeats,
            )
            results[f"{framework} shardtrain (cold workers)"] = cold
            results[f"{framework} shardtrain"] = warm
        from shardtrain.runtime.worker_group import shutdown_workers

        shutdown_workers()
        results["small job shardtrain (cold workers)"] = measure(
            lambda: shardtrain_fit("xgboost", tmp / "small.parquet", None, 10, stage, 10), 1
        )
        results["small job shardtrain"] = measure(
            lambda: shardtrain_fit("xgboost", tmp / "small.parquet", None, 10, stage, 10),
            args.small_repeats,
        )
        ray.shutdown()
    for name, r in results.items():
        metric = f"{r['metric']:.4f}" if r["metric"] is not None else "-"
        print(
            f"{name:40s} median {r['median_s']:7.2f} s (min {r['min_s']:.2f}, max "
            f"{r['max_s']:.2f})  peak +{r['peak_gib']:.2f} GiB  holdout rmse {metric}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
