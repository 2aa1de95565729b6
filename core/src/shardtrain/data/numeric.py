"""Numeric columns for the trainers: the checks made before any worker starts, and Arrow
batches turned into float32 numpy (features matrix, label) on the workers, without pandas."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from shardtrain.data.source import check_unique_columns
from shardtrain.errors import EmptyDataError, SchemaError, missing_columns_error

if TYPE_CHECKING:
    from shardtrain.data.data_connector import DataConnector

#: Rows per batch fed to XGBoost's DataIter / LightGBM's Dataset construction.
TRAIN_BATCH_ROWS = 262_144


def is_numeric(kind: pa.DataType) -> bool:
    """Whether a column of this Arrow type can become a number (ints, floats, bools, decimals)."""
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    )


def check_training_columns(
    connector: DataConnector, input_cols: Sequence[str], label_col: str | None, name: str
) -> dict[str, str]:
    """Refuse bad column choices before any worker starts; returns {column: Arrow type}."""
    if isinstance(input_cols, str) or not input_cols:
        raise SchemaError(
            f"input_cols must be a non-empty list of column names, got {input_cols!r}.",
            column=None,
            available=connector.columns,
        )
    input_cols = list(input_cols)
    check_unique_columns(input_cols)
    wanted = input_cols + ([label_col] if label_col is not None else [])
    missing = [c for c in wanted if c not in connector.columns]
    if missing:
        raise missing_columns_error(missing, connector.columns)
    if label_col is not None and label_col in input_cols:
        raise SchemaError(
            f"the label column {label_col!r} is also in input_cols; a model "
            "cannot learn from its own label. Remove it from input_cols.",
            column=label_col,
            available=connector.columns,
        )
    for column in wanted:
        kind = connector.schema.field(column).type
        if not is_numeric(kind):
            raise SchemaError(
                f"column {column!r} of the {name} data has type {kind}; the trainers take "
                "numeric columns only (encode categories and cast decimals first).",
                column=column,
                available=connector.columns,
            )
    if connector.num_rows == 0:
        raise EmptyDataError(f"the {name} data has no rows.", num_rows=0)
    return {c: str(connector.schema.field(c).type) for c in input_cols}


#: What an objective accepts as labels: ``(kind, num_class)``; kind is one of "any",
#: "binary" ({0, 1}), "unit" ([0, 1]), "class" (integers 0..num_class-1), "nonnegative",
#: "positive". Every kind refuses NaN and infinities.
LabelRule = tuple[str, int]

_RULE_TEXT = {
    "binary": "0 or 1",
    "unit": "between 0 and 1",
    "class": "class indexes 0..{n}",
    "nonnegative": ">= 0",
    "positive": "> 0",
}


def check_labels(label: np.ndarray, label_col: str, rule: LabelRule, objective: str) -> None:
    """Refuse labels the objective cannot learn from (and any non-finite one), naming the
    column, the bad values and the worker's rank."""
    from shardtrain.runtime.worker_context import current_worker

    kind, num_class = rule
    ok = np.isfinite(label)
    if kind == "binary":
        ok &= (label == 0) | (label == 1)
    elif kind == "unit":
        ok &= (label >= 0) & (label <= 1)
    elif kind == "class" and num_class > 0:  # without num_class the framework says so
        ok &= (label >= 0) & (label < num_class) & (label == np.floor(label))
    elif kind == "nonnegative":
        ok &= label >= 0
    elif kind == "positive":
        ok &= label > 0
    if ok.all():
        return
    bad = label[~ok]
    worker = current_worker()
    where = f" on rank {worker.rank}" if worker is not None else ""
    wanted = _RULE_TEXT.get(kind, "finite").format(n=num_class - 1)
    raise SchemaError(
        f"the label column {label_col!r} has {len(bad)} value(s){where} that objective "
        f"{objective!r} cannot use (it takes finite labels, {wanted}): "
        f"{sorted(set(bad.tolist()))[:5]}. Fix or drop those rows, or choose the objective "
        "that fits the labels.",
        column=label_col,
        values=sorted(set(bad.tolist()))[:5],
        rank=worker.rank if worker is not None else None,
    )


def matrix_batches(
    connector: DataConnector,
    input_cols: list[str],
    label_col: str | None,
    batch_rows: int | None = TRAIN_BATCH_ROWS,
    label_rule: LabelRule | None = None,
    objective: str = "",
    arrow: bool = False,
) -> Iterator[tuple[np.ndarray | pa.Table, np.ndarray | None]]:
    """(features, label float32 [n]) per batch, straight from Arrow; labels checked against
    ``label_rule`` when given. Features are a float32 numpy matrix [n, k], or with ``arrow``
    a table of the batch's own feature columns (no copy: what the trainers read as columns;
    only columns that are not float32/float64 are cast, see ``feature_column``)."""
    columns = input_cols + ([label_col] if label_col is not None else [])
    for batch in connector.iter_batches(batch_rows, columns=columns):
        if arrow:
            features = pa.Table.from_arrays(
                [feature_column(batch.column(c)) for c in input_cols], names=list(input_cols)
            )
        else:
            features = np.empty((batch.num_rows, len(input_cols)), dtype=np.float32)
            for j, column in enumerate(input_cols):
                features[:, j] = to_numpy(batch.column(column))
        label: np.ndarray | None = None
        if label_col is not None:
            array = batch.column(label_col)
            if array.null_count:
                raise SchemaError(
                    f"the label column {label_col!r} has {array.null_count} null value(s) in "
                    "this shard; drop or fill those rows before training.",
                    column=label_col,
                    available=connector.columns,
                )
            label = to_numpy(array).astype(np.float32, copy=False)
            if label_rule is not None:
                check_labels(label, label_col, label_rule, objective)
        yield features, label


def shard_table(
    connector: DataConnector,
    input_cols: list[str],
    label_col: str | None,
    label_rule: LabelRule | None = None,
    objective: str = "",
) -> tuple[pa.Table, np.ndarray]:
    """A whole shard as one Arrow table of its feature columns (the batches as read, chunked,
    not copied into a matrix) and a float32 label."""
    features: list[pa.Table] = []
    labels: list[np.ndarray] = []
    batches = matrix_batches(
        connector, input_cols, label_col, label_rule=label_rule, objective=objective, arrow=True
    )
    for x, y in batches:
        features.append(x)
        if y is not None:  # always, with a label column
            labels.append(y)
    if not features:
        empty = [pa.array([], pa.float32()) for _ in input_cols]
        return pa.Table.from_arrays(empty, names=list(input_cols)), np.empty((0,), np.float32)
    return pa.concat_tables(features), np.concatenate(labels)


def feature_column(array: pa.Array) -> pa.Array:
    """One feature column as the trainers read Arrow: float32/float64 as they are (zero
    copy); other numeric types (ints, bools, decimals, float16) cast to float32, as the
    numpy path turns them, so a model's feature types do not depend on the storage type."""
    if pa.types.is_float32(array.type) or pa.types.is_float64(array.type):
        return array
    if pa.types.is_decimal(array.type):
        array = array.cast(pa.float64())
    return array.cast(pa.float32())


def to_numpy(array: pa.Array) -> np.ndarray:
    """One Arrow column as numpy (decimals and bools as float64; nulls as NaN)."""
    if pa.types.is_decimal(array.type) or pa.types.is_boolean(array.type):
        array = array.cast(pa.float64())
    return array.to_numpy(zero_copy_only=False)
