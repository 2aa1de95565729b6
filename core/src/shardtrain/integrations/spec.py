"""What a training run is, as plain JSON: the one record every orchestrator and a Ray Job hand
to ``run_training``.

A spec names data, framework arguments and where to publish; it never carries a secret.
Credentials (a Snowpark session, fsspec ``storage_options``) are runtime arguments of
``run_training``, or the *name* of a Snowflake connection known on the side that runs it.
Specs are frozen and validated on construction, so bad input fails before any worker starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from shardtrain.errors import ConfigError
from shardtrain.integrations.build import failure_config, scaling_config
from shardtrain.model.artifact import check_request_id
from shardtrain.model.frameworks import FRAMEWORKS, SPECS
from shardtrain.secrets import refuse_secrets, secret_value_kind
from shardtrain.stage.snowflake import parse_stage_uri

#: Tabular frameworks take train/eval data and columns; the others a train function.
BOOSTING = tuple(name for name in FRAMEWORKS if SPECS[name].tabular)
DATA_KINDS = ("table", "query", "path")

_DOTTED = re.compile(r"^[A-Za-z_][\w.]*[.:][A-Za-z_][\w.]*$")


def is_snowflake_stage(uri: str | None) -> bool:
    """True for a Snowflake stage location (``@DB.SCHEMA.STAGE/...``), which needs a session."""
    if not uri or not isinstance(uri, str):
        return False
    uri = uri.strip()
    return uri.startswith("@") or parse_stage_uri(uri) is not None


def _no_credentials_in_url(value: str, what: str) -> None:
    kind = secret_value_kind(value)
    if kind:
        raise ConfigError(
            f"{what} carries credentials in its URL ({kind}); a spec never holds secrets: "
            "drop the user:password@ part (or the signature) and pass storage_options (or "
            "session) to run_training, or give the cluster its credentials in its own "
            "environment, instead."
        )


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Data as plain values: exactly one of a Snowflake ``table``, a SQL ``query`` or a
    Parquet ``path``/URL."""

    table: str | None = None
    query: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in DATA_KINDS if getattr(self, k) is not None]
        for kind in given:
            value = getattr(self, kind)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"a data {kind} must be a non-empty string, got {value!r}.")
        if len(given) != 1:
            raise ConfigError(
                f"give exactly one of table, query or path for a data set, got {given or 'none'}."
            )
        if self.path is not None:
            _no_credentials_in_url(self.path, "the data path")

    @property
    def kind(self) -> str:
        """``table``, ``query`` or ``path``."""
        return next(k for k in DATA_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> str:
        return getattr(self, self.kind)

    @property
    def needs_session(self) -> bool:
        """Tables and queries are read through a Snowpark session."""
        return self.kind != "path"

    def to_dict(self) -> dict[str, str]:
        return {self.kind: self.value}

    @classmethod
    def parse(cls, value: Any, *, name: str = "training") -> DataSpec | None:
        """A spec from how users write data: a path string, ``{'table'|'query'|'path': ...}``,
        a DataSpec, or None (no data). Empty values count as not given."""
        if value is None or isinstance(value, DataSpec):
            return value
        if isinstance(value, str):
            return cls(path=value) if value.strip() else None
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(DATA_KINDS))
            if unknown:
                raise ConfigError(
                    f"the {name} data has unknown keys {unknown}: use one of table, query or path."
                )
            given = {k: v for k, v in value.items() if v}
            if not given:
                return None
            if len(given) > 1:
                raise ConfigError(
                    f"give one of table, query or path for the {name} data, not {sorted(given)}."
                )
            return cls(**given)
        raise ConfigError(
            f"the {name} data must be a Parquet path or a dict with one of table, query or "
            f"path, got {type(value).__name__}."
        )


def _plain(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (a deep copy), or ConfigError."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must hold plain JSON values only: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """One training run as plain values (see the module docstring).

    ``framework`` picks the fields that apply: ``train_data``/``eval_data``/``input_cols``/
    ``label_col``/``n_estimators``/``objective``/``params``/``verbose_eval`` for xgboost and
    lightgbm; ``train_func``/``dataset_map``/``hyper_params`` for pytorch. ``scaling_config``
    and ``failure_config`` are dicts as users write them (``resource_requirements_per_worker``
    nested as a dict for pytorch).

    Example:
        >>> spec = TrainingSpec(framework="xgboost", request_id="r1",
        ...                     train_data={"path": "data/train"}, input_cols=["A"],
        ...                     label_col="Y")
        >>> TrainingSpec.from_json(spec.to_json()) == spec
        True
    """

    framework: str
    request_id: str
    artifact_stage_location: str | None = None
    # XGBoost / LightGBM
    train_data: DataSpec | None = None
    eval_data: DataSpec | None = None
    input_cols: tuple[str, ...] = ()
    label_col: str | None = None
    n_estimators: int = 100
    objective: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    verbose_eval: int | None = 10
    # PyTorch
    train_func: str | None = None
    dataset_map: Mapping[str, DataSpec] = field(default_factory=dict)
    hyper_params: Mapping[str, Any] = field(default_factory=dict)
    # all
    scaling_config: Mapping[str, Any] = field(default_factory=dict)
    failure_config: Mapping[str, Any] = field(default_factory=dict)
    snowflake_connection: str | None = None

    def __post_init__(self) -> None:
        # Normalise what users write (lists, dicts, comma-separated columns) into the frozen
        # form, so that a spec equals its JSON round trip.
        set_ = object.__setattr__
        set_(self, "train_data", DataSpec.parse(self.train_data))
        set_(self, "eval_data", DataSpec.parse(self.eval_data, name="eval"))
        cols = self.input_cols
        if isinstance(cols, str):
            cols = [c.strip() for c in cols.split(",") if c.strip()]
        if not isinstance(cols, list | tuple):
            raise ConfigError(
                f"input_cols must be a list of column names, got {type(cols).__name__}."
            )
        set_(self, "input_cols", tuple(cols))
        if not isinstance(self.dataset_map, Mapping):
            raise ConfigError(
                "dataset_map must map names to data ({'table'|'query'|'path': ...}), got "
                f"{type(self.dataset_map).__name__}."
            )
        datasets = {}
        for name, value in self.dataset_map.items():
            parsed = DataSpec.parse(value, name=f"dataset_map[{name!r}]")
            if parsed is None:
                raise ConfigError(
                    f"dataset_map[{name!r}] names no data: give a table, query or path."
                )
            datasets[str(name)] = parsed
        set_(self, "dataset_map", datasets)
        for name in ("params", "hyper_params", "scaling_config", "failure_config"):
            given = getattr(self, name)
            if given is None:
                given = {}
            if not isinstance(given, Mapping):
                raise ConfigError(f"{name} must be a dict, got {type(given).__name__}.")
            set_(self, name, _plain(dict(given), name))
        self.validate()

    def validate(self) -> None:
        """ConfigError (saying what to change) for anything a run could not use."""
        if self.framework not in FRAMEWORKS:
            raise ConfigError(
                f"framework must be one of {list(FRAMEWORKS)}, got {self.framework!r}."
            )
        check_request_id(self.request_id)
        for name in ("artifact_stage_location", "label_col", "objective", "snowflake_connection"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{name} must be a non-empty string or None, got {value!r}.")
        if self.artifact_stage_location:
            _no_credentials_in_url(self.artifact_stage_location, "artifact_stage_location")
        for name in ("params", "hyper_params", "scaling_config", "failure_config"):
            refuse_secrets(getattr(self, name), name)
        if self.framework in BOOSTING:
            self._validate_boosting()
        else:
            self._validate_pytorch()
        # The configs check their own values; building them here fails before any worker.
        scaling_config(self.framework, self.scaling_config)
        failure_config(self.failure_config)

    def _validate_boosting(self) -> None:
        wrong = [n for n in ("train_func", "dataset_map", "hyper_params") if getattr(self, n)]
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)} apply to pytorch runs only; a {self.framework} run takes "
                "train_data, eval_data, input_cols, label_col and params."
            )
        if not self.input_cols or not all(isinstance(c, str) and c for c in self.input_cols):
            raise ConfigError(
                f"input_cols must be a non-empty list of column names, got {list(self.input_cols)}."
            )
        if self.label_col is None:
            raise ConfigError(f"a {self.framework} run needs label_col (the label column).")
        n = self.n_estimators
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n_estimators must be an integer >= 1, got {n!r}.")
        v = self.verbose_eval
        if v is not None and (not isinstance(v, int) or (not isinstance(v, bool) and v < 0)):
            raise ConfigError(f"verbose_eval must be an integer >= 0, True or None, got {v!r}.")

    def _validate_pytorch(self) -> None:
        boosting = ("train_data", "eval_data", "input_cols", "label_col", "objective", "params")
        wrong = [n for n in boosting if getattr(self, n)]
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)} apply to xgboost and lightgbm runs; a pytorch run takes "
                "train_func, dataset_map and hyper_params."
            )
        if self.train_func is not None and (
            not isinstance(self.train_func, str) or not _DOTTED.match(self.train_func)
        ):
            raise ConfigError(
                f"train_func must be an importable dotted path ('pkg.module:func' or "
                f"'pkg.module.func'), got {self.train_func!r}."
            )

    def check_complete(self) -> None:
        """ConfigError unless the spec itself names everything a run needs (its training data,
        or a pytorch run's train_func): for callers that ship a spec to another process, where
        no in-process callable or connector can join it."""
        if self.framework in BOOSTING and self.train_data is None:
            raise ConfigError(
                f"the {self.framework} run names no training data: set train_data to a "
                "table, query or path."
            )
        if self.framework == "pytorch" and self.train_func is None:
            raise ConfigError(
                "the pytorch run names no train_func: set it to an importable dotted path "
                "('pkg.module:func')."
            )

    @property
    def data(self) -> dict[str, DataSpec]:
        """Every data set of the run by name (``train``/``eval``, or dataset_map's names)."""
        if self.framework == "pytorch":
            return dict(self.dataset_map)
        named = {"train": self.train_data, "eval": self.eval_data}
        return {k: v for k, v in named.items() if v is not None}

    @property
    def needs_session(self) -> bool:
        """True when a table, a query or a Snowflake stage is involved."""
        return any(d.needs_session for d in self.data.values()) or is_snowflake_stage(
            self.artifact_stage_location
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``from_dict`` gives back an equal spec."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, DataSpec):
                value = value.to_dict()
            elif f.name == "dataset_map":
                value = {k: v.to_dict() for k, v in value.items()}
            elif f.name == "input_cols":
                value = list(value)
            elif isinstance(value, dict):
                value = _plain(value, f.name)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSpec:
        """The inverse of ``to_dict``; unknown keys are refused (a typo must not vanish)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training spec must be a dict, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training spec keys {unknown}; known keys: {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"a training spec must be JSON: {exc}") from exc
        return cls.from_dict(data)
