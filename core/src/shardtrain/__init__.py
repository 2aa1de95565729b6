"""shardtrain: distributed XGBoost, LightGBM and PyTorch on Ray, from Airflow and Prefect.

The public API follows the names of Snowflake ML's distributed trainers, so code written for
them runs after replacing the import prefix ``snowflake.ml`` with ``shardtrain``.
"""

from shardtrain.data import DataConnector, ShardedDataConnector
from shardtrain.errors import (
    ConfigError,
    DataSourceError,
    EmptyDataError,
    SchemaError,
    ShardtrainError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataConnector",
    "DataSourceError",
    "EmptyDataError",
    "SchemaError",
    "ShardedDataConnector",
    "ShardtrainError",
    "__version__",
]
