"""Data named as orchestrators pass it, and request ids from orchestrator identities."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardtrain import DataConnector
from shardtrain.artifact import request_id_from
from shardtrain.data.spec import connector_from_spec
from shardtrain.errors import ConfigError


def test_specs(tmp_path, snowpark_session):
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "d.parquet")
    path = str(tmp_path / "d.parquet")
    assert connector_from_spec(path).num_rows == 3
    assert connector_from_spec({"path": path, "table": None}).num_rows == 3
    assert connector_from_spec(None) is None and connector_from_spec({"table": ""}) is None
    dc = DataConnector.from_parquet(path)
    assert connector_from_spec(dc) is dc
    snowpark_session.create_dataframe([[1], [2]], schema=["X"]).write.save_as_table(
        "SPEC_T", mode="overwrite"
    )
    assert connector_from_spec({"table": "SPEC_T"}, session=snowpark_session).num_rows == 2
    with pytest.raises(ConfigError, match=r"one of table, query or path for the eval data"):
        connector_from_spec({"table": "T", "path": path}, name="eval")
    with pytest.raises(ConfigError, match="needs a Snowpark session: set snowflake_conn_id"):
        connector_from_spec({"query": "select 1"})


def test_request_ids_are_safe_stable_and_distinct():
    first = request_id_from("dag__manual__2026-11-26T15:04:53+00:00__train")
    assert first == request_id_from("dag__manual__2026-11-26T15:04:53+00:00__train")
    assert ":" not in first and "+" not in first
    # identities that differ only in unsafe characters still get different ids
    assert request_id_from("a:b") != request_id_from("a+b")
    assert request_id_from("x" * 500).startswith("x" * 150)
    assert request_id_from("run", unique="u1", prefix="prefect-") != request_id_from(
        "run", unique="u2", prefix="prefect-"
    )
