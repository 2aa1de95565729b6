"""Many-model training: one DAG node vs a plain loop vs a fresh process per partition.

    python -m bench.many_model                         # 100 partitions x 10k rows
    python -m bench.many_model --partitions 20 --rows 2000 --trees 20   # a quick look

Three ways to train one XGBoost model per partition of the same Parquet data, side by side:

- ``shardtrain``: ``ManyModelTraining`` over the column-partitioned Parquet file: each
  partition a Ray task (1 CPU), Ray reusing warm worker processes; each model published with
  its manifest, plus the run manifest. Timed from ``run()`` to ``wait()`` (the Ray connection
  is timed apart: a DAG node joins a running cluster). The first run includes starting the
  job's Ray worker processes and their imports of shardtrain and xgboost (seconds, once per
  worker); "warm" is a second run from the same driver, on the same workers.
- ``plain loop``: one Python process reading each partition and fitting ``xgboost`` in turn,
  saving each model to a local folder: no publishing, no manifests. Its time includes
  importing xgboost; "warm" leaves that out.
- ``fresh process per partition``: one Ray task per partition with ``max_calls=1``, so each
  runs in a new worker process that imports xgboost again, as one orchestrator task (or one
  mapped task) per partition does.

Each job runs in its own process (``python -m bench.many_model --job NAME``) so none warms
another. The figures are printed as Markdown and JSON; note the machine's load beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"F{i}" for i in range(8)]


def make_data(path: Path, partitions: int, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = partitions * rows
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    part = np.repeat(np.arange(partitions), rows)
    weights = rng.normal(size=(partitions, len(FEATURES)))
    y = np.einsum("ij,ij->i", x, weights[part]) + rng.normal(scale=0.1, size=n)
    table = pa.table({"PART": part, **{f: x[:, i] for i, f in enumerate(FEATURES)}, "Y": y})
    pq.write_table(table, path, row_group_size=rows)  # one row group per partition


def params(trees: int, threads: int | None) -> dict:
    return {"n_estimators": trees, "max_depth": 6, "tree_method": "hist", "n_jobs": threads}


def job_shardtrain(data: str, out: str, trees: int, _threads: int) -> dict:
    from shardtrain.modeling.distributors.many_model import ManyModelTraining
    from shardtrain.runtime.cluster import connect

    def train(data_connector, context):
        import xgboost

        df = data_connector.to_pandas()
        return xgboost.XGBRegressor(**params(trees, 1)).fit(df[FEATURES], df["Y"])

    start = time.perf_counter()
    connect()
    connected = time.perf_counter()
    run = ManyModelTraining(train, out).run(partition_by="PART", data=data, run_id="bench")
    status = run.wait()
    done = time.perf_counter()
    # The same again from this driver: its Ray workers are up and have imported xgboost, as
    # for every run after the first one of a long-lived driver.
    again = ManyModelTraining(train, out).run(partition_by="PART", data=data, run_id="bench2")
    again.wait()
    return {
        "status": status.value,
        "connect_s": connected - start,
        "train_s": done - connected,
        "warm_train_s": time.perf_counter() - done,
    }


def job_loop(data: str, out: str, trees: int, threads: int) -> dict:
    start = time.perf_counter()
    # Imported inside the timing, as the shardtrain job's Ray workers import them inside it.
    import pyarrow.dataset as ds
    import xgboost

    imported = time.perf_counter()
    dataset = ds.dataset(data)
    parts = sorted(set(dataset.to_table(columns=["PART"]).column("PART").to_pylist()))
    Path(out).mkdir(parents=True, exist_ok=True)
    for p in parts:
        df = dataset.to_table(filter=ds.field("PART") == p).to_pandas()
        model = xgboost.XGBRegressor(**params(trees, threads or None)).fit(df[FEATURES], df["Y"])
        model.save_model(os.path.join(out, f"{p}.ubj"))
    done = time.perf_counter()
    return {
        "status": "SUCCESS",
        "connect_s": 0.0,
        "train_s": done - start,
        "warm_train_s": done - imported,
    }


def job_fresh(data: str, out: str, trees: int, _threads: int) -> dict:
    import pyarrow.dataset as ds
    import ray

    from shardtrain.runtime.cluster import connect

    @ray.remote(num_cpus=1, max_calls=1)  # a new worker process for every task
    def train_one(path: str, p: int, target: str) -> None:
        import pyarrow.dataset as ds
        import xgboost

        df = ds.dataset(path).to_table(filter=ds.field("PART") == p).to_pandas()
        model = xgboost.XGBRegressor(**params(trees, 1)).fit(df[FEATURES], df["Y"])
        model.save_model(os.path.join(target, f"{p}.ubj"))

    start = time.perf_counter()
    connect()
    connected = time.perf_counter()
    Path(out).mkdir(parents=True, exist_ok=True)
    parts = sorted(set(ds.dataset(data).to_table(columns=["PART"]).column("PART").to_pylist()))
    ray.get([train_one.remote(data, p, out) for p in parts])
    return {
        "status": "SUCCESS",
        "connect_s": connected - start,
        "train_s": time.perf_counter() - connected,
    }


def _stop_head(home: Path) -> None:
    """Stop the local Ray head the jobs started in the benchmark's own home."""
    os.environ["SHARDTRAIN_HOME"] = str(home)
    from shardtrain.runtime import local_cluster

    local_cluster.stop()


JOBS = {
    "shardtrain": job_shardtrain,
    "plain loop": job_loop,
    "fresh process per partition": job_fresh,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument(
        "--loop-threads",
        type=int,
        default=1,
        help="xgboost threads in the plain loop (0: all cores; 1 avoids OpenMP spinning on a "
        "busy machine, and matches the 1 CPU each partition task gets)",
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(JOBS[args.job](args.data, args.out, args.trees, args.loop_threads)))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-mm-") as tmp:
        data = Path(tmp, "data.parquet")
        make_data(data, args.partitions, args.rows)
        try:
            for name in JOBS:
                load = os.getloadavg()[0]
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.many_model",
                        "--job",
                        name,
                        "--data",
                        str(data),
                        "--out",
                        str(Path(tmp, name.replace(" ", "_"))),
                        "--trees",
                        str(args.trees),
                        "--loop-threads",
                        str(args.loop_threads),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "SHARDTRAIN_HOME": str(Path(tmp, "home"))},
                )
                if proc.returncode != 0:
                    results[name] = {"error": proc.stderr[-1500:]}
                    continue
                results[name] = {
                    **json.loads(proc.stdout.strip().splitlines()[-1]),
                    "load_before": load,
                }
        finally:
            _stop_head(Path(tmp, "home"))
    print(
        f"\n{args.partitions} partitions x {args.rows} rows, {args.trees} trees, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| approach | train (s) | warm (s) | connect (s) | status | 1-min load before |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed | | | | |")
            continue
        warm = f"{r['warm_train_s']:.1f}" if "warm_train_s" in r else ""
        print(
            f"| {name} | {r['train_s']:.1f} | {warm} | {r['connect_s']:.1f} | {r['status']} | "
            f"{r['load_before']:.1f} |"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
