"""Turns a run's raw figures into docs/benchmarks.md: tables of medians and min/max, and each
target with its measured ratio. Hand-written findings between the FINDINGS markers of an
existing file are carried over, so regenerating the tables never loses the analysis.
"""

from __future__ import annotations

import statistics

BEGIN_FINDINGS = "<!-- BEGIN FINDINGS (kept when the harness rewrites this file) -->"
END_FINDINGS = "<!-- END FINDINGS -->"
GIB = 2**30


def summarise(case: dict) -> dict:
    """Median, min and max of a case's repeats."""
    runs = case.get("runs") or []
    if not runs:
        return {**case, "ok": False}
    walls = [r["wall_s"] for r in runs]
    metrics = [r["metric"] for r in runs if r["metric"] is not None]
    return {
        **case,
        "ok": True,
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "peak_gib": statistics.median(r["peak_bytes"] for r in runs) / GIB,
        "peak_tree_gib": statistics.median(r["peak_tree_bytes"] for r in runs) / GIB,
        # absent from runs recorded before it was sampled
        "peak_anon_gib": (
            statistics.median(r["peak_anon_bytes"] for r in runs) / GIB
            if all("peak_anon_bytes" in r for r in runs)
            else None
        ),
        "idle_gib": statistics.median(r["idle_bytes"] for r in runs) / GIB,
        "metric": statistics.median(metrics) if metrics else None,
    }


def _find(summary: list[dict], name: str, rows: int) -> dict | None:
    for case in summary:
        if case["name"] == name and case["rows"] == rows and case["ok"]:
            return case
    return None


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def targets(summary: list[dict], rows: int) -> list[tuple[str, str, str, str]]:
    """(target, bound, measured, verdict) rows; a missing case reads 'not run'."""
    out = []

    def check(label, bound, value, ok, fmt=_fmt_ratio):
        if value is None:
            out.append((label, bound, "not run", "-"))
        else:
            out.append((label, bound, fmt(value), "met" if ok(value) else "MISSED"))

    def ratio(a, b, key="median_s"):
        a, b = _find(summary, a, rows), _find(summary, b, rows)
        # a value may be absent (None) from runs recorded before it was measured
        return a[key] / b[key] if a and b and a[key] is not None and b[key] else None

    for framework, tolerance in (("xgboost", 0.01), ("lightgbm", 0.02)):
        ours, plain, ray = f"{framework}/shardtrain", f"{framework}/plain", f"{framework}/Ray Train"
        check(
            f"{framework}: shardtrain time / plain",
            "<= 1.10x (aim 1.05x)",
            ratio(ours, plain),
            lambda v: v <= 1.10,
        )
        check(
            f"{framework}: shardtrain (warm workers) time / plain",
            "<= 1.10x",
            ratio(f"{ours} (warm workers)", plain),
            lambda v: v <= 1.10,
        )
        check(
            f"{framework}: shardtrain time / Ray Train",
            "<= 0.20x",
            ratio(ours, ray),
            lambda v: v <= 0.20,
        )
        check(
            f"{framework}: shardtrain peak memory / plain",
            "<= 1.30x",
            ratio(ours, plain, "peak_gib"),
            lambda v: v <= 1.30,
        )
        check(
            f"{framework}: shardtrain peak anonymous memory / plain (shared pages once)",
            "<= 1.30x",
            ratio(ours, plain, "peak_anon_gib"),
            lambda v: v <= 1.30,
        )
        a, b = _find(summary, ours, rows), _find(summary, plain, rows)
        gap = (a["metric"] - b["metric"]) / b["metric"] if a and b and a["metric"] else None
        check(
            f"{framework}: holdout RMSE vs plain",
            f"within {tolerance:.0%} (or better)",
            gap,
            lambda v, t=tolerance: v <= t,
            lambda v: f"{v:+.1%}",
        )
    check(
        "pytorch: shardtrain time / torch.multiprocessing DDP",
        "<= 1.10x",
        ratio("pytorch/shardtrain", "pytorch/torch.multiprocessing"),
        lambda v: v <= 1.10,
    )
    small = _find(summary, "small job/shardtrain", rows)
    warm = _find(summary, "small job/shardtrain (warm workers)", rows)
    check(
        "small job: shardtrain (cold workers)",
        "< 1.5 s",
        small and small["median_s"],
        lambda v: v < 1.5,
        lambda v: f"{v:.2f} s",
    )
    check(
        "small job: shardtrain (warm workers)",
        "< 1.5 s",
        warm and warm["median_s"],
        lambda v: v < 1.5,
        lambda v: f"{v:.2f} s",
    )
    speedup = ratio("small job/Ray Train", "small job/shardtrain")
    check("small job: Ray Train time / shardtrain", ">= 25x", speedup, lambda v: v >= 25)
    scan = "loading/pyarrow.dataset scan"
    for name in ("loading/DataConnector.iter_batches", "loading/DataConnector.to_torch_dataset"):
        check(
            f"{name.split('/')[1]} rows/s / pyarrow scan",
            ">= 0.90x",
            ratio(scan, name),
            lambda v: v >= 0.90,
        )
        check(
            f"{name.split('/')[1]} rows/s / Ray Data",
            "> 1.00x",
            ratio("loading/Ray Data iter_torch_batches", name),
            lambda v: v > 1.0,
        )
    return out


def _case_table(summary: list[dict], topic: str, rows: int, base: str | None) -> list[str]:
    lines = [
        "| case | median | min / max | vs " + (base or "-") + " | peak memory (driver + workers) "
        "| peak anonymous memory | idle before | whole process tree | holdout RMSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base_case = _find(summary, f"{topic}/{base}", rows) if base else None
    for case in summary:
        if not case["name"].startswith(f"{topic}/") or case["rows"] != rows:
            continue
        label = case["name"].split("/", 1)[1]
        if not case["ok"]:
            lines.append(f"| {label} | failed: {case.get('error', '?')} | | | | | | | |")
            continue
        vs = f"{case['median_s'] / base_case['median_s']:.2f}x" if base_case else "-"
        metric = f"{case['metric']:.4f}" if case["metric"] is not None else "-"
        anon = f"{case['peak_anon_gib']:.2f} GiB" if case["peak_anon_gib"] is not None else "-"
        lines.append(
            f"| {label} | {case['median_s']:.2f} s | {case['min_s']:.2f} / {case['max_s']:.2f} "
            f"| {vs} | {case['peak_gib']:.2f} GiB | {anon} | {case['idle_gib']:.2f} GiB "
            f"| {case['peak_tree_gib']:.2f} GiB | {metric} |"
        )
    return lines


def _loading_table(summary: list[dict], rows: int) -> list[str]:
    lines = [
        "| case | median | min / max | M rows/s | vs pyarrow scan |",
        "| --- | --- | --- | --- | --- |",
    ]
    base = _find(summary, "loading/pyarrow.dataset scan", rows)
    for case in summary:
        if not case["name"].startswith("loading/") or not case["ok"]:
            continue
        vs = f"{base['median_s'] / case['median_s']:.2f}x" if base else "-"
        lines.append(
            f"| {case['name'].split('/', 1)[1]} | {case['median_s']:.3f} s | {case['min_s']:.3f} / "
            f"{case['max_s']:.3f} | {rows / case['median_s'] / 1e6:.2f} | {vs} |"
        )
    return lines


def _scaling_table(summary: list[dict]) -> list[str]:
    lines = [
        "| implementation | rows | median | s per M rows | peak memory | GiB per M rows | holdout RMSE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cases = [
        c
        for c in summary
        if c["ok"] and c["name"] in ("xgboost/plain", "xgboost/shardtrain", "xgboost/Ray Train")
    ]
    for case in sorted(cases, key=lambda c: (c["name"], c["rows"])):
        millions = case["rows"] / 1e6
        lines.append(
            f"| {case['name'].split('/')[1]} | {case['rows']:,} | {case['median_s']:.2f} s "
            f"| {case['median_s'] / millions:.2f} | {case['peak_gib']:.2f} GiB "
            f"| {case['peak_gib'] / millions:.2f} | {case['metric']:.4f} |"
        )
    return lines


def render(raw: dict, findings: str | None) -> str:
    summary = [summarise(c) for c in raw["cases"]]
    rows, meta = raw["rows"], raw["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by the harness (`bench/`); every figure below comes from one run, all cases side",
        "by side on the same data. Raw figures (every repeat): "
        f"[{raw['json_name']}]({raw['json_name']}).",
        "",
        f"- Command: `{raw['command']}`",
        f"- When: {raw['started']} ({raw['duration_s'] / 60:.1f} min), shardtrain commit "
        f"`{meta['commit']}`",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']:.0f} GiB, "
        f"{meta['platform']}, Python {meta['python']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Repeats: {raw['repeats']} per case; medians with min / max. Data: {rows:,} rows x 32 "
        "float32 features + label in one Parquet file (row groups of 128k); holdout 100k rows",
        "  from the same generator; the small job is 10k rows x 10 features, 10 rounds.",
        "- Memory: peak resident memory summed over the driver and every Ray worker process,",
        "  sampled every 100 ms; 'idle before' is that sum just before the case started (Ray's",
        "  idle workers included); 'whole process tree' adds Ray's daemons (GCS, raylet, agents).",
        "  RSS counts shared pages once per process, so sums over many processes overstate.",
        "- Ray cases run on a local Ray of 2 CPUs started before timing; each job (implementation)",
        "  runs in its own process. shardtrain rows start new worker processes on every repeat,",
        "  as an Airflow or Prefect task does; 'warm workers' rows reuse them (a long-lived driver).",
        "",
        "## Targets",
        "",
        "| target | bound | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(summary, rows)]
    sections = [
        ("XGBoost, 100 rounds, depth 6, hist", "xgboost", "plain"),
        ("LightGBM, 100 rounds, 63 leaves", "lightgbm", "plain"),
        ("PyTorch DDP, MLP 32-64-1, 2 epochs, batch 1024", "pytorch", "torch.multiprocessing"),
        ("Small job, 10k rows x 10 features, 10 rounds, after Ray is up", "small job", None),
    ]
    for title, topic, base in sections:
        lines += ["", f"## {title} ({rows:,} rows)" if topic != "small job" else f"## {title}", ""]
        lines += _case_table(summary, topic, rows, base)
    lines += ["", f"## Data loading ({rows:,} rows, batch 8192, every column touched)", ""]
    lines += _loading_table(summary, rows)
    if any(c["rows"] != rows for c in summary):
        lines += ["", "## Scaling: XGBoost case at several sizes", ""]
        lines += _scaling_table(summary)
    lines += ["", BEGIN_FINDINGS, findings.strip() if findings else "", END_FINDINGS, ""]
    return "\n".join(lines)


def extract_findings(text: str) -> str | None:
    if BEGIN_FINDINGS in text and END_FINDINGS in text:
        return text.split(BEGIN_FINDINGS, 1)[1].split(END_FINDINGS, 1)[0]
    return None
