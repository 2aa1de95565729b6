"""Callbacks for test_gbdt_perf, in a module of their own: a rank unpickling a callback imports
the module that defines it, and this one imports nothing but xgboost (a test module's
imports, lightgbm's for one, would bring scikit-learn into the rank and spoil what is
measured)."""

from __future__ import annotations

import importlib
import json
import sys

import xgboost as xgb


class RecordImports(xgb.callback.TrainingCallback):
    """At the first round, writes what this rank's process had imported, and whether
    scikit-learn imports there afterwards, to ``<folder>/rank-<rank>.json``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def after_iteration(self, model, epoch, evals_log) -> bool:
        if epoch == 0:
            import xgboost.collective as collective
            import xgboost.compat

            seen = {
                "sklearn_before": "sklearn" in sys.modules,
                "xgboost_saw_sklearn": bool(xgboost.compat.SKLEARN_INSTALLED),
            }
            importlib.import_module("sklearn.linear_model")  # the user's own import works
            seen["sklearn_after"] = "sklearn" in sys.modules
            with open(f"{self.folder}/rank-{collective.get_rank()}.json", "w") as handle:
                json.dump(seen, handle)
        return False
