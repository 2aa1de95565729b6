"""The orchestrator host's side of the rig tests: run in the rig's ``orch`` namespace as
``python -m tests.system.rig.orchestrator <command> '<json args>'``.

It holds only what an orchestrator holds: the job server URL, the cluster's token (read from
its file, sent as a bearer header) and the stage's S3 credentials. It never joins Ray: the
driver runs on the cluster (a Ray Job). Each command prints one JSON line, last, prefixed
``RESULT ``; job log lines come before it as they arrive.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

FEATURES = [f"f{i}" for i in range(16)]
LABEL = "Y"


def _storage(endpoint: str) -> dict:
    from tests.rig import S3_KEY, S3_SECRET

    return {
        "key": S3_KEY,
        "secret": S3_SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def data(args: dict) -> dict:
    """A regression problem as ``files`` Parquet files under ``url`` (a folder on S3)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    fs = s3fs.S3FileSystem(**_storage(args["endpoint"]))
    rows, files = args["rows"], args["files"]
    rng = np.random.default_rng(29)
    written = 0
    for i in range(files):
        n = rows // files
        x = rng.standard_normal((n, len(FEATURES))).astype(np.float32)
        y = 2 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3] + rng.normal(0, 0.1, n)
        table = pa.table({**{f: x[:, j] for j, f in enumerate(FEATURES)}, LABEL: y})
        with fs.open(f"{args['url'].removeprefix('s3://')}/part-{i}.parquet", "wb") as out:
            pq.write_table(table, out)
        written += n
    return {"rows": written, "files": files}


def train(args: dict) -> dict:
    """Submit an XGBoost TrainingSpec as a Ray Job through the job server, wait for it,
    then load the published model here, on the orchestrator host."""
    from shardtrain import load_model
    from shardtrain.integrations import TrainingSpec
    from shardtrain.jobs import JobTarget, submit

    token = Path(args["token_path"]).read_text().strip()
    target = JobTarget(
        address=args["job_server"],
        python=args["python"],
        headers={"Authorization": f"Bearer {token}"},
        runtime_env={"env_vars": {"PYTHONPATH": args["pythonpath"], **args.get("env_vars", {})}},
    )
    spec = TrainingSpec.from_dict(
        dict(
            framework="xgboost",
            request_id=args["request_id"],
            artifact_stage_location=args["stage"],
            train_data={"path": args["data"]},
            input_cols=FEATURES,
            label_col=LABEL,
            n_estimators=args["rounds"],
            params={"max_depth": args.get("max_depth", 4), "eta": 0.1},
            scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
            failure_config=args.get("failure_config", {}),
            verbose_eval=args.get("verbose_eval", 10),
        )
    )
    began = time.monotonic()
    handle = submit(spec, target)
    print(f"submitted {handle.submission_id}", flush=True)
    handle.wait(poll_s=0.25, on_log=lambda line: print(f"JOB {line}", flush=True))
    job_s = time.monotonic() - began
    storage = _storage(args["endpoint"])
    artifact = handle.result(storage_options=storage)
    booster = load_model(artifact, storage_options=storage)
    return {
        "uri": artifact.uri,
        "rounds": booster.num_boosted_rounds(),
        "job_s": round(job_s, 1),
        "train_rows": artifact.to_dict().get("train_rows"),
        "status": handle.status(),
    }


def actors(args: dict) -> dict:
    """Where the rank actors live: the job server's state API (alive actors, by node)."""
    import urllib.request

    token = Path(args["token_path"]).read_text().strip()

    def get(path: str) -> list[dict]:
        request = urllib.request.Request(
            f"{args['job_server']}{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())["data"]["result"]["result"]

    nodes = {n["node_id"]: n["node_ip"] for n in get("/api/v0/nodes?limit=100")}
    found = get("/api/v0/actors?limit=1000&detail=true")
    return {
        "actors": [
            {"class": a.get("class_name"), "state": a.get("state"), "ip": nodes.get(a["node_id"])}
            for a in found
        ]
    }


if __name__ == "__main__":
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    result = {"data": data, "train": train, "actors": actors}[command](payload)
    print("RESULT " + json.dumps(result), flush=True)
