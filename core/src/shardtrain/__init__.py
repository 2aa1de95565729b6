"""shardtrain: distributed XGBoost, LightGBM and PyTorch on Ray, from Airflow and Prefect.

The public API follows the names of Snowflake ML's distributed trainers, so code written for
them runs after replacing the import prefix ``snowflake.ml`` with ``shardtrain``.
"""

from shardtrain.artifact import ModelArtifact, load_model
from shardtrain.config import FailureConfig
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
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.pytorch import (
    Context,
    PyTorchDistributor,
    PyTorchDistributorResult,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    get_context,
)
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.stage import open_stage
from shardtrain.stage.publish import fetch_model, publish_model

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "Context",
    "FailureConfig",
    "LightGBMEstimator",
    "LightGBMScalingConfig",
    "PyTorchDistributor",
    "PyTorchDistributorResult",
    "PyTorchScalingConfig",
    "WorkerResourceConfig",
    "XGBEstimator",
    "XGBScalingConfig",
    "get_context",
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
