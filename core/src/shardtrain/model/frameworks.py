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

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from shardtrain.errors import ConfigError, MissingDependencyError

#: Optional libraries: import name -> (the package to install, the shardtrain extra with it).
OPTIONAL: dict[str, tuple[str, str]] = {
    "xgboost": ("xgboost (or xgboost-cpu)", "xgboost-cpu"),
    "lightgbm": ("lightgbm", "lightgbm"),
    "torch": ("torch", "torch"),
    "mlflow": ("mlflow", "mlflow"),
    "snowflake.snowpark": ("snowflake-snowpark-python", "snowflake"),
    "optuna": ("optuna", "tune"),  # the Tuner's model-based search (BayesOpt)
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None
        return False


def require_module(module: str, purpose: str) -> None:
    """Raise ``MissingDependencyError`` on this process (the driver, before any worker
    starts) when an optional library is not installed, naming the package and the extra."""
    if _installed(module):
        return
    package, extra = OPTIONAL.get(module, (module, None))
    how = (
        f"pip install 'shardtrain[{extra}]' (or the same extra of airflow-provider-shardtrain "
        f"/ prefect-shardtrain)"
        if extra
        else f"pip install {package}"
    )
    if module == "xgboost":
        how += "; the extra 'xgboost' installs the full wheel with GPU support instead"
    raise MissingDependencyError(
        f"{purpose} needs {package}, which is not installed here: {how}. On a remote Ray "
        "cluster, install it on the cluster's nodes too.",
        module=module,
        package=package,
        extra=extra,
    )


def import_module(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module`` with ``require_module``'s message when it is missing."""
    require_module(module, purpose)
    return importlib.import_module(module)


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

    def require(self) -> None:
        """``MissingDependencyError`` (package and extra named) when the framework is not
        installed on this process; trainers call it before they start any worker."""
        require_module(self.module, f"a {self.name} model")

    def library(self) -> ModuleType:
        """The framework's module, imported (``MissingDependencyError`` when missing)."""
        return import_module(self.module, f"a {self.name} model")

    @property
    def model_file(self) -> str:
        """The file name a trainer writes its model to."""
        return self.model_files[0]

    def model_file_in(self, files: Sequence[str]) -> str | None:
        """The model file among a published folder's files (None if it has none)."""
        return next((f for f in self.model_files if f in files), None)


# -- XGBoost -------------------------------------------------------------------------------------


def _xgb_load(data: bytes):
    xgboost = import_module("xgboost", "an xgboost model")
    booster = xgboost.Booster()
    booster.load_model(bytearray(data))
    return booster


def _xgb_load_file(path: Path):
    xgboost = import_module("xgboost", "an xgboost model")
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
    lightgbm = import_module("lightgbm", "a lightgbm model")
    return lightgbm.Booster(model_str=data.decode())


def _lgb_load_file(path: Path):
    lightgbm = import_module("lightgbm", "a lightgbm model")
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
    torch = import_module("torch", "a pytorch model")
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


# -- Custom ---------------------------------------------------------------------------------------


def _custom_load_file(path: Path):
    raise ConfigError(
        f"{path.name} was written by a custom model serde (many-model training's ModelSerde or "
        "PickleSerde): load it with that serde, e.g. ManyModelRun.restore_from(run_id, stage, "
        "serde=...).get_model(partition_id).",
        path=str(path),
    )


#: Models written by a user's serde (``many_model.ModelSerde``, ``PickleSerde``): published and
#: checked like any model, loaded only through that serde; not a training framework, so it is
#: not among ``FRAMEWORKS``.
CUSTOM = FrameworkSpec(
    name="custom",
    module="shardtrain",
    model_files=(),
    suffixes=(),
    load_file=_custom_load_file,
    mlflow_flavour="mlflow.pyfunc",
    tabular=False,
)


SPECS: dict[str, FrameworkSpec] = {s.name: s for s in (XGBOOST, LIGHTGBM, PYTORCH)}
#: The framework names an artifact may carry.
FRAMEWORKS: tuple[str, ...] = tuple(SPECS)
#: Every suffix a model file may have, over all frameworks.
MODEL_SUFFIXES: tuple[str, ...] = tuple(x for s in SPECS.values() for x in s.suffixes)


def spec(name: str) -> FrameworkSpec:
    """The spec of a framework by name; ``ConfigError`` for an unknown one."""
    try:
        return CUSTOM if name == CUSTOM.name else SPECS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"framework must be one of {FRAMEWORKS}, got {name!r}.", framework=name
        ) from None
