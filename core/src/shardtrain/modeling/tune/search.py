"""Search algorithms, with the vendor's names (``shardtrain.modeling.tune.search``):
``RandomSearch``, ``GridSearch`` and ``BayesOpt``, each mapped onto a maintained Ray Tune
searcher rather than a scheduler of our own.

- ``RandomSearch(random_state)``: Ray Tune's ``BasicVariantGenerator`` drawing from the space
  (lists are choices); a seed makes the draws repeatable.
- ``GridSearch()``: every combination of the space's lists, each once (``num_trials`` is
  ignored, as the vendor documents); sampling functions are refused, since a grid cannot
  enumerate them.
- ``BayesOpt(utility_kwargs, random_state)``: model-based search with Optuna's TPE sampler
  through Ray Tune's ``OptunaSearch`` (the optional extra ``shardtrain[tune]``). Each new
  trial is proposed from the results reported so far. Unlike the vendor's Gaussian-process
  ``BayesOpt``, it also handles ``randint``, ``choice`` and lists; ``utility_kwargs`` (the
  GP acquisition settings) are accepted for compatibility and have no effect.

The sampling functions are importable from here too, as some vendor programs do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shardtrain.errors import ConfigError, SearchSpaceError
from shardtrain.model.frameworks import require_module
from shardtrain.modeling.tune.search_space import (
    choice,
    grid_size,
    loguniform,
    randint,
    sampled,
    to_ray,
    uniform,
)

logger = logging.getLogger("shardtrain")

# The extra that installs Optuna, named by MissingDependencyError.


class SearchAlgorithm:
    """Base class: how the trials' hyperparameters are chosen."""

    name = "search"

    def check(self, space: dict[str, Any]) -> None:
        """Refuse a space this algorithm cannot search (before any trial starts)."""

    def plan(
        self, space: dict[str, Any], num_trials: int, metric: str, mode: str, concurrency: int
    ) -> tuple[dict[str, Any], Any, int]:
        """(Ray Tune param_space, Ray Tune searcher, number of samples); at most
        ``concurrency`` trials run at once."""
        raise NotImplementedError


@dataclass
class RandomSearch(SearchAlgorithm):
    """Random search: each trial draws every hyperparameter independently.

    Attributes:
        random_state: a seed for repeatable draws (None: a fresh draw each run).
    """

    random_state: int | None = None
    name = "random"

    def plan(self, space, num_trials, metric, mode, concurrency):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return (
            to_ray(space, grid=False),
            BasicVariantGenerator(random_state=self.random_state, max_concurrent=concurrency),
            num_trials,
        )


@dataclass
class GridSearch(SearchAlgorithm):
    """Grid search: every combination of the lists in the space, each evaluated once."""

    name = "grid"

    def check(self, space):
        drawn = sampled(space)
        if drawn:
            raise SearchSpaceError(
                f"GridSearch enumerates lists, but {drawn} are sampling functions (uniform, "
                "loguniform, randint, choice) that a grid cannot enumerate: give them as lists "
                "of values, or use RandomSearch / BayesOpt.",
                param=drawn[0],
            )

    def plan(self, space, num_trials, metric, mode, concurrency):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        if num_trials not in (None, 1, grid_size(space)):
            logger.info(
                "GridSearch evaluates each of the %d combinations once; num_trials=%s is ignored.",
                grid_size(space),
                num_trials,
            )
        return to_ray(space, grid=True), BasicVariantGenerator(max_concurrent=concurrency), 1


@dataclass
class BayesOpt(SearchAlgorithm):
    """Model-based search (Optuna's TPE through Ray Tune's ``OptunaSearch``).

    Attributes:
        utility_kwargs: the vendor's acquisition settings; accepted, without effect here.
        random_state: a seed for Optuna's sampler.
    """

    utility_kwargs: dict[str, Any] | None = None
    random_state: int | None = None
    name = "bayesopt"

    def check(self, space):
        require_module("optuna", "BayesOpt (model-based search)")
        if not any(not isinstance(v, str | bool | int | float) for v in space.values()):
            raise SearchSpaceError(
                "BayesOpt needs at least one hyperparameter to search (a sampling function or "
                "a list); every value in the search space is a constant.",
                param=None,
            )

    def plan(self, space, num_trials, metric, mode, concurrency):
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(
            metric=metric,
            mode=mode,
            sampler=optuna.samplers.TPESampler(
                seed=self.random_state, n_startup_trials=min(5, max(1, num_trials // 3))
            ),
        )
        return to_ray(space, grid=False), ConcurrencyLimiter(searcher, concurrency), num_trials


__all__ = [
    "BayesOpt",
    "GridSearch",
    "RandomSearch",
    "SearchAlgorithm",
    "choice",
    "loguniform",
    "randint",
    "uniform",
]


#: ``search_alg`` by name, for callers that keep arguments plain (DAGs, flow parameters).
SEARCH_ALGS: dict[str, type[SearchAlgorithm]] = {
    "random": RandomSearch,
    "grid": GridSearch,
    "bayesopt": BayesOpt,
}


def search_algorithm(value: Any) -> SearchAlgorithm:
    """A ``SearchAlgorithm``, or one by name ('random', 'grid', 'bayesopt'); None: random."""
    if value is None:
        return RandomSearch()
    if isinstance(value, SearchAlgorithm):
        return value
    if isinstance(value, str) and value.lower() in SEARCH_ALGS:
        return SEARCH_ALGS[value.lower()]()
    raise ConfigError(
        f"search_alg must be one of {sorted(SEARCH_ALGS)} or a RandomSearch / GridSearch / "
        f"BayesOpt object, got {value!r}.",
        field="search_alg",
    )
