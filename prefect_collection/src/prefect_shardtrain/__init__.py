"""Prefect collection for shardtrain: tasks that train on Ray and return the model location.

``register_model(train_xgboost(...))`` works in a flow: each training task returns the
``ModelArtifact`` of the model it published.
"""

from prefect_shardtrain.blocks import ModelStage, RayCluster
from prefect_shardtrain.tasks import register_model, train_lightgbm, train_pytorch, train_xgboost

__version__ = "0.1.0"

__all__ = [
    "ModelStage",
    "RayCluster",
    "register_model",
    "train_lightgbm",
    "train_pytorch",
    "train_xgboost",
]
