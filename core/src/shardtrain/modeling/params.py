"""Training parameters a framework does not know, named once on the driver.

XGBoost and LightGBM accept unknown parameters and only warn about them inside the Ray
workers, where nobody reads it; a typo (``maxdepth``) then trains with the default silently.
``warn_unknown_params`` logs one warning on the driver (logger ``shardtrain``) naming the
unknown keys and the closest known name of each. It is a warning, not an error: the libraries
train with them.

The known names come from the installed library where it has them: LightGBM's own parameter
and alias table. XGBoost has no public list, so a list kept here for XGBoost 3.2 comes first,
and a key outside it is named only if XGBoost itself does not use it either: a tiny booster
configured on an empty matrix on the driver reports its unused parameters (a few
milliseconds, and only when some key is outside the list), so a parameter newer than the list
is not called unknown.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("shardtrain")

#: XGBoost 3.2's parameters and their aliases (https://xgboost.readthedocs.io/en/release_3.2.0/
#: parameter.html): general and context, tree booster, dart, gblinear, learning task.
XGBOOST_PARAMS = frozenset(
    {
        "booster", "device", "verbosity", "validate_parameters", "nthread", "n_jobs",
        "disable_default_eval_metric", "num_feature", "use_rmm", "debug_synchronize",
        "fail_on_invalid_gpu_id",
        "eta", "learning_rate", "gamma", "min_split_loss", "max_depth", "min_child_weight",
        "max_delta_step", "subsample", "sampling_method", "colsample_bytree",
        "colsample_bylevel", "colsample_bynode", "lambda", "reg_lambda", "alpha", "reg_alpha",
        "tree_method", "scale_pos_weight", "updater", "refresh_leaf", "process_type",
        "grow_policy", "max_leaves", "max_bin", "num_parallel_tree", "monotone_constraints",
        "interaction_constraints", "multi_strategy", "max_cached_hist_node",
        "max_cat_to_onehot", "max_cat_threshold", "extmem_single_page", "cache_host_ratio",
        "sample_type", "normalize_type", "rate_drop", "one_drop", "skip_drop",
        "feature_selector", "top_k",
        "objective", "base_score", "eval_metric", "seed", "random_state", "seed_per_iteration",
        "num_class", "tweedie_variance_power", "huber_slope", "quantile_alpha",
        "aft_loss_distribution", "aft_loss_distribution_scale", "lambdarank_pair_method",
        "lambdarank_num_pair_per_sample", "lambdarank_normalization",
        "lambdarank_score_normalization", "lambdarank_unbiased", "lambdarank_bias_norm",
        "ndcg_exp_gain",
    }
)  # fmt: skip

#: Keys the estimators take out of ``params`` themselves (rounds, early stopping).
ESTIMATOR_KEYS = {
    "xgboost": frozenset({"n_estimators", "num_boost_round", "early_stopping_rounds"}),
    "lightgbm": frozenset({"n_estimators", "num_boost_round", "early_stopping_rounds"}),
}

#: How close a known name must be to be suggested (``difflib``'s ratio).
SUGGEST_CUTOFF = 0.6

_UNUSED = re.compile(r"Parameters: \{(.*?)\} are not used", re.S)


@functools.cache
def lightgbm_params() -> frozenset[str]:
    """Every parameter name and alias the installed LightGBM knows (its own table)."""
    from lightgbm.basic import _ConfigAliases

    table = _ConfigAliases._get_all_param_aliases()
    return frozenset(table) | frozenset(a for aliases in table.values() for a in aliases)


def known_params(framework: str) -> frozenset[str] | None:
    """The parameter names (aliases included) ``framework`` knows; None for one without
    a parameter dict (PyTorch)."""
    if framework == "xgboost":
        return XGBOOST_PARAMS | ESTIMATOR_KEYS["xgboost"]
    if framework == "lightgbm":
        return lightgbm_params() | ESTIMATOR_KEYS["lightgbm"]
    return None


def xgboost_unused(params: Mapping[str, Any]) -> set[str] | None:
    """The keys XGBoost itself reports as not used, from a booster configured on a one-row
    matrix on the driver; None when it cannot tell (a value it rejects, no xgboost)."""
    try:
        import numpy as np
        import xgboost

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            matrix = xgboost.DMatrix(np.zeros((1, 1), dtype=np.float32), label=np.zeros(1))
            probe = {**params, "nthread": 1, "verbosity": 1, "device": "cpu"}
            xgboost.Booster(probe, [matrix]).save_config()  # configures: checks the params
    except Exception:  # noqa: BLE001 - a probe: any failure means "cannot tell"
        return None
    unused: set[str] = set()
    for warning in caught:
        for match in _UNUSED.finditer(str(warning.message)):
            unused |= {name.strip().strip('"') for name in match.group(1).split(",")}
    return unused


def unknown_params(framework: str, params: Mapping[str, Any]) -> dict[str, str | None]:
    """The keys of ``params`` that ``framework`` does not know, each with the closest known
    name (None when none is close)."""
    known = known_params(framework)
    if known is None:
        return {}
    unknown = [str(key) for key in params if str(key) not in known]
    if unknown and framework == "xgboost":
        unused = xgboost_unused(params)
        if unused is not None:
            unknown = [key for key in unknown if key in unused]
    return {key: _closest(key, known) for key in unknown}


def _closest(key: str, known: frozenset[str]) -> str | None:
    """The known name most like ``key`` (case ignored), if any is close enough."""
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=SUGGEST_CUTOFF)
    return by_lower[close[0]] if close else None


def warn_unknown_params(framework: str, params: Mapping[str, Any]) -> dict[str, str | None]:
    """Log one warning naming the parameters ``framework`` does not know (with the closest
    known name of each); returns them, empty when all are known."""
    unknown = unknown_params(framework, params)
    if unknown:
        named = ", ".join(
            f"{key!r} (did you mean {close!r}?)" if close else repr(key)
            for key, close in unknown.items()
        )
        logger.warning(
            "%s does not know the training parameter%s %s: it trains without %s (each "
            "worker's log says so too).",
            framework,
            "s" if len(unknown) > 1 else "",
            named,
            "them" if len(unknown) > 1 else "it",
        )
    return unknown
