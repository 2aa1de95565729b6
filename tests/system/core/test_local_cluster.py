"""The long-lived local Ray head: shared by every process, stopped when idle or asked.

Everything here is real: `ray start` heads, driver processes, the job server, the monitor.
Each test has its own $SHARDTRAIN_HOME (so its own head) and stops that head in teardown, but
the tests that only use a running head share one (``running_head``); drivers run in
subprocesses so this test process stays on the session's cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from shardtrain.cli import EXIT_NOT_RUNNING
from shardtrain.runtime import cluster_monitor, local_cluster, processes

pytestmark = pytest.mark.subprocess  # starts and stops real Ray heads

# A driver: joins through the public connect(), reports where it landed, then waits for a
# line on stdin before leaving (so a test decides how long it stays connected).
DRIVER = """
import json, os, sys, time
t0 = time.monotonic()
import ray
from shardtrain.runtime.cluster import connect
connect(runtime_env={"env_vars": {"SHARDTRAIN_PROBE": "from-runtime-env"}})
joined_s = time.monotonic() - t0
probe = ray.get(ray.remote(lambda: os.environ.get("SHARDTRAIN_PROBE")).remote())
print(json.dumps({
    "gcs_address": ray.get_runtime_context().gcs_address,
    "node_id": ray.get_runtime_context().get_node_id(),
    "joined_s": joined_s,
    "probe": probe,
}), flush=True)
if "--stay" in sys.argv:
    sys.stdin.readline()
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh $SHARDTRAIN_HOME for this test; its head (if any) is stopped afterwards."""
    path = tmp_path / "home"
    _use_home(monkeypatch, path)
    yield path
    _stop_and_check(path)


@pytest.fixture(scope="module")
def running_head(tmp_path_factory):
    """A head (1 CPU) in a fresh $SHARDTRAIN_HOME, started once for the tests that only use a
    running head (each test's own would cost a head start, ~8 s); stopped after the module.
    Yields the home and the head's record; the home is $SHARDTRAIN_HOME in those tests."""
    path = tmp_path_factory.mktemp("running_head") / "home"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _use_home(monkeypatch, path)
        record = local_cluster.ensure(num_cpus=1)
        yield path, record
        _stop_and_check(path)


def _use_home(monkeypatch, path) -> None:
    monkeypatch.setenv("SHARDTRAIN_HOME", str(path))
    for name in ("RAY_ADDRESS", "SHARDTRAIN_CLUSTER", "SHARDTRAIN_CLUSTER_IDLE_S"):
        monkeypatch.delenv(name, raising=False)


def _stop_and_check(path) -> None:
    """Stop the home's head; fail when any of its processes, or another head, is left."""
    record = local_cluster.stop()
    temp_dir = (path / "cluster" / "ray").resolve()  # under /tmp when the home is long
    # A head a failed test left without a record would have nothing to stop it: kill it here.
    leftovers = _gcs_servers(str(temp_dir))
    for gcs in leftovers:
        processes.kill_group(os.getpgid(gcs.pid), gcs.create_time())
    assert not leftovers, "a head outlived its record"
    if record is not None:
        assert not _head_processes(record)
    if (path / "cluster" / "ray").is_symlink():
        shutil.rmtree(temp_dir, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **extra}


def _driver(*args: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        env=_env(**extra_env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(process: subprocess.Popen, timeout: float = 180) -> dict:
    if "--stay" not in process.args:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])
    line = process.stdout.readline()
    assert line, process.stderr.read()[-3000:]
    return json.loads(line)


def _gcs_servers(temp_dir: str) -> list[psutil.Process]:
    """Every GCS server running from this home's Ray temp dir (one per head)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (
            proc.info["name"] == "gcs_server"
            and proc.info["status"] != psutil.STATUS_ZOMBIE
            and f"{temp_dir}/session_" in cmdline
        ):
            found.append(proc)
    return found


def _head_processes(record: local_cluster.LocalCluster) -> list[int]:
    """Live processes of the head's process group (and its monitor)."""
    pids = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) == record.head_pgid or proc.pid == record.monitor_pid:
                pids.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return pids


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shardtrain", "cluster", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_processes_starting_at_once_replace_a_stale_record_with_one_shared_head(home):
    """Three behaviours on one head (a head start costs ~8 s): a stale record (its head is
    gone) is replaced; processes starting at once share the one head they start; a head
    whose record is deleted (e.g. pytest removing an old session's home) stops itself, so no
    head is left that nothing could stop."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = local_cluster.LocalCluster(
        gcs_address="127.0.0.1:1",
        dashboard_url="http://127.0.0.1:1",
        head_pgid=dead_pid,
        gcs_pid=dead_pid,
        gcs_started=time.time() - 3600,
        monitor_pid=None,
        num_cpus=1,
        idle_s=1800.0,
        temp_dir=str(home / "gone"),
        cluster_dir=str(home / "cluster"),
        started_at=time.time() - 3600,
    )
    (home / "cluster").mkdir(parents=True)
    local_cluster._write_record(stale)
    assert local_cluster.current() is None

    # Idle long enough not to stop for that before the record goes (the log line below tells
    # why it stopped); the monitor looks every idle_s / 5 = 4 s.
    first, second = _driver(SHARDTRAIN_CLUSTER_IDLE_S="20"), _driver(SHARDTRAIN_CLUSTER_IDLE_S="20")
    a, b = _report(first), _report(second)
    record = local_cluster.current()
    assert record is not None and record.gcs_pid != dead_pid
    assert a["gcs_address"] == b["gcs_address"] == record.gcs_address != stale.gcs_address
    assert a["node_id"] == b["node_id"]
    assert len(_gcs_servers(record.temp_dir)) == 1
    # runtime_env given when joining reaches the workers
    assert a["probe"] == b["probe"] == "from-runtime-env"
    started = (home / "cluster" / "start.log").read_text().count("Ray runtime started")
    assert started == 1

    (home / "cluster" / "cluster.json").unlink()
    deadline = time.monotonic() + 60
    while _head_processes(record):
        assert time.monotonic() < deadline, "the head outlived its record"
        time.sleep(0.5)
    assert (
        "the record went away: stopped the head" in (home / "cluster" / "monitor.log").read_text()
    )


def test_a_later_process_joins_the_running_head(running_head):
    _, record = running_head
    assert local_cluster.ensure(num_cpus=1) == record  # running: not started again
    report = _report(_driver())
    assert report["gcs_address"] == record.gcs_address
    assert local_cluster.current() == record  # same head: same GCS pid, same start
    assert len(_gcs_servers(record.temp_dir)) == 1
    # Joining costs a fraction of a start (~8 s here); measured by bench/cluster_connect.py.
    print(f"joined the running head in {report['joined_s']:.2f} s")


def test_job_client_submits_to_the_head_with_its_token(running_head):
    home, record = running_head
    assert local_cluster.current() == record
    client = record.job_client()
    job = client.submit_job(
        entrypoint="python -c \"import ray; ray.init(); print('CPUs', ray.cluster_resources()['CPU'])\""
    )
    deadline = time.monotonic() + 120
    while str(client.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, client.get_job_logs(job)
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert str(client.get_job_status(job)) == "SUCCEEDED", logs
    assert "CPUs 1.0" in logs
    # Without the token the job server refuses.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(record.dashboard_url + "/api/jobs/", timeout=10)
    assert refused.value.code == 401
    # The token is in no record or log.
    token = record.token_path.read_text().strip()
    assert oct(record.token_path.stat().st_mode & 0o777) == "0o600"
    for name in ("cluster.json", "start.log", "monitor.log"):
        assert token not in (home / "cluster" / name).read_text()
    assert token not in json.dumps(record.driver_env())


def test_cli_start_status_stop(home):
    started = _cli("start", "--num-cpus", "1")
    assert started.returncode == 0, started.stderr
    record = local_cluster.current()
    assert record is not None and record.gcs_address in started.stdout
    status = _cli("status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["gcs_address"] == record.gcs_address
    assert info["dashboard_url"] == record.dashboard_url
    assert info["resources"]["CPU"] == 1.0 and info["resources"]["memory"] > 0
    assert info["drivers"] == 0 and info["jobs"] == []
    assert 0 <= info["stops_in_s"] <= info["idle_s"] == 1800.0
    text = _cli("status")
    assert "idle timer: idle for" in text.stdout and record.dashboard_url in text.stdout
    assert record.token_path.read_text().strip() not in status.stdout + text.stdout

    stopped = _cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the local Ray head" in stopped.stdout
    assert not (home / "cluster" / "cluster.json").exists()
    assert not _head_processes(record)
    assert not record.is_alive()
    gone = _cli("status")
    assert gone.returncode == EXIT_NOT_RUNNING and "no local Ray head is running" in gone.stdout
    assert _cli("stop").returncode == 0


def test_idle_head_stops_but_not_while_a_driver_is_connected(home, monkeypatch):
    monkeypatch.setenv("SHARDTRAIN_CLUSTER_IDLE_S", "5")
    record = local_cluster.ensure(num_cpus=1)
    driver = _driver("--stay")
    try:
        assert _report(driver)["gcs_address"] == record.gcs_address
        time.sleep(12)  # over twice the idle period, with the driver connected
        assert local_cluster.current() == record
        state = cluster_monitor.read_state(home / "cluster")
        assert state is not None and state["drivers"] == 1
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
    left = time.monotonic()
    while local_cluster.current() is not None:
        assert time.monotonic() - left < 60, "the idle head did not stop"
        time.sleep(0.5)
    stopped_after = time.monotonic() - left
    assert stopped_after >= 4  # waited out the idle period first
    deadline = time.monotonic() + 15
    while _head_processes(record) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _head_processes(record)
    assert not (home / "cluster" / "cluster.json").exists()
    assert "stopping the head" in (home / "cluster" / "monitor.log").read_text()


def test_private_mode_starts_its_own_ray(home):
    report = _report(_driver(SHARDTRAIN_CLUSTER="private"))
    assert report["probe"] == "from-runtime-env"
    assert not (home / "cluster" / "cluster.json").exists()
    assert local_cluster.current() is None


def test_bad_cluster_mode_is_refused_before_anything_starts(home):
    result = subprocess.run(
        [sys.executable, "-c", "from shardtrain.runtime.cluster import connect; connect()"],
        env=_env(SHARDTRAIN_CLUSTER="shared"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SHARDTRAIN_CLUSTER='shared' is not valid (expected one of local, private)" in (
        result.stderr
    )
    assert not (home / "cluster" / "cluster.json").exists()
