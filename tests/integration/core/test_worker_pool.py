"""The cluster's warm pool (``runtime.worker_pool``): worker groups that outlive the driver.

Real Ray: the session's local head (2 CPUs). Drivers run as separate Python processes that
join the head as an orchestrator task would, so the pool is shared the way it is in
production; the test process reads the pools through the same public calls.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import warnings

import psutil
import pytest

from shardtrain.runtime import worker_group, worker_pool
from shardtrain.runtime.resources import WorkerShape

pytestmark = pytest.mark.ray  # real Ray workers and driver processes

TWO = WorkerShape(num_workers=2, cpus=1, gpus=0)

# A driver process: joins the session's head, fits a small XGBoost model (argv[1] rounds),
# and reports the pids of its warm group and how long the fit took.
DRIVER = """
import json, os, sys, time
from shardtrain.runtime.cluster import connect
connect()
import numpy as np, pandas as pd
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group
rng = np.random.default_rng(0)
frame = pd.DataFrame(rng.standard_normal((2000, 3)), columns=["A", "B", "C"])
frame["Y"] = frame.A * 2 - frame.B
print("JOINED", flush=True)
est = XGBEstimator(n_estimators=int(sys.argv[1]), scaling_config=XGBScalingConfig(
    num_workers=2, num_cpu_per_worker=1))
t0 = time.perf_counter()
est.fit(frame, ["A", "B", "C"], "Y", artifact_stage_location=sys.argv[2])
fit_s = time.perf_counter() - t0
pids = sorted(p for g in worker_group.idle_groups() for p in g["pids"])
print("RESULT", json.dumps({"pids": pids, "fit_s": fit_s, "pid": os.getpid(),
    "matplotlib": "matplotlib" in sys.modules}), flush=True)
"""


@pytest.fixture(autouse=True)
def _empty_pools(ray_cluster):
    """Every test starts and ends with no idle group anywhere (they hold the 2 CPUs)."""
    worker_group.shutdown_workers()
    yield
    worker_group.shutdown_workers()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("SHARDTRAIN_CLUSTER", None)  # join the session's local head
    return {**env, "SHARDTRAIN_WORKER_IDLE_S": "120", **extra}


def _driver(tmp_path, rounds: int = 10, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(rounds), str(tmp_path / "stage")],
        env=_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-6000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _groups_of(pid: int) -> list[dict]:
    """Groups leased by the driver process ``pid``, in any pool."""
    return [
        g
        for groups in worker_pool.describe_all().values()
        for g in groups
        if g.get("owner", {}).get("pid") == pid
    ]


def _cpus_free(ray) -> float:
    return ray.available_resources().get("CPU", 0.0)


def test_drivers_at_once_share_one_warm_group_that_gives_way_when_idle(ray_cluster, tmp_path):
    """Three behaviours on one warm group (each driver costs a process start and its imports):
    two drivers at once on a cluster that fits one run run one after the other, the second on
    the first one's warm workers; ``shardtrain cluster status`` shows the idle group; an idle
    group gives way to other Ray work before its idle time (120 s here)."""
    import ray

    drivers = [_driver(tmp_path / str(i), SHARDTRAIN_PLACEMENT_TIMEOUT_S="5") for i in range(2)]
    first, second = [_result(d) for d in drivers]
    # Each needs both CPUs: one queued behind the other (beyond the 5 s placement timeout),
    # then got the group the other gave back.
    assert len(first["pids"]) == 2 and first["pid"] != second["pid"]
    assert second["pids"] == first["pids"], "the second driver started new worker processes"
    # no per-round metrics, no training curves: the driver never imports matplotlib (its
    # import on a thread cost a small fit ~0.3 s of CPU beside its ranks)
    assert not first["matplotlib"] and not second["matplotlib"]
    status = subprocess.run(
        [sys.executable, "-m", "shardtrain", "cluster", "status", "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr[-3000:]
    pools = json.loads(status.stdout)["worker_pools"]
    [group] = [g for gs in pools.values() for g in gs if sorted(g["pids"]) == first["pids"]]
    assert group["state"] == "idle" and group["fits"] == 2 and group["num_workers"] == 2
    text = subprocess.run(
        [sys.executable, "-m", "shardtrain", "cluster", "status"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert f"{group['id']}  2 x 1 CPU SPREAD: idle" in text, text

    # The warm idle group holds both CPUs for 120 s; a plain Ray task that needs one CPU runs
    # within seconds (the pool sees the pending demand), not after the idle time.
    assert ray.available_resources().get("CPU", 0) < 1

    @ray.remote(num_cpus=1)
    def one_cpu() -> int:
        return os.getpid()

    started = time.monotonic()
    ray.get(one_cpu.remote(), timeout=60)
    assert time.monotonic() - started < 60
    alive = [pid for pid in first["pids"] if psutil.pid_exists(pid)]
    deadline = time.monotonic() + 30
    while alive and time.monotonic() < deadline:  # the group's processes were killed
        time.sleep(0.5)
        alive = [pid for pid in alive if psutil.pid_exists(pid)]
    assert not alive, f"the idle group's workers {alive} still run"


def _busy_group_of(driver: subprocess.Popen) -> dict:
    """The one group ``driver`` leases, once its fit has started (it must not exit first)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _groups_of(driver.pid):
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        time.sleep(0.2)
    [group] = _groups_of(driver.pid)
    return group


def test_another_drivers_group_is_spared_by_shutdown_and_freed_when_it_is_killed(
    ray_cluster, tmp_path
):
    """``shutdown_workers`` stops idle groups and this process's busy ones only; a driver
    killed mid-fit loses its group once its lease runs out (3 s here, 20 s by default)."""
    lease_timeout = 3.0
    driver = _driver(tmp_path, rounds=100_000, SHARDTRAIN_WORKER_LEASE_TIMEOUT_S=str(lease_timeout))
    try:
        group = _busy_group_of(driver)
        assert group["state"] == "busy" and _cpus_free(ray_cluster) == 0
        worker_group.shutdown_workers()  # idle groups and this process's busy ones only
        assert [g["id"] for g in _groups_of(driver.pid)] == [group["id"]]
        assert all(_alive(p) for p in group["pids"])
        time.sleep(1.5)  # mid-fit: the ranks are in xgboost's collective
        os.kill(driver.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    while time.monotonic() - killed_at < lease_timeout + 15 and _cpus_free(ray_cluster) < 2:
        time.sleep(0.2)
    freed_after = time.monotonic() - killed_at
    assert _cpus_free(ray_cluster) == 2, "the dead driver's workers still hold the CPUs"
    assert freed_after >= lease_timeout - 0.5, "killed before the lease ran out"
    assert not any(
        g.get("id") == group["id"] for gs in worker_pool.describe_all().values() for g in gs
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in group["pids"]):
        time.sleep(0.2)
    assert not any(_alive(p) for p in group["pids"]), "the dead driver's worker processes leaked"
    after = _result(_driver(tmp_path))  # the next fit works
    assert len(after["pids"]) == 2


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leave_state_behind(reporter, folder: str) -> int:
    os.environ["SHARDTRAIN_LEFT_BEHIND"] = "fit one"
    os.environ.pop("PATH", None)
    os.chdir(folder)
    return os.getpid()


def look_around(reporter) -> dict:
    from shardtrain.runtime.worker_context import current_worker

    return {
        "pid": os.getpid(),
        "left": os.environ.get("SHARDTRAIN_LEFT_BEHIND"),
        "has_path": "PATH" in os.environ,
        "cwd": os.getcwd(),
        "rank": current_worker().rank,
    }


def test_a_fit_never_sees_what_a_previous_fit_left_on_a_warm_worker(tmp_path):
    with worker_group.lease(TWO) as group:
        before = group.run(look_around, [{}, {}])
        pids = group.run(leave_state_behind, [{"folder": str(tmp_path)}] * 2)
    with worker_group.lease(TWO) as group:  # the next lease: the same warm processes
        after = group.run(look_around, [{}, {}])
    assert [a["pid"] for a in after] == pids == [b["pid"] for b in before]
    assert [a["rank"] for a in after] == [0, 1]
    for seen, was in zip(after, before, strict=True):
        assert seen["left"] is None and seen["has_path"]
        assert seen["cwd"] == was["cwd"] != str(tmp_path)


def fill_and_free_the_heap(reporter, mib: int) -> dict:
    """Allocate ``mib`` MiB in small blocks on glibc's heap, pin the heap's top with one more
    block (so glibc cannot give the space back by itself), free the blocks, and report RSS."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = []
    for _ in range(mib * 256):  # 4 KiB each: below glibc's mmap threshold
        block = libc.malloc(4096)
        libc.memset(block, 1, 4096)
        blocks.append(block)
    libc.malloc(64)  # the pin, left allocated
    full = psutil.Process().memory_info().rss
    for block in blocks:
        libc.free(block)
    return {"pid": os.getpid(), "full": full, "freed": psutil.Process().memory_info().rss}


def resident(reporter) -> dict:
    return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="fills glibc's heap")
def test_a_warm_worker_gives_back_what_a_fit_freed_before_it_waits_for_the_next():
    """A warm worker otherwise sits on its last fit's peak between fits (a LightGBM rank of
    1M x 32 stayed at ~600 MiB): freed heap pages go back to the OS when a run ends."""
    mib = 150
    with worker_group.lease(TWO) as group:
        filled = group.run(fill_and_free_the_heap, [{"mib": mib}] * 2)
    with worker_group.lease(TWO) as group:
        after = group.run(resident, [{}, {}])
    assert [a["pid"] for a in after] == [f["pid"] for f in filled]
    for was, now in zip(filled, after, strict=True):
        # glibc kept the freed blocks (the test's premise), the end of the run returned them
        assert was["freed"] > was["full"] - (mib << 20) // 4, was
        assert now["rss"] < was["freed"] - (mib << 20) // 2, (was, now)


def warn_and_log(reporter, note: str) -> None:
    from shardtrain.runtime.worker_context import current_worker

    rank = current_worker().rank
    warnings.warn(f"{note} from a warning on rank {rank}", UserWarning, stacklevel=1)
    logging.getLogger("someone.elses.lib").warning("%s from a log record on rank %d", note, rank)
    logging.getLogger("someone.elses.lib").info("below WARNING: stays on the worker")


def test_worker_warnings_and_log_records_reach_the_driver_log(caplog):
    caplog.set_level(logging.INFO, logger="shardtrain.worker")
    with worker_group.lease(TWO) as group:
        group.run(warn_and_log, [{"note": "first"}] * 2)
        group.run(warn_and_log, [{"note": "again"}] * 2)  # same place, same warm process
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    for note in ("first", "again"):
        for rank in (0, 1):
            assert any(
                name == "shardtrain.worker"
                and level == logging.WARNING
                and msg.startswith(f"[rank {rank}] py.warnings:")
                and f"UserWarning: {note} from a warning on rank {rank}" in msg
                for name, level, msg in lines
            ), lines
            assert (
                "shardtrain.worker",
                logging.WARNING,
                f"[rank {rank}] someone.elses.lib: {note} from a log record on rank {rank}",
            ) in lines
    assert not any("below WARNING" in msg for _, _, msg in lines)


def report_then_fail(reporter, marker: str) -> None:
    """Rank 0 reports five rounds and a checkpoint and returns; rank 1 then fails."""
    from shardtrain.runtime.events import RoundMetrics
    from shardtrain.runtime.worker_context import current_worker

    if current_worker().rank == 0:
        for step in range(1, 6):
            reporter.report(RoundMetrics(step, {"train": {"rmse": 1.0 / step}}))
        reporter.checkpoint(5, b"model at round 5")
        open(marker, "w").close()
        return
    while not os.path.exists(marker):
        time.sleep(0.01)
    raise RuntimeError("rank 1 gives up")


def test_a_failed_run_still_hands_on_what_rank_0_reported_before_it(tmp_path, monkeypatch):
    """The error names the round a run got to: rounds (and a checkpoint) rank 0 reported after
    the driver's last poll are not lost when a rank fails before the next one. Polling is slowed
    here so the failure always comes first (in CI, load made the last poll lag: round 3 of 5)."""
    monkeypatch.setattr(worker_group, "POLL_INTERVAL_S", 60.0)
    seen: list = []
    with worker_group.lease(TWO) as group:
        with pytest.raises(worker_group.WorkerError, match="rank 1 gives up"):
            group.run(
                report_then_fail,
                [{"marker": str(tmp_path / "reported")}] * 2,
                on_progress=lambda events, snapshot: seen.append((events, snapshot)),
            )
    assert [e.round for events, _ in seen for e in events] == [1, 2, 3, 4, 5]
    assert [s.step for _, s in seen if s is not None] == [5]
