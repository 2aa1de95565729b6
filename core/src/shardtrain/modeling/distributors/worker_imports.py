"""Importing xgboost or lightgbm in a Ray worker without scikit-learn.

Both frameworks import scikit-learn at import time whenever it is installed, only to build
their scikit-learn wrapper classes (``xgboost.compat``, ``lightgbm.compat``): ~1.1 s and
~100 MiB of every new worker process here (scikit-learn pulls in pandas and more). A rank
uses the native API only, so inside a Ray worker process the framework is imported with
scikit-learn hidden (``sys.modules["sklearn"] = None``), and the guard is removed at once:
a later ``import sklearn`` in that process, by the user's callback for instance, works.

What it costs, in the worker processes only (never the driver): the framework keeps
believing scikit-learn is absent for the life of the process, so its scikit-learn classes
(``xgboost.XGBRegressor`` and friends, ``lightgbm.LGBMRegressor``...) refuse to be built
there ("sklearn needs to be installed"), and ``xgboost.cv(stratified=True)`` /
``lightgbm.cv(stratified=True)`` refuse too. Code running in a rank (callbacks) should use
the native API, as the ranks do. A worker process that already imported scikit-learn (a
Ray ``worker_process_setup_hook`` that does so opts out) imports the framework as usual.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

#: What the frameworks import only for their scikit-learn wrappers.
HIDDEN = "sklearn"


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker (an actor or task process), not a driver."""
    ray = sys.modules.get("ray")
    # A worker process is always connected; asking a process that is not for its runtime
    # context would start a local Ray in it.
    if ray is None or not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - no Ray context: not a worker
        return False


def import_framework(name: str) -> ModuleType:
    """``import name``; in a Ray worker that has not imported scikit-learn, without it."""
    if name in sys.modules or HIDDEN in sys.modules or not in_ray_worker():
        return importlib.import_module(name)
    sys.modules[HIDDEN] = None  # type: ignore[assignment]  # None makes `import sklearn` fail
    try:
        return importlib.import_module(name)
    finally:
        if HIDDEN in sys.modules and sys.modules[HIDDEN] is None:
            del sys.modules[HIDDEN]
