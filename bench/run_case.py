"""Runs one job (see bench.cases) in this process and writes its raw figures as JSON.

    python -m bench.run_case JOB.json RESULT.json

Started by ``python -m bench``, one process per job, with the data already written.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import read_xy
from bench.memory import PeakMemory


@dataclass
class CaseContext:
    """What a case function gets: its input files and a scratch folder."""

    train: Path
    small: Path
    holdout_path: Path
    work: Path
    _holdout: tuple | None = field(default=None, repr=False)

    def holdout(self):
        if self._holdout is None:
            self._holdout = read_xy(self.holdout_path)
        return self._holdout


def _resolve(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(f"bench.{module}"), name)


def _start_ray() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)


def _shutdown_workers() -> None:
    from shardtrain.runtime.worker_group import shutdown_workers

    shutdown_workers()


def run_job(job: dict, data: Path, work: Path, repeats: int) -> list[dict]:
    for case in job["cases"]:
        for module in case["preload"]:
            importlib.import_module(module)
    if job["ray"]:
        _start_ray()
    ctx = CaseContext(
        train=data / f"train-{job['rows']}.parquet",
        small=data / "small.parquet",
        holdout_path=data / "holdout.parquet",
        work=work,
    )
    results = []
    for case in job["cases"]:
        fn = _resolve(case["fn"])
        if case["workers"] == "warm" or case.get("warmup"):
            fn(ctx)
        runs = []
        for _ in range(repeats):
            gc.collect()
            with PeakMemory() as memory:
                start = time.perf_counter()
                evaluate = fn(ctx)
                wall = time.perf_counter() - start
            runs.append(
                {
                    "wall_s": wall,
                    "peak_bytes": memory.peak,
                    "peak_tree_bytes": memory.peak_tree,
                    "peak_anon_bytes": memory.peak_anon,
                    "idle_bytes": memory.idle,
                    "metric": evaluate() if evaluate else None,
                }
            )
            print(
                f"  [bench] {case['name']} ({job['rows']:,} rows): {wall:.2f} s, peak "
                f"{memory.peak / 2**30:.2f} GiB",
                file=sys.stderr,
                flush=True,
            )
            if case["workers"] == "cold":
                _shutdown_workers()
        results.append({**case, "job": job["name"], "rows": job["rows"], "runs": runs})
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    results = run_job(spec["job"], Path(spec["data"]), Path(spec["work"]), spec["repeats"])
    Path(argv[1]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
