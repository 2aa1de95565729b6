"""Hyperparameter tuning with the vendor's API (``snowflake.ml.modeling.tune``), on Ray Tune.

``Tuner(train_func, search_space, TunerConfig(...)).run(dataset_map=...)``; inside a trial,
``get_tuner_context()``. Search algorithms are in ``shardtrain.modeling.tune.search``.
"""

from shardtrain.modeling.tune import search
from shardtrain.modeling.tune.context import TunerContext, get_tuner_context
from shardtrain.modeling.tune.search import BayesOpt, GridSearch, RandomSearch
from shardtrain.modeling.tune.search_space import (
    SamplingFunction,
    choice,
    loguniform,
    randint,
    uniform,
)
from shardtrain.modeling.tune.tuner import TRIALS_FILE, Tuner, TunerConfig, TunerResults

__all__ = [
    "TRIALS_FILE",
    "BayesOpt",
    "GridSearch",
    "RandomSearch",
    "SamplingFunction",
    "Tuner",
    "TunerConfig",
    "TunerContext",
    "TunerResults",
    "choice",
    "get_tuner_context",
    "loguniform",
    "randint",
    "search",
    "uniform",
]
