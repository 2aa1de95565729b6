"""The ``shardtrain`` console script: the machine's long-lived local Ray head, and stage upkeep.

    shardtrain cluster start [--num-cpus N]   start it (or report the one running)
    shardtrain cluster stop                   stop it and remove its record
    shardtrain cluster status [--json]        address, dashboard, resources, jobs, idle timer,
                                              the warm worker groups (idle/busy, shapes, pids)
    shardtrain stage gc [STAGE] --older-than 7d [--dry-run]
                                              remove what failed runs left (runtime.retention)

Exit codes: 0 done (``status``: a head is running), 1 an error (the message says what to do),
2 bad usage, 3 ``status`` found no head running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from shardtrain.errors import ConfigError, ShardtrainError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardtrain", description=__doc__.split("\n")[0])
    topics = parser.add_subparsers(dest="topic", required=True)
    cluster = topics.add_parser("cluster", help="the local Ray head under $SHARDTRAIN_HOME")
    actions = cluster.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start the local head unless one runs")
    start.add_argument("--num-cpus", type=int, help="CPUs for a head started now")
    actions.add_parser("stop", help="stop the local head (only that one) and forget it")
    status = actions.add_parser("status", help="show the local head; exit 3 when none runs")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    stage = topics.add_parser("stage", help="a model stage (local folder or fsspec URL)")
    stage_actions = stage.add_subparsers(dest="action", required=True)
    gc = stage_actions.add_parser(
        "gc", help="remove checkpoints and unpublished attempts older than an age"
    )
    gc.add_argument("stage", nargs="?", help="stage location (default: $SHARDTRAIN_HOME/stage)")
    gc.add_argument("--older-than", default="7d", help="age like 7d, 12h, 30m (default 7d)")
    gc.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    return parser


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def _print_status(info: dict) -> None:
    print(f"address:    {info['gcs_address']}")
    print(f"dashboard:  {info['dashboard_url']}   (job server at the same address)")
    print(f"started:    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started_at']))}")
    print(f"logs:       {info['logs']}")
    if "error" in info:
        print(f"state:      {info['error']}")
        return
    res = info["resources"]
    print(
        f"resources:  {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU, "
        f"memory {_gib(res.get('memory', 0))}, object store {_gib(res.get('object_store_memory', 0))}"
    )
    jobs = ", ".join(info["jobs"]) or "none"
    print(f"activity:   {info['drivers']} connected driver(s); running jobs: {jobs}")
    if info["stops_in_s"] is None:
        print(f"idle timer: busy (stops after {_seconds(info['idle_s'])} idle)")
    else:
        print(
            f"idle timer: idle for {_seconds(info['idle_for_s'])}; stops in "
            f"{_seconds(info['stops_in_s'])} (SHARDTRAIN_CLUSTER_IDLE_S={info['idle_s']:g})"
        )
    if "worker_pools" in info:
        _print_pools(info["worker_pools"])
    if not info.get("monitor_alive"):
        print(
            "warning:    the idle monitor is not running; stop the head with `shardtrain cluster stop`"
        )


def _pools(record) -> dict:
    """The worker pools on the head (``runtime.worker_pool``): joins it briefly as a driver,
    which the idle monitor does not count as activity unless it looks at that moment."""
    import ray

    from shardtrain.runtime import local_cluster, worker_pool

    try:
        local_cluster.join(record, logging_level="ERROR", log_to_driver=False)
        return worker_pool.describe_all()
    except Exception as exc:  # the status still shows everything else
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        ray.shutdown()


def _print_pools(pools: dict) -> None:
    if "error" in pools:
        print(f"workers:    could not read the worker pool ({pools['error']})")
        return
    groups = [(name, g) for name, gs in pools.items() for g in gs if g.get("id")]
    print(f"workers:    {len(groups)} worker group(s) in {len(pools)} pool(s)")
    for name, g in groups:
        if "error" in g:
            print(f"  {name}: {g['error']}")
            continue
        gpus = f" {g['gpus']:g} GPU" if g["gpus"] else ""
        pids = ", ".join(str(p) for p in g["pids"])
        if g["state"] == "idle":
            state = f"idle {_seconds(g['for_s'])}, stops in {_seconds(g['stops_in_s'])}"
        else:
            owner = g.get("owner") or {}
            state = f"busy {_seconds(g['for_s'])} (driver pid {owner.get('pid')} on {owner.get('host')})"
        print(
            f"  {g['id']}  {g['num_workers']} x {g['cpus']:g} CPU{gpus} {g['strategy']}: {state}; "
            f"pids {pids}; {g['fits']} fit(s)"
        )


def cluster_command(args: argparse.Namespace) -> int:
    from shardtrain.runtime import cluster_monitor, local_cluster

    if args.action == "start":
        running = local_cluster.current()
        record = running or local_cluster.ensure(num_cpus=args.num_cpus)
        verb = "already running" if running else "started"
        print(f"local Ray head {verb}: {record.gcs_address}, dashboard {record.dashboard_url}")
        return EXIT_OK
    if args.action == "stop":
        stopped = local_cluster.stop()
        if stopped is None:
            print("no local Ray head was recorded; nothing to stop")
        else:
            print(f"stopped the local Ray head at {stopped.gcs_address}")
        return EXIT_OK
    current = local_cluster.current()
    if current is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("no local Ray head is running (`shardtrain cluster start` starts one)")
        return EXIT_NOT_RUNNING
    info = cluster_monitor.describe(current)
    if "error" not in info:
        info["worker_pools"] = _pools(current)
    if args.json:
        print(json.dumps({"running": True, **info}))
    else:
        _print_status(info)
    return EXIT_OK


def stage_command(args: argparse.Namespace) -> int:
    """``stage gc``: apply the retention rule of ``shardtrain.runtime.retention``. Snowflake
    stages need a session: call ``runtime.retention.collect_garbage`` from Python for them."""
    from shardtrain.runtime import retention
    from shardtrain.stage import open_stage

    older_than_s = retention.parse_age(args.older_than)
    stage = open_stage(args.stage)
    leftovers = retention.collect_garbage(stage, older_than_s, dry_run=args.dry_run)
    for leftover in leftovers:
        days = leftover.age_s / 86400
        print(
            f"{'would remove' if args.dry_run else 'removed'} {leftover.kind:10s} "
            f"{leftover.path}  ({days:.1f} days old)"
        )
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(leftovers)} leftover(s) older than {args.older_than} from {stage.uri}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.topic == "stage":
            try:
                return stage_command(args)
            except ConfigError as exc:
                parser.error(str(exc))  # bad usage: exit 2 with the message
        return cluster_command(args)
    except ShardtrainError as exc:
        print(f"shardtrain: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
