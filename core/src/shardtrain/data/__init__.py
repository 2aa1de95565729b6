"""Data connectors: sources -> Arrow record batches -> trainers."""

from shardtrain.data.data_connector import DataConnector
from shardtrain.data.sharded_data_connector import ShardedDataConnector

__all__ = ["DataConnector", "ShardedDataConnector"]
