"""Shared fixtures: real services started once per test session.

Ray, a Snowpark local_testing session and an S3-compatible server (moto, on loopback) are
started lazily: only the tests that ask for them pay for them.
"""

from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Keep every default location (stage, registry) inside the test session's temp dir."""
    home = tmp_path_factory.mktemp("shardtrain_home")
    os.environ["SHARDTRAIN_HOME"] = str(home)
    yield home


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the whole session (ray.init costs ~8 s here)."""
    import sys

    import ray

    if not ray.is_initialized():
        # Workers import test modules by name (functions and actors defined in tests).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
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
