"""Prefect collection for shardtrain: tasks that train on Ray and return the model location.

``register_model(train_xgboost(...))`` works in a flow: each training task returns the
``ModelArtifact`` of the model it published.
"""

from importlib import metadata

from prefect_shardtrain.blocks import ModelStage, RayCluster
from prefect_shardtrain.many_model import register_many_models, train_many_models
from prefect_shardtrain.tasks import register_model, train_lightgbm, train_pytorch, train_xgboost
from prefect_shardtrain.tune import tune_hyperparameters

try:  # one version source: the repository's VERSION file, through the installed metadata
    __version__ = metadata.version("prefect-shardtrain")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ModelStage",
    "RayCluster",
    "register_many_models",
    "register_model",
    "train_lightgbm",
    "train_many_models",
    "train_pytorch",
    "train_xgboost",
    "tune_hyperparameters",
]
