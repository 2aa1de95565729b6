"""The benchmark harness: shardtrain vs the plain libraries vs Ray Train, in one run.

    python -m bench --quick      # 250k rows, no Ray Train, no scaling sweep: < 5 min here
    python -m bench              # 1M rows, Ray Train side by side, scaling 250k/1M/4M

Generates the data as Parquet, runs every job in its own process (see bench.cases), repeats
each case (3 times by default), then writes a Markdown report and the raw figures as JSON:
docs/benchmarks.md and docs/benchmarks.json for a full run, .bench/ for a quick one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import psutil

from bench import report
from bench.cases import plan
from bench.data import make_parquet

ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 3600


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dists = ("shardtrain", "ray", "xgboost-cpu", "lightgbm", "torch", "pyarrow")
    versions = {}
    for dist in dists:
        try:
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution is reported, not fatal
            versions[dist] = "absent"
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "commit": commit or "unknown",
        "versions": versions,
    }


def run_jobs(jobs, data: Path, repeats: int, log) -> list[dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("SHARDTRAIN_WORKER_IDLE_S", "600")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    cases = []
    for job in jobs:
        with tempfile.TemporaryDirectory(dir=data) as work:
            spec, out = Path(work) / "job.json", Path(work) / "result.json"
            spec.write_text(
                json.dumps(
                    {"job": job.to_json(), "data": str(data), "work": work, "repeats": repeats}
                )
            )
            log(f"{job.name} ({job.rows:,} rows): {', '.join(c.name for c in job.cases)}")
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.run_case", str(spec), str(out)],
                    cwd=work,
                    env=env,
                    timeout=JOB_TIMEOUT_S,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                error = None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]
                if proc.returncode == 0:
                    progress = [
                        line for line in proc.stderr.splitlines() if line.startswith("  [bench]")
                    ]
                    sys.stderr.write("".join(line + "\n" for line in progress))
            except subprocess.TimeoutExpired:
                error = [f"timed out after {JOB_TIMEOUT_S} s"]
            if error is None and out.exists():
                cases += json.loads(out.read_text())
            else:
                log(f"  FAILED: {error}")
                cases += [
                    {
                        **c.__dict__,
                        "job": job.name,
                        "rows": job.rows,
                        "runs": [],
                        "error": " ".join(error or ["no result"]),
                    }
                    for c in job.cases
                ]
            log(f"  {time.perf_counter() - start:.0f} s")
    return cases


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="250k rows, no Ray Train, no scaling")
    parser.add_argument("--rows", type=int, help="training rows (default 1M, quick 250k)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="run only jobs whose name contains this")
    parser.add_argument(
        "--ray-train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the Ray Train cases (default: full runs only)",
    )
    parser.add_argument("--out-dir", type=Path, help="default docs/ (full) or .bench/ (quick)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    jobs = plan(args.quick, args.rows, args.ray_train)
    if args.only:
        jobs = [job for job in jobs if args.only in job.name]
    out_dir = args.out_dir or (ROOT / (".bench" if args.quick else "docs"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = args.rows or (jobs[0].rows if jobs else 0)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="shardtrain-bench-") as tmp:
        data = Path(tmp)
        for size in sorted({job.rows for job in jobs}):
            make_parquet(data / f"train-{size}.parquet", size, seed=0)
        make_parquet(data / "holdout.parquet", 100_000, seed=1)
        make_parquet(data / "small.parquet", 10_000, columns=10, seed=2)
        cases = run_jobs(jobs, data, args.repeats, log)
    name = "benchmarks" if not args.quick else "quick"
    raw = {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": (datetime.datetime.now(datetime.UTC) - started).total_seconds(),
        "machine": machine(),
        "rows": rows,
        "repeats": args.repeats,
        "json_name": f"{name}.json",
        "cases": cases,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(raw, indent=1))
    markdown = out_dir / f"{name}.md"
    findings = report.extract_findings(markdown.read_text()) if markdown.exists() else None
    markdown.write_text(report.render(raw, findings))
    log(f"wrote {markdown} and {out_dir / (name + '.json')} in {raw['duration_s'] / 60:.1f} min")
    return raw


if __name__ == "__main__":
    main()
