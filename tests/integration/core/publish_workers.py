"""What the concurrent-publisher tests run in spawned processes, in a module of its own: a
spawned child imports the module its function lives in, and this one needs only XGBoost (the
test module's torch and LightGBM imports cost each of eight children seconds)."""

from __future__ import annotations

import os

import numpy as np
import xgboost as xgb

from shardtrain.model.publish import publish_model

X = np.random.default_rng(0).random((200, 4))
Y = X @ np.array([1.0, -2.0, 0.5, 3.0])


def publish_in_process(args):
    stage, storage_options, index, tmp = args
    booster = xgb.train({"max_depth": 2, "seed": index}, xgb.DMatrix(X, label=Y + index), 3)
    folder = os.path.join(tmp, f"m{index}")
    os.makedirs(folder)
    booster.save_model(os.path.join(folder, "model.ubj"))
    artifact = publish_model(
        folder,
        framework="xgboost",
        stage=stage,
        model_file="model.ubj",
        storage_options=storage_options,
        metrics={"i": {"index": index}},
    )
    return artifact.to_dict(), booster.predict(xgb.DMatrix(X)).tolist()
