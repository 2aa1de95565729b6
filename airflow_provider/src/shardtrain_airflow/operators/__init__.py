"""The provider's operators: training (``train``, ``many_model``), tuning (``tune``) and model
registration (``registry``)."""

from shardtrain_airflow.links import ModelLocationLink
from shardtrain_airflow.operators.many_model import ManyModelTrainOperator
from shardtrain_airflow.operators.registry import RegisterModelOperator
from shardtrain_airflow.operators.train import (
    BoostingTrainOperator,
    LightGBMTrainOperator,
    PyTorchTrainOperator,
    TrainOperator,
    XGBoostTrainOperator,
)
from shardtrain_airflow.operators.tune import TuneOperator

__all__ = [
    "BoostingTrainOperator",
    "LightGBMTrainOperator",
    "ManyModelTrainOperator",
    "ModelLocationLink",
    "PyTorchTrainOperator",
    "RegisterModelOperator",
    "TrainOperator",
    "TuneOperator",
    "XGBoostTrainOperator",
]
