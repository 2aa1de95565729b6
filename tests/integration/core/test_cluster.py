"""Connecting to Ray: unreachable addresses fail fast with a ClusterError."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time

import pytest

from shardtrain.errors import ClusterError
from shardtrain.runtime import cluster


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket goes


def test_unreachable_address_fails_fast_with_what_to_do():
    address = f"ray://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach Ray") as info:
        cluster.probe(address)
    assert time.monotonic() - start < 6
    assert info.value.address == address and "10001" in str(info.value)
    clone = pickle.loads(pickle.dumps(info.value))
    assert isinstance(clone, ClusterError) and clone.address == address


def test_ray_address_env_is_used_when_no_address_given():
    """In a fresh process: RAY_ADDRESS pointing nowhere fails fast and starts nothing."""
    import os
    import subprocess
    import sys

    script = """
import ray
from shardtrain.errors import ClusterError
from shardtrain.runtime.cluster import connect
try:
    connect()
except ClusterError as exc:
    print("refused:", exc)
assert not ray.is_initialized()
"""
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{closed_port()}")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "refused: cannot reach Ray at '127.0.0.1:" in result.stdout


def test_connect_reuses_a_running_ray(ray_cluster):
    cluster.connect(address=f"ray://127.0.0.1:{closed_port()}")  # already connected: no probe
    assert ray_cluster.is_initialized()


def test_threads_of_one_process_connect_once(ray_head):
    """Five threads asking for Ray at once (Prefect's task fan-out) end on one connection;
    ray.init from two threads at once fails with 'called ray.init twice'."""
    script = (
        "import threading, ray\n"
        "from shardtrain.runtime.cluster import connect\n"
        "errors = []\n"
        "def go():\n"
        "    try:\n"
        "        connect()\n"
        "    except BaseException as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=go) for _ in range(5)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print('ERRORS', errors, ray.get_runtime_context().gcs_address)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("ERRORS")][-1]
    assert line == f"ERRORS [] {ray_head.gcs_address}", result.stdout[-2000:]
