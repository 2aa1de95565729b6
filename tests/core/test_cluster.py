"""Connecting to Ray: unreachable addresses fail fast with a ClusterError."""

from __future__ import annotations

import pickle
import socket
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


def test_malformed_address():
    with pytest.raises(ClusterError, match="not of the form"):
        cluster.probe("ray://no-port-here")


def test_connect_reuses_a_running_ray(ray_cluster):
    cluster.connect(address=f"ray://127.0.0.1:{closed_port()}")  # already connected: no probe
    assert ray_cluster.is_initialized()
