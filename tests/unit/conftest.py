"""The unit layer: logic only, in this process. No Ray, no subprocess, no network, no server.

Every test here runs with those refused: starting a process (``subprocess``, ``os.fork``,
``multiprocessing``), opening or binding an IP socket, or ``ray.init`` raises
``ResourceUsedError`` naming what was used. A test that needs one of them belongs in
tests/integration (the session's Ray head, Airflow's ``dag.test()``, the Prefect harness,
moto, Snowpark local_testing) or tests/system (real processes end to end). Where a worker
would be, a unit test uses an in-process fake (see test_worker_pool_states.py,
test_run_engine.py). Files are fine: a local stage is a folder.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import socket
import subprocess

import pytest

# The standard library answers this once by running `uname -p` (mlflow and Snowpark ask when
# first imported): asked here, before any test, the answer is cached and no test starts it.
platform.processor()

#: Fixtures of tests/conftest.py that start a service: never in a unit test.
SERVICE_FIXTURES = frozenset(
    {
        "ray_head",
        "ray_cluster",
        "s3_server",
        "snowpark_session",
        "mlflow_template",
        "mlflow_registry",
        "airflow_env",
        "prefect_harness",
    }
)


class ResourceUsedError(AssertionError):
    """A unit test used a process, a socket or Ray."""


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise ResourceUsedError(
            f"a unit test {what}; move the test to tests/integration or tests/system, or use "
            "an in-process fake"
        )

    return refuse


def pytest_collection_modifyitems(config, items):
    """A unit test that asks for a service fixture is a collection error, not a slow test."""
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.path).startswith(here):
            continue
        used = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} is a unit test but uses {sorted(used)}: move it to "
                "tests/integration"
            )


@pytest.fixture(autouse=True)
def _no_processes_sockets_or_ray(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a subprocess"))
    monkeypatch.setattr(os, "fork", _refuse("forked"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("spawned a process"))
    monkeypatch.setattr(os, "posix_spawnp", _refuse("spawned a process"))
    monkeypatch.setattr(multiprocessing.Process, "start", _refuse("started a process"))
    connect, bind = socket.socket.connect, socket.socket.bind

    def checked_connect(sock, *args):
        if sock.family == socket.AF_UNIX:  # not the network (asyncio's self-pipe, say)
            return connect(sock, *args)
        raise ResourceUsedError("a unit test opened a network connection")

    def checked_bind(sock, *args):
        if sock.family == socket.AF_UNIX:
            return bind(sock, *args)
        raise ResourceUsedError("a unit test bound a network port")

    monkeypatch.setattr(socket.socket, "connect", checked_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", checked_connect)
    monkeypatch.setattr(socket.socket, "bind", checked_bind)
    monkeypatch.setattr(socket, "create_connection", _refuse("opened a network connection"))
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a core dependency
        pass
    else:
        monkeypatch.setattr(ray, "init", _refuse("called ray.init"))
    yield

