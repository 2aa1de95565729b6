"""The vendor's Cluster Manager on the session's Ray head, a fixed cluster of one node: it
lists its node and answers plainly that it cannot be scaled. Argument checks and the
autoscaler's side: tests/unit/core/test_cluster_manager.py."""

from __future__ import annotations

import pytest

from shardtrain.errors import ClusterError
from shardtrain.runtime_cluster import get_nodes, scale_cluster
from shardtrain.runtime_cluster.cluster_manager import autoscaling_node_types


def test_get_nodes_lists_the_head(ray_cluster):
    nodes = get_nodes()
    assert len(nodes) == 1
    head = nodes[0]
    assert head["is_head"] is True and head["cpus"] == 2 and head["memory_bytes"] > 0
    assert head["node_id"] == ray_cluster.get_runtime_context().get_node_id()


def test_a_fixed_cluster_says_so_with_its_size(ray_cluster):
    assert autoscaling_node_types() == []  # a local head reports no autoscaler that can grow
    assert scale_cluster(1) is True  # already that size: nothing to do
    with pytest.raises(ClusterError, match=r"fixed at 1 node\(s\).*cannot be scaled to 3") as info:
        scale_cluster(3, is_async=True)
    assert info.value.size == 1 and info.value.expected_cluster_size == 3
    assert len(get_nodes()) == 1
