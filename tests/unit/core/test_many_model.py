"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_many_model.py.]

Many-model training on real Ray: a failing partition leaves the others published, a rerun
trains only what failed, a run restores in a fresh process, vendor programs run with the import
prefix changed, and bad input is refused before any task starts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardtrain.errors import EmptyDataError, SchemaError
from shardtrain.modeling.distributors.many_model import (
    plan_partitions,
)
from shardtrain.stage import open_stage

xgboost = pytest.importorskip("xgboost")


def stores(partitions: int = 10, rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    store = np.repeat(np.arange(partitions), rows)
    x1, x2 = rng.normal(size=store.size), rng.normal(size=store.size)
    return pd.DataFrame({"store": store, "x1": x1, "x2": x2, "y": x1 * (store + 1) + x2})


def test_missing_partition_column_is_refused_before_work(tmp_path):
    with pytest.raises(SchemaError, match="region"):
        plan_partitions(stores(2, 5), "region")


def test_null_partition_values_are_refused(tmp_path):
    frame = stores(2, 5).astype({"store": "float64"})
    frame.loc[0, "store"] = None
    with pytest.raises(SchemaError, match="null"):
        plan_partitions(frame, "store")


def test_empty_partition_folder_is_refused(tmp_path):
    for store, rows in (("a", 5), ("b", 0)):
        folder = tmp_path / "data" / f"store={store}"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pandas(stores(1, rows).drop(columns="store")), folder / "part.parquet"
        )
    with pytest.raises(EmptyDataError, match="'b' has no rows"):
        plan_partitions(str(tmp_path / "data"), "store")


def test_a_publish_that_fails_on_the_driver_fails_only_that_partition(tmp_path):
    """The driver publishes what a task returned; a publish error becomes the partition's
    FAILED record (with the traceback), as a train error would, and is never raised."""
    from shardtrain.modeling.distributors.many_model.transfer import FILES, PUBLISH, land

    stage = open_stage(str(tmp_path / "stage"))
    record = {"partition_id": "a", "folder": "a", "status": "DONE", "attempts": 0}
    ok = land(
        stage,
        "r1",
        {**record, FILES: {"model.ubj": b"x"}, PUBLISH: {"framework": "xgboost"}},
    )
    assert ok["status"] == "DONE" and ok["location"] == str(tmp_path / "stage/model/r1/a")
    assert (tmp_path / "stage/model/r1/a/_MANIFEST.json").is_file()
    bad = land(
        stage, "r1", {**record, FILES: {"model.ubj": b"x"}, PUBLISH: {"framework": "sklearn"}}
    )
    assert bad["status"] == "FAILED" and "ConfigError" in bad["error"]
    assert "Traceback" in bad["traceback"] and FILES not in bad and PUBLISH not in bad
