"""Estimators and distributors from plain arguments (a spec's dicts and dotted paths).

Orchestrators pass configuration as JSON-like values; this is the one place that turns them
into ``XGBEstimator`` / ``LightGBMEstimator`` / ``PyTorchDistributor`` with their configs, so
the wrappers and Ray Jobs build runs the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shardtrain.config import (
    FailureConfig,
    LightGBMScalingConfig,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    XGBScalingConfig,
)
from shardtrain.errors import ConfigError
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator
from shardtrain.modeling.distributors.pytorch import PyTorchDistributor
from shardtrain.modeling.distributors.xgboost import XGBEstimator

if TYPE_CHECKING:
    from shardtrain.integrations.spec import TrainingSpec

SCALING_CONFIGS: dict[str, type] = {
    "xgboost": XGBScalingConfig,
    "lightgbm": LightGBMScalingConfig,
    "pytorch": PyTorchScalingConfig,
}
ESTIMATORS: dict[str, type] = {"xgboost": XGBEstimator, "lightgbm": LightGBMEstimator}


def _construct(cls: type, values: Mapping[str, Any], what: str):
    """``cls(**values)`` with unknown keys reported as a ConfigError naming the known ones."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{what} has unknown keys {unknown}; it takes {known}.")
    return cls(**values)


def scaling_config(framework: str, value: Mapping[str, Any] | Any | None):
    """The framework's scaling config from a dict (or a config object, passed through).

    For pytorch, ``resource_requirements_per_worker`` may be a dict of
    ``WorkerResourceConfig`` fields.
    """
    cls = SCALING_CONFIGS.get(framework)
    if cls is None:
        raise ConfigError(f"framework must be one of {list(SCALING_CONFIGS)}, got {framework!r}.")
    if isinstance(value, cls):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(
            f"scaling_config must be a dict or a {cls.__name__}, got {type(value).__name__}."
        )
    values = dict(value or {})
    resources = values.get("resource_requirements_per_worker")
    if framework == "pytorch" and isinstance(resources, Mapping):
        values["resource_requirements_per_worker"] = _construct(
            WorkerResourceConfig, resources, "scaling_config['resource_requirements_per_worker']"
        )
    return _construct(cls, values, "scaling_config")


def failure_config(value: Mapping[str, Any] | FailureConfig | None) -> FailureConfig:
    """A ``FailureConfig`` from a dict (or passed through)."""
    if isinstance(value, FailureConfig):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(
            f"failure_config must be a dict or a FailureConfig, got {type(value).__name__}."
        )
    return _construct(FailureConfig, dict(value or {}), "failure_config")


def build_estimator(spec: TrainingSpec):
    """The ``XGBEstimator`` / ``LightGBMEstimator`` a boosting spec describes."""
    cls = ESTIMATORS.get(spec.framework)
    if cls is None:
        raise ConfigError(
            f"build_estimator takes xgboost or lightgbm specs, not {spec.framework!r}."
        )
    kwargs: dict[str, Any] = {}
    if spec.objective is not None:
        kwargs["objective"] = spec.objective
    return cls(
        n_estimators=spec.n_estimators,
        params=dict(spec.params),
        scaling_config=scaling_config(spec.framework, spec.scaling_config),
        failure_config=failure_config(spec.failure_config),
        **kwargs,
    )


def build_distributor(
    spec: TrainingSpec, train_func: Callable | str | None = None
) -> PyTorchDistributor:
    """The ``PyTorchDistributor`` a pytorch spec describes; ``train_func`` (a callable held
    in process) overrides the spec's dotted path."""
    if spec.framework != "pytorch":
        raise ConfigError(f"build_distributor takes pytorch specs, not {spec.framework!r}.")
    target = train_func if train_func is not None else spec.train_func
    if target is None:
        raise ConfigError(
            "the pytorch run has no train_func: give a callable or an importable dotted path "
            "('pkg.module:func')."
        )
    return PyTorchDistributor(
        resolve_callable(target),
        scaling_config=scaling_config("pytorch", spec.scaling_config),
        failure_config=failure_config(spec.failure_config),
    )


def import_object(path: str, what: str = "object") -> Any:
    """The object at an importable dotted path, ``pkg.module.name`` or ``pkg.module:name``."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"cannot import {what} {path!r}: {exc}. Give an importable dotted path "
            "('pkg.module:name') on the Python path of this process and of the Ray workers."
        ) from exc


def _findable(name: str) -> bool:
    """Whether another process could import ``name``: one of the import system's finders
    locates it. (``importlib.util.find_spec`` would also accept a module that is merely in
    ``sys.modules``, as a DAG file loaded under a generated name is.)"""
    top = name.partition(".")[0]
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        try:
            if find_spec is not None and find_spec(top, None) is not None:
                return True
        except (ImportError, ValueError, AttributeError):
            continue
    return False


def _workers_import(module: Any) -> bool:
    """Whether Ray workers import ``module`` as the driver does: it is shardtrain, or lives in
    site-packages, or under a folder on the ``PYTHONPATH`` of this process or of the Ray job's
    runtime env (judged once this process joined Ray). A folder the driver only put on its own
    ``sys.path`` does not count: an orchestrator that loads a deployed workflow file by its
    plain name, with its folder on ``sys.path``, leaves workers unable to import it."""
    import os
    import sysconfig

    if module.__name__.partition(".")[0] == "shardtrain":
        return True
    file = getattr(module, "__file__", None)
    if not file:  # built in or frozen: every interpreter has it
        return True
    import ray

    if not ray.is_initialized():  # the workers' runtime env is not known yet: trust findability
        return True
    roots = [sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")]
    roots += os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = ray.get_runtime_context().runtime_env or {}
    roots += (env.get("env_vars") or {}).get("PYTHONPATH", "").split(os.pathsep)
    roots += [env["working_dir"]] if isinstance(env.get("working_dir"), str) else []
    path = os.path.realpath(file)
    return any(r and path.startswith(os.path.realpath(r) + os.sep) for r in roots)


def resolve_callable(target: Callable | str, what: str = "train_func") -> Callable:
    """A callable, or an importable dotted path (``pkg.module.func`` or ``pkg.module:func``).

    A function from a module Ray workers cannot import (a file imported under a generated
    name, as orchestrators load DAG and flow files) is registered to be pickled by value.
    """
    if isinstance(target, str):
        target = import_object(target, what)
    if not callable(target):
        raise ConfigError(f"{what} must be callable or a dotted path, got {target!r}.")
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    if (
        module is not None
        and module.__name__ != "__main__"
        and not (_findable(module.__name__) and _workers_import(module))
    ):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    return target


def resolve_module(module: Any) -> Any:
    """The ``torch.nn.Module`` a registry needs for a state dict: a module instance as is, or
    a class / factory (or its dotted path) called with no arguments; None stays None."""
    if module is None or hasattr(module, "load_state_dict"):
        return module
    return resolve_callable(module, "module")()
