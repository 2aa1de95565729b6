"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_cluster.py.]

Connecting to Ray: unreachable addresses fail fast with a ClusterError."""

from __future__ import annotations

import pytest

from shardtrain.errors import ClusterError
from shardtrain.runtime import cluster


def test_malformed_address():
    with pytest.raises(ClusterError, match="not of the form"):
        cluster.probe("ray://no-port-here")
