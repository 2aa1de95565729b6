"""RayJobTrigger never stalls the triggerer's event loop (issue 27: 0.7-0.9 s at start, "likely
caused by a badly-written trigger").

In a fresh interpreter (cold imports, as a triggerer meets the trigger first), a watchdog
coroutine measures the loop's longest stall while the trigger's class is imported by its path
(the triggerer imports it in its loop) and ``run()`` waits for a real job on the session's
Ray head until its event, over the job server's REST API (the local cluster's record and token
file): shardtrain's package, Ray and pyarrow are never imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from shardtrain.integrations import TrainingSpec

#: The longest stall of the loop allowed (Airflow warns at 0.2 s).
MAX_STALL_S = 0.15

SCRIPT = r"""
import asyncio, json, logging, sys, time
logging.basicConfig(level=logging.INFO)
import airflow.triggers.base  # loaded in a triggerer before any trigger
from airflow._shared.module_loading import import_string


async def main():
    stalls, done = [], False

    async def watchdog():
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            stalls.append(now - last - 0.005)
            last = now

    dog = asyncio.create_task(watchdog())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    cls = import_string("shardtrain_airflow.triggers.ray_job.RayJobTrigger")
    trigger = cls(**json.loads(sys.argv[1]))
    async for event in trigger.run():
        break
    took = time.monotonic() - started
    done = True
    await dog
    heavy = sorted(m for m in ("shardtrain", "ray", "pyarrow") if m in sys.modules)
    print("RESULT " + json.dumps(
        {"stall": max(stalls), "took": took, "event": event.payload, "heavy": heavy}
    ))


asyncio.run(main())
"""


def test_the_trigger_never_stalls_the_event_loop(ray_head, tmp_path):
    request_id = f"trigger-loop-{uuid.uuid4().hex[:8]}"
    sid = f"shardtrain-{request_id}-1"
    ray_head.job_client().submit_job(
        entrypoint="echo one; echo two", submission_id=sid, entrypoint_num_cpus=0
    )
    spec = TrainingSpec(
        framework="xgboost",
        request_id=request_id,
        artifact_stage_location=str(tmp_path / "stage"),
        train_data={"path": str(tmp_path / "train.parquet")},
        input_cols=["A"],
        label_col="Y",
    )
    kwargs = {"submission_id": sid, "spec": spec.to_dict(), "poll_interval": 0.2}
    env = dict(os.environ, SHARDTRAIN_HOME=os.environ["SHARDTRAIN_HOME"])
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    print(
        f"trigger: {result['took']:.2f} s to its event, longest loop stall "
        f"{result['stall'] * 1000:.0f} ms (subprocess {time.monotonic() - started:.1f} s)"
    )
    event = result["event"]
    assert {k: event[k] for k in ("status", "submission_id", "request_id")} == {
        "status": "SUCCEEDED",
        "submission_id": sid,
        "request_id": request_id,
    }
    assert event["log_offset"] > len("one\ntwo\n") and "spec" not in event
    assert "[ray job] one" in output and "[ray job] two" in output, output[-3000:]
    assert result["stall"] < MAX_STALL_S, result
    assert result["heavy"] == [], result  # never imported, not even in a thread
