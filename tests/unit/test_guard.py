"""The unit layer's conftest refuses processes, sockets and Ray: a test that used one would
otherwise pass here and slow the quick loop down."""

from __future__ import annotations

import socket
import subprocess

import pytest

# The conftest's ResourceUsedError is an AssertionError (conftests are not importable here).


def test_the_guard_refuses_a_subprocess():
    with pytest.raises(AssertionError, match="subprocess"):
        subprocess.run(["true"])


def test_the_guard_refuses_a_network_connection():
    with pytest.raises(AssertionError, match="network"), socket.socket() as sock:
        sock.connect(("127.0.0.1", 9))


def test_the_guard_refuses_ray():
    import ray

    with pytest.raises(AssertionError, match="ray.init"):
        ray.init()
