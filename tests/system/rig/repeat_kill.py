"""Run the worker-host-death scenario of test_rig.py many times on one rig (by hand, never
in the suite), as root: ``.venv/bin/python -m tests.system.rig.repeat_kill 10``
(``--ray-defaults``: Ray's own node health checks; ``--code DIR``: another ``core/src``, e.g.
``git archive <commit> core/src | tar -x -C /tmp/old`` then ``--code /tmp/old/core/src``).

Prints one line per run (resumed from which round, seconds from the kill to the model, the
error the dead rank raised) and the count of successes; the logs of failed runs are kept
under ``/tmp/shardtrain-rig-kill-logs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.rig import Rig, why_not
from tests.system.rig.test_rig import ROWS, kill_mid_fit, orchestrate

KEEP = Path("/tmp/shardtrain-rig-kill-logs")


def main(runs: int, fast: bool, code: str | None) -> int:
    reason = why_not()
    if reason:
        print(f"no rig here: {reason}")
        return 2
    KEEP.mkdir(exist_ok=True)
    ok = 0
    with Rig(fast_failure_detection=fast, code=code) as rig:
        began = time.monotonic()
        rig.start()
        print(f"rig up in {time.monotonic() - began:.1f} s", flush=True)
        orchestrate(
            rig,
            "data",
            {"endpoint": rig.s3_endpoint, "url": "s3://rig/data/train", "rows": ROWS, "files": 4},
        )
        for i in range(runs):
            request_id = f"rig-kill-{i}"
            try:
                outcome = kill_mid_fit(rig, request_id)
            except Exception as exc:  # AssertionError with the log, RigError, timeouts
                (KEEP / f"{request_id}.log").write_text(rig.log(f"{request_id}.log"))
                print(f"run {i}: FAILED {type(exc).__name__}: {str(exc)[-1500:]}", flush=True)
                rig.wait_for_nodes(3, timeout=120)
                continue
            ok += 1
            (KEEP / f"{request_id}.log").write_text(outcome.pop("log"))
            print(f"run {i}: ok {json.dumps(outcome)}", flush=True)
    print(f"{ok}/{runs} runs resumed inside the job with exact rounds")
    return 0 if ok == runs else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.system.rig.repeat_kill")
    parser.add_argument("runs", type=int, nargs="?", default=5)
    parser.add_argument(
        "--ray-defaults", action="store_true", help="Ray's own node health checks (slower)"
    )
    parser.add_argument(
        "--code", help="a core/src folder to run instead (e.g. an older one from git archive)"
    )
    args = parser.parse_args()
    sys.exit(main(args.runs, not args.ray_defaults, args.code))
