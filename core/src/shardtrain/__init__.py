"""shardtrain: distributed XGBoost, LightGBM and PyTorch on Ray, from Airflow and Prefect.

The public API follows the names of Snowflake ML's distributed trainers, so code written for
them runs after replacing the import prefix ``snowflake.ml`` with ``shardtrain``.
"""

from shardtrain.artifact import ModelArtifact, load_model
from shardtrain.data import DataConnector, ShardedDataConnector
from shardtrain.errors import (
    ClusterError,
    ConfigError,
    DataSourceError,
    EmptyDataError,
    ModelIntegrityError,
    SchemaError,
    ShardtrainError,
    StageError,
)
from shardtrain.stage import open_stage
from shardtrain.stage.publish import fetch_model, publish_model

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "ConfigError",
    "DataConnector",
    "DataSourceError",
    "EmptyDataError",
    "ModelArtifact",
    "ModelIntegrityError",
    "SchemaError",
    "ShardedDataConnector",
    "ShardtrainError",
    "StageError",
    "__version__",
    "fetch_model",
    "load_model",
    "open_stage",
    "publish_model",
]
