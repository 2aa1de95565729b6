"""Training across hosts on the network-namespace rig (``tests.rig``): a Ray head with no
training CPUs, two worker hosts with one CPU each, moto's S3 as data store and stage, and an
orchestrator host that holds only the job server URL, the token and the stage credentials.

Each test submits a Ray Job from the orchestrator host and loads the model there (see
``tests/system/rig/orchestrator.py``). One rig start serves the module.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.rig import PYTHON, WORKERS, RigError

pytestmark = [pytest.mark.rig, pytest.mark.jobs, pytest.mark.s3, pytest.mark.subprocess]

ROWS = 200_000
KILL_ROUNDS = 200
CHECKPOINT_EVERY = 10


def orchestrate(rig, command: str, args: dict, timeout: float = 240) -> tuple[dict, str]:
    """Run an orchestrator command on the ``orch`` host; (its RESULT, its whole output)."""
    out = rig.python(
        "orch",
        "-m",
        "tests.system.rig.orchestrator",
        command,
        json.dumps(args),
        timeout=timeout,
    )
    return _result(out), out


def _result(out: str) -> dict:
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise AssertionError(f"no RESULT line in the orchestrator's output:\n{out[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def train_args(rig, request_id: str, rounds: int, **extra) -> dict:
    return {
        "endpoint": rig.s3_endpoint,
        "token_path": str(rig.token_path),
        "job_server": rig.job_server,
        "python": PYTHON,
        "pythonpath": rig.pythonpath,
        "request_id": request_id,
        "stage": "s3://rig/stage",
        "data": "s3://rig/data/train",
        "rounds": rounds,
        # Room for a host to come back before a restarted fit gives up on placing its group.
        "env_vars": {"SHARDTRAIN_PLACEMENT_TIMEOUT_S": "90"},
        **extra,
    }


@pytest.fixture(scope="module")
def dataset(rig):
    result, _ = orchestrate(
        rig,
        "data",
        {"endpoint": rig.s3_endpoint, "url": "s3://rig/data/train", "rows": ROWS, "files": 4},
    )
    assert result == {"rows": ROWS, "files": 4}
    return "s3://rig/data/train"


def test_a_job_from_the_orchestrator_host_trains_one_rank_per_worker_host(rig, dataset):
    result, out = orchestrate(rig, "train", train_args(rig, "rig-xgb", rounds=60))
    # The model, published to the S3 stage by the job, loads on the orchestrator host.
    assert result["status"] == "SUCCEEDED"
    assert result["uri"] == "s3://rig/stage/model/rig-xgb"
    assert result["rounds"] == 60
    # Each rank read its own half of the data from S3 on its own host.
    assert re.search(r"rank 0: 100000 training \+ 0 eval rows.*rank 1: 100000 training", out)
    placed, _ = orchestrate(
        rig, "actors", {"token_path": str(rig.token_path), "job_server": rig.job_server}
    )
    ranks = [
        a["ip"] for a in placed["actors"] if a["class"] == "TrainWorker" and a["state"] == "ALIVE"
    ]
    assert sorted(ranks) == sorted(rig.hosts[h].ip for h in WORKERS)
    # No training CPU on the head: no rank there.
    assert rig.hosts["head"].ip not in ranks


def _wait_for(rig, log: str, pattern: str, proc, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, rig.log(log))
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {log} within {timeout} s:\n{rig.log(log)[-4000:]}")


def kill_mid_fit(rig, request_id: str, host: str = "w1", at_round: int = 20) -> dict:
    """Submit a fit from the orchestrator host, kill every process of ``host`` once the job
    logs round ``at_round`` (its supervisor brings it back 1 s later), and wait for the job.
    Returns what happened; raises AssertionError with the log when the fit did not resume
    inside the same job with exactly its rounds."""
    rig.supervise(host, restart_after_s=1.0)
    log = f"{request_id}.log"
    try:
        args = train_args(
            rig,
            request_id,
            rounds=KILL_ROUNDS,
            max_depth=5,
            failure_config={"max_failures": 2, "checkpoint_frequency": CHECKPOINT_EVERY},
        )
        began = time.monotonic()
        proc = rig.spawn(
            "orch",
            [PYTHON, "-m", "tests.system.rig.orchestrator", "train", json.dumps(args)],
            log,
        )
        try:
            _wait_for(rig, log, rf"JOB \[{at_round}\]\t", proc, timeout=120)
            killed_at = time.monotonic()
            assert rig.kill(host)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        done = time.monotonic()
        out = rig.log(log)
        result = _result(out)
        assert result["status"] == "SUCCEEDED", out[-4000:]
        assert result["rounds"] == KILL_ROUNDS, out[-4000:]  # exact: none lost or repeated
        assert f"submitted shardtrain-{request_id}-1" in out  # one job: resumed inside it
        restart = re.search(r"Restarting the worker group \(1/2\) from round (\d+)\.", out)
        assert restart, out[-4000:]
        resumed_from = int(restart.group(1))
        assert resumed_from >= at_round and resumed_from % CHECKPOINT_EVERY == 0
        assert rig.raylet_alive(host)  # the supervisor brought the host back
        died = re.search(r"worker rank \d died on node ([\d.]+) \((\w+)", out)
        assert died is None or died.group(1) == rig.hosts[host].ip  # the error names the host
        return {
            "resumed_from": resumed_from,
            "after_kill_s": round(done - killed_at, 1),
            "total_s": round(done - began, 1),
            "error": died.group(2) if died else None,
            "log": out,
        }
    finally:
        rig.unsupervise(host)


def test_a_worker_host_killed_mid_fit_resumes_from_its_checkpoint_in_the_same_job(rig, dataset):
    """Every process of worker host w1 is killed at round ~20 (a rank runs there, and
    perhaps the worker pool); its supervisor brings the host back 1 s later, as KubeRay or
    systemd would. The fit resumes inside the same job from its last checkpoint and ends with
    exactly the rounds asked for; the orchestrator loads the model."""
    outcome = kill_mid_fit(rig, "rig-kill")
    print(
        f"resumed from round {outcome['resumed_from']}; job done {outcome['after_kill_s']} s "
        f"after the kill ({outcome['error']})"
    )


def test_the_rig_leaves_nothing_behind():
    """A rig closed (here: one that only built its network) leaves no namespace, link or
    file, and a new rig removes what a dead owner left."""
    from tests.rig import STATE_ROOT, Rig, _ip, _links, clean_leftovers, why_not

    reason = why_not()
    if reason:
        pytest.skip(f"no multi-host rig here: {reason}")
    rig = Rig()
    try:
        rig.build_network()
        names = _ip("netns", "list").stdout
        assert all(h.ns in names for h in rig.hosts.values())
        # As if its owner died: the state names a pid that is gone.
        state = STATE_ROOT / f"{rig.run_id}.json"
        record = json.loads(state.read_text())
        record["owner"] = 2**22 + 1
        state.write_text(json.dumps(record))
        assert rig.run_id in clean_leftovers()
    finally:
        rig.close()
    names = _ip("netns", "list").stdout
    assert not any(h.ns in names for h in rig.hosts.values())
    assert not [x for x in _links() if x.startswith(f"strig{rig.run_id}")]
    assert not (STATE_ROOT / rig.run_id).exists()
    with pytest.raises(RigError):
        _ip("link", "show", rig.bridge)


_BUILD_AND_WAIT = """
import sys, time
from tests.rig import Rig
with Rig() as rig:
    rig.build_network()
    print(rig.run_id, flush=True)
    time.sleep(60)
"""


def test_a_sigterm_still_removes_the_rig():
    """A process holding a rig that is stopped with SIGTERM (a CI runner cancelling the job)
    removes its namespaces and links before it exits."""
    import signal
    import subprocess
    import sys

    from tests.rig import REPO, _ip, _links, why_not

    reason = why_not()
    if reason:
        pytest.skip(f"no multi-host rig here: {reason}")
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUILD_AND_WAIT],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # its KeyboardInterrupt traceback: the expected way out
        text=True,
    )
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id and f"strig-{run_id}-head" in _ip("netns", "list").stdout
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert "SIGTERM: the rig is being removed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"strig-{run_id}-" not in _ip("netns", "list").stdout
    assert not [x for x in _links() if x.startswith(f"strig{run_id}")]
