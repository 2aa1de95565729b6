"""Shared fixtures: real services started once per test session.

Ray, a Snowpark local_testing session and an S3-compatible server (moto, on loopback) are
started lazily: only the tests that ask for them pay for them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Keep every default location (stage, registry, the local Ray head) inside the test
    session's temp dir; a head that any test or subprocess started there is stopped at the end."""
    home = tmp_path_factory.mktemp("shardtrain_home")
    os.environ["SHARDTRAIN_HOME"] = str(home)
    yield home
    # Every head a test started in its own home under this session's temp dir, then this one.
    base = tmp_path_factory.getbasetemp()
    for depth in ("*", "*/*", "*/*/*"):
        for record in base.glob(f"{depth}/cluster/cluster.json"):
            _stop_local_head(record.parent.parent)
    _stop_local_head(home)


def _stop_local_head(home) -> None:
    import shutil

    from shardtrain.runtime import local_cluster

    os.environ["SHARDTRAIN_HOME"] = str(home)
    local_cluster.stop()
    link = home / "cluster" / "ray"  # Ray's temp dir is under /tmp when the home is long
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(_isolated_home):
    """The session's long-lived local Ray head (2 CPUs, dashboard and job server on), started
    through ``local_cluster`` in the session's $SHARDTRAIN_HOME and stopped at the end.

    Yields its ``LocalCluster`` record: ``job_client()`` reaches its job server, and every
    process the tests start with this home joins the same head.
    """
    from shardtrain.runtime import local_cluster

    saved = os.environ.get("SHARDTRAIN_CLUSTER_IDLE_S")
    os.environ["SHARDTRAIN_CLUSTER_IDLE_S"] = "3600"  # outlives a long session; stopped below
    try:
        head = local_cluster.ensure(num_cpus=2)
    finally:
        if saved is None:
            os.environ.pop("SHARDTRAIN_CLUSTER_IDLE_S")
        else:
            os.environ["SHARDTRAIN_CLUSTER_IDLE_S"] = saved
    yield head
    import ray

    ray.shutdown()
    _stop_local_head(_isolated_home)


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This test process joined to the session's local head (joining costs well under 1 s)."""
    import sys

    import ray

    from shardtrain.runtime import local_cluster

    if not ray.is_initialized():
        # Workers import test modules by name (functions and actors defined in tests).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        local_cluster.join(
            ray_head, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def snowpark_session():
    """A Snowpark session in local_testing mode (no live account is reachable here)."""
    from snowflake.snowpark import Session

    session = Session.builder.config("local_testing", True).create()
    yield session
    session.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto in server mode) on loopback.

    Yields the fsspec ``storage_options`` that reach it. The credentials are dummies that the
    tests also use to check nothing leaks them.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "AKIATESTKEY0000SECRET",
        "secret": "s3cr3t-test-value-never-logged",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
    ).create_bucket(Bucket="shardtrain-test")
    yield options
    server.stop()


_CREATE_MLFLOW_DB = """
import sys
from mlflow import MlflowClient

client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
client.search_experiments()
client.search_registered_models()
"""


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty sqlite MLflow registry, created once per session (in a subprocess: this
    process's logging stays as it was). MLflow creates and migrates a new database on first
    use, ~10 s here; tests whose subject is not that first use start from a copy of this one
    (``mlflow_registry``), which holds the same schema and nothing else."""
    folder = tmp_path_factory.mktemp("mlflow_template")
    path = folder / "mlflow.db"
    subprocess.run(
        [sys.executable, "-c", _CREATE_MLFLOW_DB, f"sqlite:///{path}"],
        cwd=folder,  # MLflow's Default experiment points at ./mlruns: keep it in here
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


@pytest.fixture
def mlflow_registry(mlflow_template, tmp_path) -> str:
    """The URI of an empty sqlite MLflow registry at ``tmp_path / "mlflow.db"``."""
    from tests.helpers import seed_mlflow_registry

    return seed_mlflow_registry(mlflow_template, tmp_path / "mlflow.db")
