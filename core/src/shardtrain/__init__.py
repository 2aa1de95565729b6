"""shardtrain: distributed XGBoost, LightGBM and PyTorch on Ray, from Airflow and Prefect.

The public API follows the names of Snowflake ML's distributed trainers, so code written for
them runs after replacing the import prefix ``snowflake.ml`` with ``shardtrain``.
"""

from shardtrain.config import (
    FailureConfig,
    LightGBMScalingConfig,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    XGBScalingConfig,
)
from shardtrain.data import DataConnector, ShardedDataConnector
from shardtrain.errors import (
    ClusterError,
    ConfigError,
    DataSourceError,
    EmptyDataError,
    JobError,
    JobFailedError,
    JobServerError,
    JobStoppedError,
    MemoryBudgetError,
    MetricNotReportedError,
    MissingDependencyError,
    ModelIntegrityError,
    NoModelReturnedError,
    NotFittedError,
    OutsideWorkerError,
    PartitionError,
    PublishConflictError,
    ScalingConfigError,
    SchemaError,
    SearchSpaceError,
    ShardtrainError,
    StageError,
    TuneError,
    WorkerDiedError,
    WorkerError,
)
from shardtrain.model.artifact import ModelArtifact
from shardtrain.model.load import fetch_model, load_model
from shardtrain.model.publish import publish_model
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator
from shardtrain.modeling.distributors.pytorch import (
    Context,
    PyTorchDistributor,
    PyTorchDistributorResult,
    get_context,
)
from shardtrain.modeling.distributors.xgboost import XGBEstimator
from shardtrain.stage import open_stage
from shardtrain.version import __version__

__all__ = [
    "ClusterError",
    "ConfigError",
    "Context",
    "DataConnector",
    "DataSourceError",
    "EmptyDataError",
    "FailureConfig",
    "JobError",
    "JobFailedError",
    "JobServerError",
    "JobStoppedError",
    "LightGBMEstimator",
    "LightGBMScalingConfig",
    "MemoryBudgetError",
    "MetricNotReportedError",
    "MissingDependencyError",
    "ModelArtifact",
    "ModelIntegrityError",
    "NoModelReturnedError",
    "NotFittedError",
    "OutsideWorkerError",
    "PartitionError",
    "PublishConflictError",
    "PyTorchDistributor",
    "PyTorchDistributorResult",
    "PyTorchScalingConfig",
    "ScalingConfigError",
    "SchemaError",
    "SearchSpaceError",
    "ShardedDataConnector",
    "ShardtrainError",
    "StageError",
    "TuneError",
    "WorkerDiedError",
    "WorkerError",
    "WorkerResourceConfig",
    "XGBEstimator",
    "XGBScalingConfig",
    "__version__",
    "fetch_model",
    "get_context",
    "load_model",
    "open_stage",
    "publish_model",
]
