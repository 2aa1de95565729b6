"""Where a GBDT fit's time and memory go: plain library phase by phase, shardtrain rank by rank.

    python -m bench.profile [xgboost|lightgbm] [--rows 1000000]

The harness says how far apart the implementations are; this says why. In one process:
- plain: reading Parquet to numpy, building the library's matrix, boosting, and boosting
  again with a per-round metric on the training rows (shardtrain reports one per round);
- shardtrain: starting the worker group (what a cold fit pays over a warm one), then a fit
  on the warm group with each rank's own split (reading + building, boosting) from the
  estimator's log, the driver's remainder (planning, publishing) being the rest;
- the peak resident memory of every process during each, by process title.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from bench import gbdt
from bench.data import feature_names, make_parquet, read_xy
from bench.memory import PeakMemory

GIB = 2**30


def _timed(label: str, fn, results: dict):
    start = time.perf_counter()
    value = fn()
    results[label] = time.perf_counter() - start
    return value


def plain_phases(framework: str, path: Path) -> dict:
    out: dict = {}
    with PeakMemory() as memory:
        x, y = _timed("read Parquet to numpy", lambda: read_xy(path), out)
        if framework == "xgboost":
            import xgboost as xgb

            params = {**gbdt.XGB_PARAMS, "nthread": 2}
            matrix = _timed(
                "build QuantileDMatrix",
                lambda: xgb.QuantileDMatrix(x, y, nthread=2, feature_names=feature_names()),
                out,
            )
            _timed("boost 100 rounds", lambda: xgb.train(params, matrix, gbdt.ROUNDS), out)
            _timed(
                "boost 100 rounds + training-set metric each round",
                lambda: xgb.train(
                    params, matrix, gbdt.ROUNDS, evals=[(matrix, "train")], verbose_eval=False
                ),
                out,
            )
        else:
            import lightgbm as lgb

            params = {**gbdt.LGB_PARAMS, "num_threads": 2}
            dataset = _timed(
                "build Dataset (binning)",
                lambda: lgb.Dataset(x, y, params=params, free_raw_data=False).construct(),
                out,
            )
            _timed("boost 100 rounds", lambda: lgb.train(params, dataset, gbdt.ROUNDS), out)
            _timed(
                "boost 100 rounds + training-set metric each round",
                lambda: lgb.train(params, dataset, gbdt.ROUNDS, valid_sets=[dataset]),
                out,
            )
    out["peak memory by process (GiB)"] = {k: v / GIB for k, v in memory.by_process.items()}
    return out


class _RankTimes(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "time per rank" in record.getMessage():
            self.lines.append(record.getMessage())


def shardtrain_phases(framework: str, path: Path, stage: Path) -> dict:
    import ray

    from shardtrain.runtime.resources import WorkerShape
    from shardtrain.runtime.worker_group import lease

    out: dict = {}
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    handler = _RankTimes()
    logger = logging.getLogger("shardtrain")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def start_group():
        with lease(WorkerShape(num_workers=2, cpus=1, gpus=0)):
            pass

    _timed("start 2 worker processes (cold only)", start_group, out)
    with PeakMemory() as memory:
        _timed(
            "fit on warm workers (total)",
            lambda: gbdt._shardtrain_fit(framework, path, stage, gbdt.ROUNDS, 32),
            out,
        )
    out["ranks"] = handler.lines
    out["peak memory by process (GiB)"] = {k: v / GIB for k, v in memory.by_process.items()}
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("framework", choices=("xgboost", "lightgbm"), default="xgboost", nargs="?")
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_parquet(Path(tmp) / "train.parquet", args.rows)
        for name, phases in (
            ("plain", plain_phases(args.framework, path)),
            ("shardtrain", shardtrain_phases(args.framework, path, Path(tmp) / "stage")),
        ):
            print(f"{args.framework} {name} ({args.rows:,} rows)")
            for key, value in phases.items():
                if isinstance(value, dict):
                    print(f"  {key}:")
                    for process, gib in sorted(value.items(), key=lambda kv: -kv[1]):
                        print(f"    {process:40s} {gib:.2f}")
                elif isinstance(value, list):
                    for line in value:
                        print(f"  {line}")
                else:
                    print(f"  {key:55s} {value:6.2f} s")


if __name__ == "__main__":
    main()
