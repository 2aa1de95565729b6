"""Issue 18's scaling case: XGBoost at a fixed per-worker memory budget as the rows grow.

    python -m bench.memory_scaling                       # the figures in docs/large_data.md
    python -m bench.memory_scaling --rows 250000,1000000 --features 32 --budget 64MiB

For each row count, one fit from external memory at ``--budget`` (the budget check sends
every shard over it to ``ExtMemQuantileDMatrix``) and, where ``--in-memory`` is on, the same
fit in memory (no budget), on the same Parquet file, 2 workers x 1 CPU (``--workers 1``: one
worker of 2 CPUs). Per fit: seconds (data
+ training, the driver's wall clock), seconds per million rows, holdout RMSE, and each
worker's peak memory growth: RSS and anonymous RSS (RssAnon: what the process itself
allocated; RSS also counts file pages it maps, such as the cache pages XGBoost reads, which
the kernel can drop) above what the process had just before the fit, sampled every 50 ms from
/proc. Each measured fit gets fresh worker processes, warmed with a tiny fit (5k rows), so
the growth is the fit's, not the first import of XGBoost, and not hidden by heap that an
earlier fit in the same process freed but the allocator kept (a worker reused after an
in-memory fit of 50k x 256 showed 7.5 MiB of growth for a 400k x 256 external fit). The issue's target (a dataset whose float32 size is
>= 8x the budget, every worker's peak growth within it) needs wide rows and a shard large
beside the fixed costs (the reader's window, a sketch group, the histograms: ~100 MiB at 256
features): the per-row state XGBoost keeps while training (~68 bytes) must stay well under
1/8 of a row's float32 size. Met with ``--rows 1200000 --features 256 --workers 1 --budget
147MiB --depth 4 --rounds 10`` (docs/large_data.md: +93 MiB at most for 1176 MiB of float32).

Ray runs inside this process (``ray.init``), so its workers are this process's descendants.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(path: Path, rows: int, columns: int, seed: int = 0) -> Path:
    """rows x columns float32 features ``f<i>`` and a label ``y``, written a row group of
    <= 8 MiB of float32 at a time (the generator never holds the table; the reader holds a
    few row groups, so wide rows need short row groups)."""
    rng = np.random.default_rng(seed)
    writer = None
    group = max(1024, min(65536, 8 * 2**20 // (4 * (columns + 1))))
    for start in range(0, rows, group):
        n = min(group, rows - start)
        x = rng.standard_normal((n, columns), dtype=np.float32)
        y = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] * x[:, 4]
        y += rng.normal(0, 0.3, n).astype(np.float32)
        table = pa.table({**{f"f{i}": x[:, i] for i in range(columns)}, "y": y})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def _status(pid: int) -> tuple[int, int]:
    """(RSS, RssAnon) of ``pid`` in bytes."""
    rss = anon = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
    return rss, anon


class WorkerPeaks:
    """Per-process peak RSS / RssAnon growth over the baseline taken on entry."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.base: dict[int, tuple[int, int]] = {}
        self.peak: dict[int, tuple[int, int]] = {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                rss, anon = _status(child.pid)
            except OSError:
                continue
            self.base.setdefault(child.pid, (rss, anon))
            old = self.peak.get(child.pid, (0, 0))
            self.peak[child.pid] = (max(old[0], rss), max(old[1], anon))

    def __enter__(self) -> WorkerPeaks:
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def growth(self, top: int) -> list[tuple[int, int, int]]:
        """(pid, RSS growth, RssAnon growth) of the ``top`` processes that grew most: the
        ranks (Ray's daemons and idle workers barely move)."""
        grown = [
            (pid, self.peak[pid][0] - base[0], self.peak[pid][1] - base[1])
            for pid, base in self.base.items()
        ]
        return sorted(grown, key=lambda g: g[2], reverse=True)[:top]


def fit_once(path: Path, holdout, features, budget, workers, rounds, depth) -> dict:
    from shardtrain import DataConnector, XGBEstimator, XGBScalingConfig

    est = XGBEstimator(
        n_estimators=rounds,
        params={"max_depth": depth, "eta": 0.3},
        scaling_config=XGBScalingConfig(
            num_workers=workers, num_cpu_per_worker=2 // workers, memory_per_worker=budget
        ),
    )
    with WorkerPeaks() as peaks:
        started = time.perf_counter()
        booster = est.fit(DataConnector.from_parquet(str(path)), features, "y")
        seconds = time.perf_counter() - started
    import xgboost as xgb

    x, y = holdout
    rmse = float(
        np.sqrt(np.mean((booster.predict(xgb.DMatrix(x, feature_names=features)) - y) ** 2))
    )
    plan = est.get_memory_plan()
    fit_once.estimator = est  # for --predict
    return {
        "external": plan.external,
        "seconds": seconds,
        "rmse": rmse,
        "peaks": peaks.growth(workers),
        "cache_bytes": list(plan.cache_bytes),
        "in_memory_need": list(plan.in_memory_bytes),
        "streaming_need": list(plan.streaming_bytes),
    }


def predict_memory(est, path: Path, rows: int, workers: int, tmp: str) -> list[dict]:
    """Each worker's peak growth while predicting ``path``: streamed to Parquet parts, then
    returned in memory (what a rank then holds: its whole shard's predictions), then to Parquet
    again (the first may have started the processes, whose growth is then their start)."""
    from shardtrain import DataConnector

    results = []
    # the first predict may start the group's processes (growth from nothing): run it again
    for mode in ("to Parquet", "in memory", "to Parquet"):
        output = str(Path(tmp) / f"pred-{rows}") if mode == "to Parquet" else None
        with WorkerPeaks() as peaks:
            started = time.perf_counter()
            est.predict(DataConnector.from_parquet(str(path)), output=output)
            seconds = time.perf_counter() - started
        grown = peaks.growth(workers)
        results.append(
            {
                "mode": f"predict {mode}",
                "rows": rows,
                "seconds": seconds,
                "peaks": grown,
                "load": os.getloadavg(),
            }
        )
        print(
            f"predict {mode:10} rows={rows:>9} {seconds:6.1f} s peak growth/worker: anon "
            f"{max(g[2] for g in grown) / 2**20:6.1f} MiB, rss {max(g[1] for g in grown) / 2**20:6.1f}"
            f" MiB  load={os.getloadavg()[0]:.1f}",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="250000,1000000,2000000")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--budget", default="64MiB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--no-in-memory", dest="in_memory", action="store_false")
    parser.add_argument(
        "--predict", action="store_true", help="also predict each file, to Parquet and in memory"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import ray

    from shardtrain.config import parse_bytes
    from shardtrain.runtime import worker_group

    budget = parse_bytes(args.budget, "--budget")
    os.environ.setdefault("SHARDTRAIN_CLUSTER", "private")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    features = [f"f{i}" for i in range(args.features)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        hold = write_parquet(Path(tmp) / "holdout.parquet", 20_000, args.features, seed=99)
        table = pq.read_table(hold)
        holdout = (np.column_stack([table[f].to_numpy() for f in features]), table["y"].to_numpy())
        warm = write_parquet(Path(tmp) / "warm.parquet", 5_000, args.features, seed=7)

        def fresh_workers() -> None:
            # new processes (no heap kept from an earlier fit), XGBoost imported
            worker_group.shutdown_workers()
            fit_once(warm, holdout, features, -1, args.workers, 2, args.depth)

        for rows in [int(r) for r in args.rows.split(",")]:
            path = write_parquet(Path(tmp) / f"train-{rows}.parquet", rows, args.features)
            raw = rows * 4 * (args.features + 1)
            for mode in ("external", "in memory") if args.in_memory else ("external",):
                fresh_workers()
                result = fit_once(
                    path,
                    holdout,
                    features,
                    budget if mode == "external" else -1,
                    args.workers,
                    args.rounds,
                    args.depth,
                )
                result.update(
                    mode=mode,
                    rows=rows,
                    features=args.features,
                    workers=args.workers,
                    budget=budget,
                    raw_bytes=raw,
                    raw_per_worker_over_budget=raw / args.workers / budget,
                    seconds_per_million_rows=result["seconds"] / (rows / 1e6),
                    load=os.getloadavg(),
                )
                results.append(result)
                peak_anon = max(g[2] for g in result["peaks"]) / 2**20
                peak_rss = max(g[1] for g in result["peaks"]) / 2**20
                print(
                    f"{mode:9} rows={rows:>9} k={args.features} raw/worker="
                    f"{raw / args.workers / 2**20:7.1f} MiB ({result['raw_per_worker_over_budget']:.1f}"
                    f"x budget {budget / 2**20:.0f} MiB) external={result['external']} "
                    f"{result['seconds']:6.1f} s {result['seconds_per_million_rows']:6.1f} s/M rows "
                    f"rmse={result['rmse']:.4f} peak growth/worker: anon {peak_anon:6.1f} MiB, "
                    f"rss {peak_rss:6.1f} MiB  load={os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            if args.predict:
                results.extend(predict_memory(fit_once.estimator, path, rows, args.workers, tmp))
            path.unlink()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
