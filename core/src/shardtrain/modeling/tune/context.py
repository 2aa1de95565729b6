"""Inside a trial: ``get_tuner_context()`` and what ``report`` does with a model.

The Tuner runs ``train_func`` in a Ray Tune trial with a ``TunerContext`` set for it. A
report carries the metrics to Ray Tune (which feeds them to the search algorithm) and, when a
model is given, a checkpoint folder holding it twice: in its framework's safe format
(``model.ubj`` for XGBoost, ``model.txt`` for LightGBM, ``model.pt`` state dict for PyTorch:
what the stage gets) and as a pickle that lives only in the run's temporary Ray Tune storage,
so ``best_model`` is the very object the trial reported (an ``XGBClassifier`` stays one).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError, MetricNotReportedError, OutsideWorkerError
from shardtrain.model.frameworks import spec

#: Files of a reported model inside a trial's checkpoint.
TRANSPORT_FILE = "transport.pkl"  # the reported object; never leaves the run's temp storage
INFO_FILE = "model_info.json"

_CURRENT: contextvars.ContextVar[TunerContext | None] = contextvars.ContextVar(
    "shardtrain_tuner_context", default=None
)


@dataclass
class TunerContext:
    """What a trial's ``train_func`` sees: its hyperparameters, the datasets, and ``report``."""

    _hyper_params: dict[str, Any]
    _dataset_map: dict[str, Any] | None
    _metric: str
    _trial_id: str | None = None
    reports: int = field(default=0, repr=False)

    def get_hyper_params(self) -> dict[str, Any]:
        """This trial's hyperparameters (one draw from the search space)."""
        return dict(self._hyper_params)

    def get_dataset_map(self) -> dict[str, Any] | None:
        """The ``dataset_map`` given to ``Tuner.run`` (name -> DataConnector)."""
        return self._dataset_map

    def get_trial_id(self) -> str | None:
        return self._trial_id

    def report(self, metrics: dict[str, Any], model: Any | None = None) -> None:
        """Report this trial's metrics (they guide the search) and, optionally, its model.

        The metrics must include the ``TunerConfig.metric``; values are numbers. A trial may
        report more than once: its last report is its result.
        """
        from ray import tune

        metrics = _check_metrics(metrics, self._metric)
        self.reports += 1
        if model is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="shardtrain-trial-") as tmp:
            save_model(model, Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def get_tuner_context() -> TunerContext:
    """The context of the trial this code runs in (only inside a Tuner's ``train_func``)."""
    context = _CURRENT.get()
    if context is None:
        raise OutsideWorkerError(
            "get_tuner_context() is only available inside a Tuner's train_func, while a trial "
            "runs; pass train_func to Tuner(...).run() instead of calling it directly."
        )
    return context


def _check_metrics(metrics: Any, metric: str) -> dict[str, float]:
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        raise ConfigError(
            f"report(metrics=...) takes a dict of metric name -> number, got {metrics!r}."
        )
    if metric not in metrics:
        raise MetricNotReportedError(
            f"the trial reported {sorted(metrics)} but the TunerConfig optimises {metric!r}: "
            f"report it (report(metrics={{{metric!r}: value, ...}})) or set TunerConfig(metric=...) "
            "to one of the reported names.",
            metric=metric,
            reported=sorted(metrics),
        )
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                f"report(metrics=...): {key!r} is {value!r} ({type(value).__name__}); metrics "
                "must be numbers.",
                metric=key,
            )
        out[key] = float(value)
    if not math.isfinite(out[metric]):
        raise ConfigError(
            f"report(metrics=...): {metric!r} is {out[metric]}, which cannot be ranked; report "
            "a finite number (a diverged trial can report a large value instead).",
            metric=metric,
        )
    return out


# -- models ---------------------------------------------------------------------------------------


def framework_of(model: Any) -> tuple[str | None, Any]:
    """(framework, what its spec dumps) for a model object, or (None, None) when it has no
    safe format here. Frameworks are only looked at when already imported."""
    module = type(model).__module__.split(".", 1)[0]
    if module == "xgboost" and "xgboost" in sys.modules:
        import xgboost

        if isinstance(model, xgboost.Booster):
            return "xgboost", model
        if isinstance(model, xgboost.XGBModel):
            return "xgboost", model.get_booster()
    if module == "lightgbm" and "lightgbm" in sys.modules:
        import lightgbm

        if isinstance(model, lightgbm.Booster):
            return "lightgbm", model
        if isinstance(model, lightgbm.LGBMModel):
            return "lightgbm", model.booster_
    if "torch" in sys.modules:
        import torch

        if isinstance(model, torch.nn.Module):
            return "pytorch", model.state_dict()
        if (
            isinstance(model, dict)
            and model
            and all(isinstance(v, torch.Tensor) for v in model.values())
        ):
            return "pytorch", model
    return None, None


def save_model(model: Any, folder: Path) -> None:
    """Write a reported model into a trial checkpoint folder (see the module docstring)."""
    framework, dumpable = framework_of(model)
    info: dict[str, Any] = {"framework": framework, "type": type(model).__qualname__}
    if framework is not None:
        model_spec = spec(framework)
        target = folder / model_spec.model_file
        if framework == "pytorch":
            import torch

            torch.save(dumpable, target)
        else:
            assert model_spec.dump is not None  # every framework but pytorch has one
            target.write_bytes(model_spec.dump(dumpable))
        info["model_file"] = model_spec.model_file
        info["input_cols"] = _feature_names(framework, dumpable)
    try:
        import cloudpickle

        (folder / TRANSPORT_FILE).write_bytes(cloudpickle.dumps(model))
    except Exception as exc:  # best_model then loads the safe format instead
        info["transport_error"] = f"{type(exc).__name__}: {exc}"
    (folder / INFO_FILE).write_text(json.dumps(info))


def _feature_names(framework: str, model: Any) -> list[str]:
    """The model's input column names where it records them (what registries sign)."""
    try:
        if framework == "xgboost":
            names = model.feature_names
        elif framework == "lightgbm":
            names = model.feature_name()
        else:
            names = None
    except Exception:
        names = None
    return [str(n) for n in names] if names else []


def load_reported_model(folder: Path) -> tuple[Any, dict[str, Any]]:
    """(the reported object, its info) from a trial checkpoint folder."""
    info = json.loads((folder / INFO_FILE).read_text())
    transport = folder / TRANSPORT_FILE
    if transport.exists():
        return pickle.loads(transport.read_bytes()), info
    model_file = info.get("model_file")
    if model_file:
        return spec(info["framework"]).load_file(folder / model_file), info
    return None, info


def run_trial(config: dict[str, Any], *, train_func, dataset_map, metric: str) -> None:
    """The Ray Tune trainable: set the context, run ``train_func``, check it reported."""
    from ray import tune

    # Ray Tune logs each persisted checkpoint at INFO on the trial: not news to the user.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    _ensure_worker_pool_outside_trial()
    context = TunerContext(config, dataset_map, metric, tune.get_context().get_trial_id())
    token = _CURRENT.set(context)
    try:
        train_func()
    finally:
        _CURRENT.reset(token)
    if context.reports == 0:
        raise MetricNotReportedError(
            f"train_func returned without calling get_tuner_context().report(metrics=...): "
            f"the trial has no {metric!r} to rank. Report the metric (and the model) at the end "
            "of train_func.",
            metric=metric,
            reported=[],
        )


def _ensure_worker_pool_outside_trial() -> None:
    """Create this runtime environment's worker pool (for estimators run inside the trial)
    outside the trial's placement group.

    Ray Tune runs a trial in a placement group whose child actors it captures; a detached
    pool created by an estimator inside the trial would then live in that group and die with
    it when the trial ends, taking other trials' warm workers along. Creating it here, with
    the default scheduling strategy, keeps it a cluster-wide actor like any other pool.
    """
    import ray

    from shardtrain.runtime import worker_pool

    name = worker_pool.pool_name()
    try:
        ray.get_actor(name, namespace=worker_pool.POOL_NAMESPACE)
        return
    except ValueError:
        pass
    ray.remote(worker_pool.WorkerPool).options(
        name=name,
        namespace=worker_pool.POOL_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=worker_pool.POOL_MAX_CONCURRENCY,
        scheduling_strategy="DEFAULT",
    ).remote()


__all__ = ["TunerContext", "get_tuner_context"]
