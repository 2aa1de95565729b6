from shardtrain_airflow.operators.train import (
    LightGBMTrainOperator,
    ModelLocationLink,
    PyTorchTrainOperator,
    RegisterModelOperator,
    XGBoostTrainOperator,
)

__all__ = [
    "LightGBMTrainOperator",
    "ModelLocationLink",
    "PyTorchTrainOperator",
    "RegisterModelOperator",
    "XGBoostTrainOperator",
]
