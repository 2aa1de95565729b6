"""The local head's idle monitor: a small detached process that stops the head once it has had
no running job and no connected driver for ``idle_s`` seconds.

It asks the head's own HTTP API (the state API lists drivers and submitted jobs), so it never
joins as a driver itself, and it stops only the head it was started with: the recorded process
group, under the cluster lock, after checking once more that nothing joined in the meantime.
Its last look is written to ``cluster/monitor.json`` for ``shardtrain cluster status``.

Run by ``local_cluster`` as ``python -m shardtrain.runtime.cluster_monitor <record JSON>``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Seconds one HTTP question to the head may take.
HTTP_TIMEOUT_S = 10.0
_LIVE_JOB_STATES = ("PENDING", "RUNNING")


@dataclass(frozen=True)
class Activity:
    """What keeps a head busy: connected drivers and submitted jobs not yet finished."""

    drivers: int
    jobs: tuple[str, ...]  # submission ids of pending or running jobs

    @property
    def busy(self) -> bool:
        return bool(self.drivers or self.jobs)


def get_json(record, path: str) -> Any:
    """GET a path of the head's dashboard with its token; the parsed JSON body."""
    request = urllib.request.Request(record.dashboard_url + path, headers=record.auth_headers())
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def activity(record) -> Activity:
    """Drivers connected to the head and jobs pending or running on it, from its state API."""
    body = get_json(record, "/api/v0/jobs?limit=10000&detail=false")
    entries = body["data"]["result"]["result"]
    drivers = 0
    jobs = []
    for entry in entries:
        if entry.get("status") not in _LIVE_JOB_STATES:
            continue
        if entry.get("type") == "SUBMISSION":
            jobs.append(entry.get("submission_id") or entry.get("job_id") or "?")
        else:
            drivers += 1
    return Activity(drivers=drivers, jobs=tuple(jobs))


def resources(record) -> dict[str, float]:
    """Total resources of the head's nodes (CPU, memory in bytes, ...)."""
    body = get_json(record, "/api/v0/nodes?limit=1000&detail=true")
    total: dict[str, float] = {}
    for node in body["data"]["result"]["result"]:
        if node.get("state") != "ALIVE":
            continue
        for name, value in (node.get("resources_total") or {}).items():
            if not name.startswith("node:"):
                total[name] = total.get(name, 0.0) + float(value)
    return total


def describe(record) -> dict[str, Any]:
    """What ``shardtrain cluster status`` shows: the record, resources, activity, idle timer."""
    from shardtrain.runtime import local_cluster, processes

    folder = Path(record.cluster_dir)
    info: dict[str, Any] = {
        "gcs_address": record.gcs_address,
        "dashboard_url": record.dashboard_url,
        "head_pgid": record.head_pgid,
        "monitor_pid": record.monitor_pid,
        "num_cpus": record.num_cpus,
        "logs": str(Path(record.temp_dir) / "session_latest" / "logs"),
        "started_at": record.started_at,
        "idle_s": record.idle_s,
    }
    try:
        seen = activity(record)
        info["resources"] = resources(record)
        info["drivers"], info["jobs"] = seen.drivers, list(seen.jobs)
    except (OSError, ValueError, KeyError) as exc:
        info["error"] = f"the head did not answer ({exc})"
        return info
    now = time.time()
    state = read_state(folder) or {}
    last_active = max(
        state.get("last_active") or record.started_at, local_cluster.last_used(folder)
    )
    if seen.busy:
        info["idle_for_s"], info["stops_in_s"] = 0.0, None
    else:
        info["idle_for_s"] = max(0.0, now - last_active)
        info["stops_in_s"] = max(0.0, record.idle_s - info["idle_for_s"])
    info["monitor_alive"] = processes.is_monitor(record.monitor_pid or -1)
    return info


def read_state(folder: Path) -> dict[str, Any] | None:
    """The monitor's last look (``monitor.json``), None before its first."""
    try:
        return json.loads((folder / "monitor.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    path = folder / "monitor.json"
    tmp = path.with_name(f".monitor.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def poll_interval(idle_s: float) -> float:
    """Look often enough to stop within ~20% of the idle period, at most every 10 s."""
    return max(0.5, min(10.0, idle_s / 5))


def watch(record) -> str:
    """Watch the head until it is stopped; returns why the watch ended."""
    from shardtrain.runtime import local_cluster

    folder = Path(record.cluster_dir)
    os.environ["SHARDTRAIN_HOME"] = str(folder.parent)  # the lock and record of this home
    gcs_pid = record.gcs_pid
    interval = poll_interval(record.idle_s)
    last_active = max(time.time(), local_cluster.last_used(folder))
    while True:
        time.sleep(interval)
        now = time.time()
        current = local_cluster._read_record()
        if current is None or current.gcs_pid != gcs_pid:
            if _orphaned(record):
                # Stopped, replaced, or its home was deleted: never leave this head running
                # without a record that could stop it.
                if record.is_alive():
                    local_cluster._kill(record)
                    return "the record went away: stopped the head"
                return "the head was stopped or replaced"
            continue
        if not current.is_alive():
            with local_cluster._locked():
                if (r := local_cluster._read_record()) is not None and r.gcs_pid == gcs_pid:
                    local_cluster._kill(r)
                    local_cluster._forget()
            return "the head died"
        try:
            seen = activity(current)
        except (OSError, ValueError, KeyError) as exc:  # dashboard busy or restarting
            print(f"{time.strftime('%X')} could not ask the head ({exc}); counted as busy")
            seen = None
        if seen is None or seen.busy:
            last_active = now
        last_active = max(last_active, local_cluster.last_used(folder))
        _write_state(
            folder,
            {
                "checked_at": now,
                "last_active": last_active,
                "idle_s": current.idle_s,
                "drivers": seen.drivers if seen else None,
                "jobs": list(seen.jobs) if seen else None,
            },
        )
        if now - last_active < current.idle_s:
            continue
        with local_cluster._locked():  # a process joining now waits, then starts a new head
            if local_cluster.last_used(folder) > last_active:
                continue  # someone joined since the last look
            try:
                if activity(current).busy:
                    continue
            except (OSError, ValueError, KeyError):
                continue
            print(f"{time.strftime('%X')} idle for {now - last_active:.0f} s: stopping the head")
            local_cluster._kill(current)
            local_cluster._forget()
        return "idle"


def _orphaned(record) -> bool:
    """True when no record names this head (checked under the lock: the process starting
    the head writes its record while holding it)."""
    from shardtrain.runtime import local_cluster

    if not Path(record.cluster_dir).is_dir():
        return True  # the home was deleted: nothing is left to lock
    with local_cluster._locked():
        current = local_cluster._read_record()
    return current is None or current.gcs_pid != record.gcs_pid


def main(argv: list[str]) -> int:
    from shardtrain.runtime.local_cluster import LocalCluster

    record = LocalCluster.from_dict({**json.loads(argv[0]), "monitor_pid": os.getpid()})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{time.strftime('%X')} watching head gcs pid {record.gcs_pid}", flush=True)
    reason = watch(record)
    print(f"{time.strftime('%X')} done: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
