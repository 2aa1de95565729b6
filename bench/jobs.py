"""The same training run in process and as a Ray Job, each from a fresh Python process (as an
orchestrator task runs it), with the long-lived local head running.

    .venv/bin/python -m bench.jobs [--repeats 3] [--rows 1000000] [--json out.json]

Cases: the 10k-row job (10 columns, 10 rounds) and the XGBoost case (rows x 32, 100 rounds),
each as ``run_training`` in the process and as ``jobs.submit(...).wait()`` + ``result()``
(the model read back from the stage's manifest). Every figure is the whole process, spawn to
exit, timed by this script; the process reports its own submit/wait split. Cases interleave
within each repeat. 2 workers x 1 CPU, as the rest of bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.cluster_connect import REPO, run_script

RUN = """
import json, sys, time
t0 = time.perf_counter()
from shardtrain.integrations import TrainingSpec, run_training
from shardtrain.jobs import submit
from shardtrain.runtime.cluster import connect
spec = TrainingSpec.from_json(sys.argv[2])
if sys.argv[1] == "job":
    handle = submit(spec)
    t1 = time.perf_counter()
    handle.wait(poll_s=0.2)
    artifact = handle.result()
else:
    connect()
    t1 = time.perf_counter()
    artifact = run_training(spec)
assert artifact.request_id == spec.request_id
print("RESULT", json.dumps({"start_s": t1 - t0, "train_s": time.perf_counter() - t1}))
"""


def _spec(data: Path, stage: Path, request_id: str, rounds: int, columns: int) -> str:
    from bench.gbdt import XGB_PARAMS
    from shardtrain.integrations import TrainingSpec

    return TrainingSpec(
        framework="xgboost",
        request_id=request_id,
        artifact_stage_location=str(stage),
        train_data={"path": str(data)},
        input_cols=[f"f{i}" for i in range(columns)],
        label_col="y",
        n_estimators=rounds,
        params={k: v for k, v in XGB_PARAMS.items() if k != "tree_method"},
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        verbose_eval=None,
    ).to_json()


def measure(repeats: int, rows: int) -> dict:
    from bench.data import make_parquet
    from bench.gbdt import SMALL_COLUMNS, SMALL_ROUNDS

    with tempfile.TemporaryDirectory(prefix="st-bench-jobs-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(SHARDTRAIN_HOME=str(work / "home"), PYTHONPATH=str(REPO))
        small = make_parquet(work / "small.parquet", 10_000, columns=SMALL_COLUMNS, seed=2)
        large = make_parquet(work / "large.parquet", rows, seed=0)
        subprocess.run(
            [sys.executable, "-m", "shardtrain", "cluster", "start", "--num-cpus", "2"],
            env=env,
            check=True,
            capture_output=True,
        )
        cases = {
            "10k-row job, in process": ("inproc", small, SMALL_ROUNDS, SMALL_COLUMNS),
            "10k-row job, as a Ray Job": ("job", small, SMALL_ROUNDS, SMALL_COLUMNS),
            f"XGBoost {rows:,} rows, in process": ("inproc", large, 100, 32),
            f"XGBoost {rows:,} rows, as a Ray Job": ("job", large, 100, 32),
        }
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        try:
            for repeat in range(repeats):
                for index, (name, (mode, data, rounds, columns)) in enumerate(cases.items()):
                    spec = _spec(data, work / "stage", f"bench-{repeat}-{index}", rounds, columns)
                    run = run_script(RUN, [mode, spec], env)
                    runs[name].append(run)
                    print(f"{name:40s} repeat {repeat + 1}: {run}", flush=True)
        finally:
            subprocess.run(
                [sys.executable, "-m", "shardtrain", "cluster", "stop"],
                env=env,
                capture_output=True,
            )
    return {"repeats": repeats, "rows": rows, "runs": runs, "cpus": os.cpu_count()}


def summary(raw: dict) -> list[str]:
    """A markdown table of medians (min / max) and each job's ratio to its in-process twin."""
    lines = [
        "| case (fresh process, local head running) | whole process | min / max | "
        "connect or submit | train or wait | job / in process |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    medians = {n: statistics.median(r["process_s"] for r in rs) for n, rs in raw["runs"].items()}
    for name, runs in raw["runs"].items():
        walls = [r["process_s"] for r in runs]
        twin = name.replace("as a Ray Job", "in process")
        ratio = f"{medians[name] / medians[twin]:.2f}x" if twin != name else "-"
        start = statistics.median(r["start_s"] for r in runs)
        train = statistics.median(r["train_s"] for r in runs)
        lines.append(
            f"| {name} | {medians[name]:.2f} s | {min(walls):.2f} / {max(walls):.2f} | "
            f"{start:.2f} s | {train:.2f} s | {ratio} |"
        )
    lines.append(f"\n{raw['repeats']} repeats on {raw['cpus']} CPUs.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    raw = measure(args.repeats, args.rows)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    print("\n".join(summary(raw)))


if __name__ == "__main__":
    main()
