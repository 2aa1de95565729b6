"""DataConnector behaviour beyond the source matrix: the seed's torch loop, memory bounds,
no pandas in the hot path, and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from shardtrain import (
    DataConnector,
    DataSourceError,
    ShardedDataConnector,
)
from tests.helpers import snowpark_table


def test_seed_torch_loop_runs_unchanged(snowpark_session):
    """The vendor page's PyTorch loop body, on a shard of a Snowpark local_testing table."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"A": rng.random(3000), "B": rng.random(3000)})
    frame["Y"] = 2 * frame["A"] - frame["B"]
    snowpark_table(snowpark_session, frame, "SEED_LOOP")
    data_connector = ShardedDataConnector.from_dataframe(snowpark_session.table("SEED_LOOP"))
    input_cols, label_col = ["A", "B"], "Y"

    model = torch.nn.Linear(2, 1)
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    torch_dataset = data_connector.get_shard(0, 2).to_torch_dataset(batch_size=256)
    dataloader = DataLoader(torch_dataset)
    losses = []
    for _epoch in range(15):
        for batch_dict in dataloader:
            features = torch.cat([batch_dict[col].T for col in input_cols], dim=1).float()
            labels = batch_dict[label_col].T.squeeze(0).float()
            # Exactly what the vendor's loop implies: [1, B] per column from DataLoader(bs=1).
            assert batch_dict[label_col].shape == (1, 256)
            assert features.shape == (256, 2) and labels.shape == (256, 1)
            output = model(features)
            loss = criterion(output, labels.unsqueeze(1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_no_pandas_in_the_hot_path(tmp_path):
    """Batches, Arrow and torch outputs work in a process where pandas cannot be imported."""
    import subprocess
    import sys

    pq.write_table(pa.table({"x": np.arange(10_000.0)}), tmp_path / "p.parquet")
    script = f"""
import sys

class BlockPandas:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is blocked in this test")

sys.meta_path.insert(0, BlockPandas())
from shardtrain import DataConnector, ShardedDataConnector
dc = ShardedDataConnector.from_parquet({str(tmp_path / "p.parquet")!r}).get_shard(0, 2)
assert sum(b.num_rows for b in dc.iter_batches(batch_size=999, shuffle=True)) == 5_000
assert dc.to_arrow().num_rows == 5_000
assert sum(len(b["x"]) for b in dc.to_torch_dataset(batch_size=100)) == 5_000
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_to_ray_dataset_round_trip(ray_cluster, tmp_path):
    pq.write_table(pa.table({"x": np.arange(5000)}), tmp_path / "r.parquet", row_group_size=700)
    ds = DataConnector.from_parquet(str(tmp_path / "r.parquet")).to_ray_dataset(batch_size=1024)
    assert ds.count() == 5000
    assert sorted(DataConnector.from_ray_dataset(ds).to_arrow().column("x").to_pylist()) == list(
        range(5000)
    )


def test_from_sql_on_local_testing_says_what_to_do(snowpark_session):
    with pytest.raises(DataSourceError, match="from_dataframe"):
        DataConnector.from_sql("select 1", session=snowpark_session)


def test_describe_never_contains_credentials(s3_server, request):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    with fs.open("shardtrain-test/creds/data.parquet", "wb") as handle:
        pq.write_table(pa.table({"a": [1]}), handle)
    dc = DataConnector.from_parquet(
        "s3://shardtrain-test/creds/data.parquet", storage_options=s3_server
    )
    text = repr(dc.describe()) + repr(dc)
    assert s3_server["key"] not in text and s3_server["secret"] not in text
    assert "s3://shardtrain-test/creds/data.parquet" in text
