"""The vendor's Cluster Manager (``snowflake.ml.runtime_cluster``) on any Ray cluster:
``scale_cluster`` and ``get_nodes``, also importable from ``cluster_manager``."""

from shardtrain.runtime_cluster.cluster_manager import get_nodes, scale_cluster

__all__ = ["get_nodes", "scale_cluster"]
