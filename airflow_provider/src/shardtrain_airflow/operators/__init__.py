"""The provider's operators: training (``train``) and model registration (``registry``)."""

from shardtrain_airflow.links import ModelLocationLink
from shardtrain_airflow.operators.registry import RegisterModelOperator
from shardtrain_airflow.operators.train import (
    BoostingTrainOperator,
    LightGBMTrainOperator,
    PyTorchTrainOperator,
    TrainOperator,
    XGBoostTrainOperator,
)

__all__ = [
    "BoostingTrainOperator",
    "LightGBMTrainOperator",
    "ModelLocationLink",
    "PyTorchTrainOperator",
    "RegisterModelOperator",
    "TrainOperator",
    "XGBoostTrainOperator",
]
