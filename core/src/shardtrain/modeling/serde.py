"""Model serdes for many-model training: a trained model object <-> one file.

Why a module of its own: a many-model train function returns a live model object (a booster,
an sklearn-style wrapper, a torch module), and something has to turn it into a file that the
publish path can checksum and a later process can read back. The built-in serdes write the
libraries' own safe formats (XGBoost UBJSON, LightGBM text, torch ``state_dict`` loaded with
``weights_only``); nothing is unpickled unless the user asks for ``PickleSerde`` by name.

A custom serde subclasses ``ModelSerde`` (the vendor's interface): ``filename``,
``write(model, file_path)`` and ``read(file_path)``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from shardtrain.errors import ConfigError
from shardtrain.model.frameworks import import_module


class ModelSerde(ABC):
    """Writes a model to one file and reads it back.

    Subclass it for a library shardtrain has no serde for; pass an instance as
    ``ManyModelTraining(..., serde=MySerde())`` and the same serde to ``restore_from`` /
    ``ManyModelInference`` to read the models back.

    Example:
        >>> import json
        >>> class JsonSerde(ModelSerde):
        ...     @property
        ...     def filename(self):
        ...         return "model.json"
        ...     def write(self, model, file_path):
        ...         with open(file_path, "w") as f:
        ...             json.dump(model, f)
        ...     def read(self, file_path):
        ...         with open(file_path) as f:
        ...             return json.load(f)
    """

    #: The framework name the published artifact carries ("custom": readable only by a serde).
    framework: str = "custom"
    #: True for the built-in pickle-free serdes: a restored run can rebuild them by name.
    builtin: bool = False

    @property
    @abstractmethod
    def filename(self) -> str:
        """The model file's name inside the partition's folder."""

    @abstractmethod
    def write(self, model: Any, file_path: str) -> None:
        """Write ``model`` to ``file_path``."""

    @abstractmethod
    def read(self, file_path: str) -> Any:
        """Read the model back from ``file_path``."""

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about the serde (to pick it again on restore)."""
        name = self.name if self.builtin else f"{type(self).__module__}.{type(self).__qualname__}"
        return {"name": name, "filename": self.filename, "framework": self.framework}

    name: str = "custom"


class XGBoostSerde(ModelSerde):
    """XGBoost boosters and sklearn wrappers (``XGBRegressor``...) as UBJSON.

    A wrapper reads back as the same wrapper class (xgboost records its kind in the file), so
    ``model.predict(pandas_frame)`` works after ``get_model``; a bare booster as a booster.
    """

    framework = "xgboost"
    builtin = True
    name = "xgboost"

    @property
    def filename(self) -> str:
        return "model.ubj"

    def write(self, model: Any, file_path: str) -> None:
        model.save_model(file_path)  # Booster and XGBModel both; sklearn metadata kept

    def read(self, file_path: str) -> Any:
        xgboost = import_module("xgboost", "an xgboost model")
        booster = xgboost.Booster()
        booster.load_model(file_path)
        meta = booster.attr("scikit_learn")
        if not meta:
            return booster
        kind = json.loads(meta).get("_estimator_type")
        cls = {
            "regressor": xgboost.XGBRegressor,
            "classifier": xgboost.XGBClassifier,
            "ranker": xgboost.XGBRanker,
        }.get(kind)
        if cls is None:
            return booster
        model = cls()
        model.load_model(file_path)
        return model


class LightGBMSerde(ModelSerde):
    """LightGBM boosters and sklearn wrappers, as LightGBM's text format; reads back a
    ``lightgbm.Booster`` (its ``predict`` takes a pandas frame)."""

    framework = "lightgbm"
    builtin = True
    name = "lightgbm"

    @property
    def filename(self) -> str:
        return "model.txt"

    def write(self, model: Any, file_path: str) -> None:
        booster = getattr(model, "booster_", model)
        booster.save_model(file_path)

    def read(self, file_path: str) -> Any:
        lightgbm = import_module("lightgbm", "a lightgbm model")
        return lightgbm.Booster(model_file=file_path)


class TorchSerde(ModelSerde):
    """A torch module's ``state_dict`` (or a state dict itself), loaded with
    ``weights_only=True``. With ``module`` (a class or factory taking no arguments) ``read``
    returns that module with the weights loaded; without, the state dict."""

    framework = "pytorch"
    builtin = True
    name = "torch"

    def __init__(self, module: Any = None) -> None:
        self.module = module

    @property
    def filename(self) -> str:
        return "model.pt"

    def write(self, model: Any, file_path: str) -> None:
        torch = import_module("torch", "a pytorch model")
        state = model.state_dict() if hasattr(model, "state_dict") else model
        torch.save(state, file_path)

    def read(self, file_path: str) -> Any:
        torch = import_module("torch", "a pytorch model")
        state = torch.load(file_path, map_location="cpu", weights_only=True)
        if self.module is None:
            return state
        module = self.module()
        module.load_state_dict(state)
        return module


class PickleSerde(ModelSerde):
    """Any Python object, pickled (cloudpickle where installed). Only when asked for: reading
    a pickle runs code from the file, so use it for stages only trusted writers reach."""

    builtin = True
    name = "pickle"

    @property
    def filename(self) -> str:
        return "model.pkl"

    def write(self, model: Any, file_path: str) -> None:
        try:
            import cloudpickle as pickler
        except ImportError:  # pragma: no cover - Ray installs cloudpickle
            import pickle as pickler
        with open(file_path, "wb") as handle:
            pickler.dump(model, handle)

    def read(self, file_path: str) -> Any:
        import pickle

        with open(file_path, "rb") as handle:
            return pickle.load(handle)  # noqa: S301 - the user chose PickleSerde


_BUILTIN = {"xgboost": XGBoostSerde, "lightgbm": LightGBMSerde, "torch": TorchSerde}


def serde_for_model(model: Any) -> ModelSerde:
    """The pickle-free serde for a model object, by its library; ``ConfigError`` when there
    is none (the message names ``PickleSerde`` and ``ModelSerde``)."""
    module = type(model).__module__.split(".", 1)[0]
    if module in ("xgboost", "lightgbm"):
        return _BUILTIN[module]()
    if module == "torch" or (
        isinstance(model, dict) and model and type(next(iter(model.values()))).__module__ == "torch"
    ):
        return TorchSerde()
    raise ConfigError(
        f"no pickle-free format is known for a {type(model).__module__}.{type(model).__name__} "
        "model: return an XGBoost, LightGBM or torch model, pass serde=ModelSerde subclass "
        "that writes it, or serde=PickleSerde() if pickles are acceptable (trusted stages only).",
        model_type=f"{type(model).__module__}.{type(model).__name__}",
    )


def serde_from_record(record: dict[str, Any], given: ModelSerde | None) -> ModelSerde:
    """The serde to read a run's models: the one given, else a built-in pickle-free one the
    manifest names; a pickle or custom serde must be given (nothing is unpickled by default)."""
    name = record.get("name")
    if given is not None:
        if given.filename != record.get("filename"):
            raise ConfigError(
                f"serde {type(given).__name__} reads {given.filename!r}, but the run's models "
                f"were written as {record.get('filename')!r} by {name!r}: pass the serde that "
                "trained them.",
                serde=name,
            )
        return given
    if name in _BUILTIN:
        return _BUILTIN[name]()
    if name == "pickle":
        raise ConfigError(
            "the run's models are pickles: pass serde=PickleSerde() to read them (only for a "
            "stage that only trusted writers reach: unpickling runs code).",
            serde=name,
        )
    raise ConfigError(
        f"the run's models were written by the custom serde {name!r}: pass serde={name}() "
        "(or an equivalent ModelSerde) to read them.",
        serde=name,
    )


__all__ = [
    "LightGBMSerde",
    "ModelSerde",
    "PickleSerde",
    "TorchSerde",
    "XGBoostSerde",
    "serde_for_model",
    "serde_from_record",
]
