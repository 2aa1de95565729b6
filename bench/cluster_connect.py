"""What the long-lived local head saves a fresh process: connecting to it vs starting a private
Ray, and a 10k-row XGBoost job run as a whole fresh process (as an orchestrator task runs it)
with the head running (cold: no warm worker group on the cluster; warm pool: the cluster's
worker pool holds an idle group of the job's shape, as after an earlier task), with a private
Ray, and as plain xgboost.

    .venv/bin/python -m bench.cluster_connect [--repeats 5] [--json out.json]

Every case is a new Python process timed from spawn to exit by this script (``process``);
the process itself also reports the time of ``connect()`` and of the fit. Cases interleave
within each repeat so load on the machine spreads over all of them. The head runs in a
temporary $SHARDTRAIN_HOME with 2 CPUs and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONNECT = """
import json, time
t0 = time.perf_counter()
from shardtrain.runtime.cluster import connect
connect()
print("RESULT", json.dumps({"connect_s": time.perf_counter() - t0}))
"""

JOB = """
import json, sys, time
t0 = time.perf_counter()
from shardtrain.runtime.cluster import connect
connect()
if sys.argv[3:] == ["cold"]:  # no warm worker group on the cluster: the fit starts one
    from shardtrain.runtime.worker_group import shutdown_workers
    shutdown_workers()
t1 = time.perf_counter()
import xgboost  # the driver needs it (tracker, the returned Booster), as plain xgboost does
t2 = time.perf_counter()
from bench.gbdt import SMALL_COLUMNS, SMALL_ROUNDS, _shardtrain_fit
from pathlib import Path
_shardtrain_fit("xgboost", Path(sys.argv[1]), Path(sys.argv[2]), SMALL_ROUNDS, SMALL_COLUMNS)
print("RESULT", json.dumps(
    {"connect_s": t1 - t0, "import_s": t2 - t1, "fit_s": time.perf_counter() - t2}
))
"""

PLAIN = """
import json, sys, time
t0 = time.perf_counter()
import xgboost as xgb
t1 = time.perf_counter()
from bench.data import feature_names, read_xy
from bench.gbdt import SMALL_COLUMNS, SMALL_ROUNDS, XGB_PARAMS
x, y = read_xy(sys.argv[1], SMALL_COLUMNS)
dtrain = xgb.QuantileDMatrix(x, y, nthread=2, feature_names=feature_names(SMALL_COLUMNS))
xgb.train({**XGB_PARAMS, "nthread": 2}, dtrain, SMALL_ROUNDS).save_model(sys.argv[2] + ".ubj")
print("RESULT", json.dumps({"import_s": t1 - t0, "fit_s": time.perf_counter() - t1}))
"""

#: (case name, script, SHARDTRAIN_CLUSTER, extra argument). The cold case empties the cluster's
#: worker pool first and leaves its group warm; the warm case, right after it, gets that group
#: (new task process, cluster running, warm pool).
CASES = [
    ("connect: running local head", CONNECT, "local", None),
    ("connect: private Ray", CONNECT, "private", None),
    ("10k-row job: local head running, cold workers", JOB, "local", "cold"),
    ("10k-row job: local head running, warm pool", JOB, "local", None),
    ("10k-row job: private Ray", JOB, "private", None),
    ("10k-row job: plain xgboost", PLAIN, None, None),
]


def _env(home: Path, mode: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(SHARDTRAIN_HOME=str(home), PYTHONPATH=str(REPO))
    if mode:
        env["SHARDTRAIN_CLUSTER"] = mode
    return env


def run_script(script: str, args: list[str], env: dict[str, str]) -> dict:
    """Run ``script`` in a fresh interpreter; its last ``RESULT {json}`` line plus the
    whole process's wall time."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"case failed:\n{result.stderr[-3000:]}")
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return {"process_s": wall, **json.loads(line[len("RESULT ") :])}


def measure(repeats: int) -> dict:
    from bench.data import make_parquet

    with tempfile.TemporaryDirectory(prefix="st-bench-") as tmp:
        work = Path(tmp)
        home = work / "home"
        data = make_parquet(work / "small.parquet", 10_000, columns=10, seed=2)
        env = _env(home, "local")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "shardtrain", "cluster", "start", "--num-cpus", "2"],
            env=env,
            check=True,
            capture_output=True,
        )
        head_start_s = time.perf_counter() - start
        runs: dict[str, list[dict]] = {name: [] for name, _, _, _ in CASES}
        try:
            for repeat in range(repeats):
                for index, (name, script, mode, extra) in enumerate(CASES):
                    out = str(work / f"out-{repeat}-{index}")
                    args = [str(data), out] if script is not CONNECT else []
                    args += [extra] if extra else []
                    run = run_script(script, args, _env(home, mode))
                    runs[name].append(run)
                    print(f"{name:36s} repeat {repeat + 1}: {run}", flush=True)
        finally:
            subprocess.run(
                [sys.executable, "-m", "shardtrain", "cluster", "stop"],
                env=env,
                capture_output=True,
            )
    return {
        "head_start_s": head_start_s,
        "repeats": repeats,
        "runs": runs,
        "load_average_1m_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def summary(raw: dict) -> list[str]:
    """A markdown table: medians with min / max of every figure, and the ratio to plain."""
    plain = statistics.median(r["process_s"] for r in raw["runs"]["10k-row job: plain xgboost"])
    lines = [
        "| case (fresh process) | whole process | min / max | connect() | import xgboost | fit | "
        "vs plain xgboost |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in raw["runs"].items():
        walls = [r["process_s"] for r in runs]

        def med(key, runs=runs):
            values = [r[key] for r in runs if key in r]
            return f"{statistics.median(values):.2f} s" if values else "-"

        ratio = f"{statistics.median(walls) / plain:.2f}x" if name.startswith("10k") else "-"
        lines.append(
            f"| {name} | {statistics.median(walls):.2f} s | {min(walls):.2f} / {max(walls):.2f} "
            f"| {med('connect_s')} | {med('import_s')} | {med('fit_s')} | {ratio} |"
        )
    lines.append(
        f"\nStarting the local head (`shardtrain cluster start`): {raw['head_start_s']:.1f} s. "
        f"{raw['repeats']} repeats; load average at the end {raw['load_average_1m_at_end']:.1f} "
        f"on {raw['cpus']} CPUs."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    raw = measure(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    print("\n".join(summary(raw)))


if __name__ == "__main__":
    main()
