"""Search spaces: the vendor's sampling functions (``uniform``, ``loguniform``, ``randint``,
``choice``), lists and single values, checked before any trial starts and translated to
Ray Tune's domains for the search algorithm that will sample them.

Each sampling function is a small frozen dataclass, so a space prints, compares and pickles
as what it is; the translation to Ray Tune happens in one place (``to_ray``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shardtrain.errors import SearchSpaceError

#: What a single value or a list item may be.
SCALARS = (bool, int, float, str)


class SamplingFunction:
    """Base of the sampling functions: how one hyperparameter is drawn."""

    def check(self, name: str) -> None:  # pragma: no cover - each subclass checks itself
        raise NotImplementedError


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Uniform(SamplingFunction):
    """A float drawn uniformly from ``[lower, upper]``."""

    lower: float
    upper: float

    def check(self, name: str) -> None:
        if not (_number(self.lower) and _number(self.upper)) or self.lower >= self.upper:
            raise SearchSpaceError(
                f"search_space[{name!r}] = uniform({self.lower!r}, {self.upper!r}): lower and "
                "upper must be finite numbers with lower < upper.",
                param=name,
            )


@dataclass(frozen=True)
class LogUniform(SamplingFunction):
    """A float drawn uniformly in log space from ``[lower, upper]`` (both > 0)."""

    lower: float
    upper: float

    def check(self, name: str) -> None:
        if (
            not (_number(self.lower) and _number(self.upper))
            or self.lower <= 0
            or self.lower >= self.upper
        ):
            raise SearchSpaceError(
                f"search_space[{name!r}] = loguniform({self.lower!r}, {self.upper!r}): lower and "
                "upper must be finite numbers with 0 < lower < upper.",
                param=name,
            )


@dataclass(frozen=True)
class RandInt(SamplingFunction):
    """An integer drawn uniformly from ``[lower, upper)`` (upper excluded)."""

    lower: int
    upper: int

    def check(self, name: str) -> None:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.lower, self.upper))
        if not ints or self.lower >= self.upper:
            raise SearchSpaceError(
                f"search_space[{name!r}] = randint({self.lower!r}, {self.upper!r}): lower and "
                "upper must be integers with lower < upper (upper is excluded).",
                param=name,
            )


@dataclass(frozen=True)
class Choice(SamplingFunction):
    """One of ``options``, drawn uniformly."""

    options: tuple

    def check(self, name: str) -> None:
        _check_options(name, list(self.options), "choice(...)")


def uniform(lower: float, upper: float) -> Uniform:
    """Sample a float uniformly between ``lower`` and ``upper``."""
    return Uniform(lower, upper)


def loguniform(lower: float, upper: float) -> LogUniform:
    """Sample a float uniformly in log space between ``lower`` and ``upper`` (> 0)."""
    return LogUniform(lower, upper)


def randint(lower: int, upper: int) -> RandInt:
    """Sample an integer uniformly from ``lower`` (inclusive) to ``upper`` (exclusive)."""
    return RandInt(lower, upper)


def choice(options: list) -> Choice:
    """Sample one of ``options`` uniformly."""
    if isinstance(options, str) or not hasattr(options, "__iter__"):
        raise SearchSpaceError(f"choice() takes a list of options, got {options!r}.", param=None)
    return Choice(tuple(options))


def _check_options(name: str, options: list, what: str) -> None:
    if not options:
        raise SearchSpaceError(
            f"search_space[{name!r}] = {what} has no options: give at least one value.",
            param=name,
        )
    bad = [v for v in options if not isinstance(v, SCALARS)]
    if bad:
        raise SearchSpaceError(
            f"search_space[{name!r}] = {what}: options must be numbers, strings or booleans, "
            f"got {bad[0]!r} ({type(bad[0]).__name__}).",
            param=name,
        )


def check_search_space(space: Any) -> dict[str, Any]:
    """The space as a plain dict, each value checked: a sampling function, a non-empty list
    of numbers / strings / booleans, or a single such value."""
    if not isinstance(space, dict) or not space:
        raise SearchSpaceError(
            "search_space must be a non-empty dict of hyperparameter name -> uniform(...), "
            f"loguniform(...), randint(...), choice([...]), a list, or a single value; got "
            f"{space!r}.",
            param=None,
        )
    for name, value in space.items():
        if not isinstance(name, str) or not name:
            raise SearchSpaceError(
                f"search_space keys must be hyperparameter names (str), got {name!r}.", param=name
            )
        if isinstance(value, SamplingFunction):
            value.check(name)
        elif isinstance(value, list | tuple):
            _check_options(name, list(value), "[...]")
        elif not isinstance(value, SCALARS) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise SearchSpaceError(
                f"search_space[{name!r}] = {value!r} ({type(value).__name__}) is not a search "
                "definition: use uniform, loguniform, randint, choice, a list or a single "
                "number / string / boolean.",
                param=name,
            )
    return dict(space)


def sampled(space: dict[str, Any]) -> list[str]:
    """Names of the hyperparameters drawn by a sampling function (not lists or constants)."""
    return [k for k, v in space.items() if isinstance(v, SamplingFunction)]


def grid_size(space: dict[str, Any]) -> int:
    """How many combinations a grid over the space's lists has."""
    size = 1
    for value in space.values():
        if isinstance(value, list | tuple):
            size *= len(value)
    return size


def to_ray(space: dict[str, Any], *, grid: bool) -> dict[str, Any]:
    """The space as Ray Tune's ``param_space``: lists become a grid (``grid``) or a choice."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, value in space.items():
        if isinstance(value, Uniform):
            out[name] = tune.uniform(value.lower, value.upper)
        elif isinstance(value, LogUniform):
            out[name] = tune.loguniform(value.lower, value.upper)
        elif isinstance(value, RandInt):
            out[name] = tune.randint(value.lower, value.upper)
        elif isinstance(value, Choice):
            out[name] = tune.choice(list(value.options))
        elif isinstance(value, list | tuple):
            out[name] = tune.grid_search(list(value)) if grid else tune.choice(list(value))
        else:
            out[name] = value
    return out


__all__ = [
    "Choice",
    "LogUniform",
    "RandInt",
    "SamplingFunction",
    "Uniform",
    "check_search_space",
    "choice",
    "loguniform",
    "randint",
    "uniform",
]
