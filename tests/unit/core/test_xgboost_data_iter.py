"""The XGBoost rank's DataIter: a shard that fits the cache budget is read from its source
once, a bigger one is streamed on every pass, and both build the same QuantileDMatrix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from shardtrain import DataConnector
from shardtrain.data import numeric
from shardtrain.modeling.distributors.xgboost_worker import ArrowIter as _ArrowIter

COLUMNS = [f"f{i}" for i in range(4)]


@pytest.fixture
def connector():
    rng = np.random.default_rng(0)
    table = pa.table({c: rng.standard_normal(5000, dtype=np.float32) for c in COLUMNS + ["y"]})
    return DataConnector.from_arrow(table)


@pytest.fixture
def source_reads(monkeypatch):
    reads = []
    original = numeric.matrix_batches

    def counting(*args, **kwargs):
        reads.append(1)
        yield from original(*args, batch_rows=1024)  # several batches per pass

    monkeypatch.setattr(numeric, "matrix_batches", counting)
    return reads


def _matrix(connector, cache_bytes):
    return xgb.QuantileDMatrix(_ArrowIter(connector, COLUMNS, "y", cache_bytes), nthread=1)


def test_a_shard_within_the_budget_is_read_once_and_one_over_it_on_every_pass(
    connector, source_reads
):
    cached = _matrix(connector, cache_bytes=2**30)
    assert len(source_reads) == 1
    source_reads.clear()
    streamed = _matrix(connector, cache_bytes=50_000)  # ~100 KB shard: over budget mid-pass
    assert len(source_reads) >= 2
    assert cached.num_row() == streamed.num_row() == 5000
    for a, b in zip(cached.get_quantile_cut(), streamed.get_quantile_cut(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cached.get_label(), streamed.get_label())
