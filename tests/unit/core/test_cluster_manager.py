"""``shardtrain.runtime_cluster.cluster_manager``: arguments checked before Ray is reached,
and what the autoscaler is asked for. No autoscaler can run here, so the autoscaler's side
(nodes arriving, the request) is an in-process fake; the fixed cluster's answer on the
session's real head is in tests/integration/core/test_cluster_manager.py."""

from __future__ import annotations

import pytest

from shardtrain.errors import ClusterError, ConfigError
from shardtrain.runtime_cluster import cluster_manager
from shardtrain.runtime_cluster.cluster_manager import node_bundles, scale_cluster


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expected_cluster_size": 0}, r"at least 1 \(the head node\), got 0"),
        ({"expected_cluster_size": 2.0}, "whole number of nodes .* got 2.0"),
        ({"expected_cluster_size": True}, "whole number of nodes"),
        ({"expected_cluster_size": 2, "is_async": "yes"}, "is_async must be True or False"),
        ({"expected_cluster_size": 2, "options": [("timeout_s", 5)]}, "options must be a dict"),
        ({"expected_cluster_size": 2, "options": {"timeout": 5}}, r"unknown options \['timeout'\]"),
        ({"expected_cluster_size": 2, "options": {"timeout_s": 0}}, "positive number of seconds"),
        ({"expected_cluster_size": 2, "options": {"node_resources": {"CPU": -1}}}, "positive"),
    ],
)
def test_bad_arguments_are_refused_before_ray_is_reached(kwargs, message):
    size = kwargs.pop("expected_cluster_size")
    with pytest.raises(ConfigError, match=message):
        scale_cluster(size, **kwargs)  # the unit layer refuses ray.init: nothing was reached


def test_the_autoscaler_is_asked_for_one_node_bundle_a_node():
    head, worker = {"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}
    assert node_bundles([head], worker, 3) == [head, worker, worker]
    assert node_bundles([head, worker, worker], worker, 2) == [head, worker]  # scale down
    assert node_bundles([head], worker, 1) == [head]


class FakeAutoscaler:
    """Stands in for Ray's autoscaler: records requests, adds a node each time it is asked
    how many there are, up to ``limit``."""

    def __init__(self, monkeypatch, *, limit: int) -> None:
        self.nodes = [{"cpus": 2.0, "gpus": 0.0, "is_head": True}]
        self.limit, self.requests = limit, []
        monkeypatch.setattr(cluster_manager, "get_nodes", self.get_nodes)
        monkeypatch.setattr(cluster_manager, "autoscaling_node_types", lambda: [{"CPU": 4.0}])
        monkeypatch.setattr(cluster_manager, "_request", self.requests.append)
        monkeypatch.setattr(cluster_manager, "POLL_S", 0.0)

    def get_nodes(self):
        nodes = list(self.nodes)
        if self.requests and len(self.nodes) < min(self.limit, len(self.requests[-1])):
            self.nodes.append({"cpus": 4.0, "gpus": 0.0, "is_head": False})
        return nodes


def test_scaling_waits_for_the_nodes(monkeypatch):
    fake = FakeAutoscaler(monkeypatch, limit=10)
    assert scale_cluster(3) is True
    assert fake.requests == [[{"CPU": 2.0}, {"CPU": 4.0}, {"CPU": 4.0}]]
    assert len(fake.nodes) == 3


def test_is_async_returns_once_the_request_is_made(monkeypatch):
    fake = FakeAutoscaler(monkeypatch, limit=10)
    options = {"node_resources": {"CPU": 16}}
    assert scale_cluster(2, is_async=True, options=options) is True
    assert fake.requests == [[{"CPU": 2.0}, {"CPU": 16}]] and len(fake.nodes) == 1


def test_nodes_that_do_not_come_withdraw_the_request(monkeypatch):
    fake = FakeAutoscaler(monkeypatch, limit=2)
    with pytest.raises(ClusterError, match="reached 2 of 3 node.*withdrawn") as info:
        scale_cluster(3, options={"timeout_s": 0.01})
    assert info.value.size == 2 and info.value.expected_cluster_size == 3
    assert fake.requests[-1] == [{"CPU": 2.0}]  # back to the cluster as it was
