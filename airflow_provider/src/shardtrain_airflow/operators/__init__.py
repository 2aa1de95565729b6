from shardtrain_airflow.operators.train import (
    LightGBMTrainOperator,
    ModelLocationLink,
    PyTorchTrainOperator,
    XGBoostTrainOperator,
)

__all__ = [
    "LightGBMTrainOperator",
    "ModelLocationLink",
    "PyTorchTrainOperator",
    "XGBoostTrainOperator",
]
