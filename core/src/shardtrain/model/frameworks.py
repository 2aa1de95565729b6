"""One spec per framework: everything shardtrain knows about a model library in one place.

Artifacts (which frameworks exist), publishing (the model file, the library version),
loading, the registry (MLflow flavour and options) and the estimators (model bytes <->
model object, batch predictor) all read the spec. The framework itself is imported only when
a spec's function runs, so ``import shardtrain`` needs none of them. Every function is a
module-level function, so a spec pickles to Ray workers by reference.

Adding a framework: a spec here, plus its trainer and worker modules under
``shardtrain.modeling.distributors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError


@dataclass(frozen=True)
class FrameworkSpec:
    """What shardtrain needs to know about one model library.

    Attributes:
        name: the framework's name in artifacts and specs (``"xgboost"``).
        module: its import name (``"xgboost"``; ``"torch"`` for PyTorch).
        model_files: file names that hold a model, preferred first; the first is what the
            trainer writes.
        suffixes: file suffixes that may hold a model (to find it in an older artifact).
        load_file: model file path -> model object (nothing is unpickled).
        dump / load: model object <-> bytes, where the trainer moves models as bytes.
        predictor: model bytes -> a batch predict function (features float32 -> numpy).
        mlflow_flavour: the MLflow module that logs it (``"mlflow.xgboost"``).
        mlflow_options: extra ``log_model`` arguments.
        tabular: True when the model takes named columns (its MLflow signature names them);
            False for a tensor model.
        needs_module: True when the stored model is a state to load into user code (a torch
            ``nn.Module``) before it can be registered.
    """

    name: str
    module: str
    model_files: tuple[str, ...]
    suffixes: tuple[str, ...]
    load_file: Callable[[Path], Any]
    mlflow_flavour: str
    dump: Callable[[Any], bytes] | None = None
    load: Callable[[bytes], Any] | None = None
    predictor: Callable[[bytes], Callable[[Any], Any]] | None = None
    mlflow_options: dict[str, Any] = field(default_factory=dict)
    tabular: bool = True
    needs_module: bool = False

    @property
    def model_file(self) -> str:
        """The file name a trainer writes its model to."""
        return self.model_files[0]

    def model_file_in(self, files: Sequence[str]) -> str | None:
        """The model file among a published folder's files (None if it has none)."""
        return next((f for f in self.model_files if f in files), None)


# -- XGBoost -------------------------------------------------------------------------------------


def _xgb_load(data: bytes):
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(data))
    return booster


def _xgb_load_file(path: Path):
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(path))
    return booster


def _xgb_dump(booster) -> bytes:
    return bytes(booster.save_raw("ubj"))


def _xgb_predictor(data: bytes):
    booster = _xgb_load(data)
    return lambda features: booster.inplace_predict(features)


XGBOOST = FrameworkSpec(
    name="xgboost",
    module="xgboost",
    model_files=("model.ubj",),
    suffixes=(".ubj", ".json"),
    load_file=_xgb_load_file,
    dump=_xgb_dump,
    load=_xgb_load,
    predictor=_xgb_predictor,
    mlflow_flavour="mlflow.xgboost",
)


# -- LightGBM ------------------------------------------------------------------------------------


def _lgb_load(data: bytes):
    import lightgbm

    return lightgbm.Booster(model_str=data.decode())


def _lgb_load_file(path: Path):
    import lightgbm

    return lightgbm.Booster(model_file=str(path))


def _lgb_dump(booster) -> bytes:
    return booster.model_to_string().encode()


def _lgb_predictor(data: bytes):
    booster = _lgb_load(data)
    return lambda features: booster.predict(features)


LIGHTGBM = FrameworkSpec(
    name="lightgbm",
    module="lightgbm",
    model_files=("model.txt",),
    suffixes=(".txt",),
    load_file=_lgb_load_file,
    dump=_lgb_dump,
    load=_lgb_load,
    predictor=_lgb_predictor,
    mlflow_flavour="mlflow.lightgbm",
)


# -- PyTorch -------------------------------------------------------------------------------------


def _torch_load_file(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


PYTORCH = FrameworkSpec(
    name="pytorch",
    module="torch",
    model_files=("model.pt", "model.pth"),
    suffixes=(".pt", ".pth"),
    load_file=_torch_load_file,
    mlflow_flavour="mlflow.pytorch",
    # MLflow's newer traced 'pt2' format specialises the graph to the example's batch size
    # (a model traced on one row refuses 300): keep its classic format.
    mlflow_options={"serialization_format": "pickle"},
    tabular=False,
    needs_module=True,
)


SPECS: dict[str, FrameworkSpec] = {s.name: s for s in (XGBOOST, LIGHTGBM, PYTORCH)}
#: The framework names an artifact may carry.
FRAMEWORKS: tuple[str, ...] = tuple(SPECS)
#: Every suffix a model file may have, over all frameworks.
MODEL_SUFFIXES: tuple[str, ...] = tuple(x for s in SPECS.values() for x in s.suffixes)


def spec(name: str) -> FrameworkSpec:
    """The spec of a framework by name; ``ConfigError`` for an unknown one."""
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"framework must be one of {FRAMEWORKS}, got {name!r}.", framework=name
        ) from None
