"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_unknown_params.py.]

Unknown training parameters are named once on the driver, with the closest known name
(XGBoost and LightGBM only warn inside the workers, in logs nobody reads)."""

from __future__ import annotations

import logging

from shardtrain.modeling import params as known
from shardtrain.modeling.params import unknown_params, warn_unknown_params


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shardtrain"]


def test_xgboost_typos_are_named_once_with_the_closest_name(caplog):
    caplog.set_level(logging.WARNING, logger="shardtrain")
    params = {
        "maxdepth": 3,
        "learnin_rate": 0.1,
        "zzz_unrelated": 1,
        "eta": 0.3,
        "reg_lambda": 1.0,  # an alias
        "objective": "reg:squarederror",
        "nthread": 2,
        "early_stopping_rounds": 5,  # the estimator's own
    }
    assert warn_unknown_params("xgboost", params) == {
        "maxdepth": "max_depth",
        "learnin_rate": "learning_rate",
        "zzz_unrelated": None,
    }
    [message] = warnings_of(caplog)
    assert message.startswith("xgboost does not know the training parameters 'maxdepth' (did")
    assert "'learnin_rate' (did you mean 'learning_rate'?), 'zzz_unrelated':" in message


def test_known_params_log_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="shardtrain")
    assert warn_unknown_params("xgboost", {"max_depth": 6, "eta": 0.1, "alpha": 0}) == {}
    assert warn_unknown_params("lightgbm", {"num_leaves": 31, "verbose": -1}) == {}
    assert warn_unknown_params("pytorch", {"lr": 0.1}) == {}  # no parameter dict to check
    assert warnings_of(caplog) == []


def test_xgboost_itself_decides_for_a_name_outside_the_list(monkeypatch):
    """A parameter newer than the kept list is not called unknown: XGBoost uses it."""
    monkeypatch.setattr(known, "XGBOOST_PARAMS", known.XGBOOST_PARAMS - {"max_depth"})
    assert set(unknown_params("xgboost", {"max_depth": 3, "maxdepth": 3})) == {"maxdepth"}
    # a value XGBoost rejects: it cannot tell, so the list decides
    assert set(unknown_params("xgboost", {"max_depth": 3, "objective": "no:such"})) == {"max_depth"}


def test_lightgbm_names_come_from_lightgbm_itself(caplog):
    from lightgbm.basic import _ConfigAliases

    table = _ConfigAliases._get_all_param_aliases()
    every_name = {a: 1 for aliases in table.values() for a in aliases} | dict.fromkeys(table, 1)
    assert len(every_name) > 200 and unknown_params("lightgbm", every_name) == {}
    caplog.set_level(logging.WARNING, logger="shardtrain")
    assert warn_unknown_params(
        "lightgbm", {"num_leafs": 7, "min_data_in_leafs": 5, "n_jobs": 2, "bagging_freq": 1}
    ) == {"num_leafs": "num_leaf", "min_data_in_leafs": "min_data_in_leaf"}
    [message] = warnings_of(caplog)
    assert "lightgbm does not know the training parameters 'num_leafs'" in message
