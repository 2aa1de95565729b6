"""Every kind of source, read through every output of a DataConnector.

Each source holds the same 10,000 rows (two float features, an int label, an id), so every
case compares what comes out against one expected table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from shardtrain import DataConnector

N = 10_000


def expected_table() -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "ID": np.arange(N, dtype=np.int64),
            "F1": rng.random(N),
            "F2": rng.random(N),
            "LABEL": rng.integers(0, 2, N).astype(np.int64),
        }
    )


def write_parquet_folder(folder, table, files=3, row_group_size=700):
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        pq.write_table(
            table.slice(a, b - a), folder / f"part-{i:03d}.parquet", row_group_size=row_group_size
        )
    (folder / "_SUCCESS").write_text("")  # hidden/marker files are skipped
    return folder


class FakeResultBatch:
    """Stand-in for a live Snowflake `ResultBatch` (rowcount, to_arrow).

    A mock because no live Snowflake account is reachable here: it plays the part of a
    query's downloadable result chunk so the result-batch source's sharding is exercised.
    """

    def __init__(self, table):
        self.table = table
        self.rowcount = table.num_rows

    def to_arrow(self, connection=None):
        return self.table


def make_source(kind, tmp_path, request):
    table = expected_table()
    if kind == "pandas":
        return DataConnector.from_pandas(table.to_pandas())
    if kind == "arrow":
        return DataConnector.from_arrow(table)
    if kind == "parquet_file":
        pq.write_table(table, tmp_path / "one.parquet", row_group_size=1234)
        return DataConnector.from_parquet(str(tmp_path / "one.parquet"))
    if kind == "parquet_folder":
        return DataConnector.from_parquet(str(write_parquet_folder(tmp_path / "folder", table)))
    if kind == "parquet_glob":
        write_parquet_folder(tmp_path / "glob", table)
        return DataConnector.from_parquet(str(tmp_path / "glob" / "part-*.parquet"))
    if kind == "parquet_file_url":
        pq.write_table(table, tmp_path / "url.parquet", row_group_size=999)
        return DataConnector.from_parquet(f"file://{tmp_path}/url.parquet")
    if kind == "memory_url":
        import fsspec

        fs = fsspec.filesystem("memory")
        name = f"/{request.node.name}/data.parquet"
        with fs.open(name, "wb") as handle:
            pq.write_table(table, handle, row_group_size=2048)
        return DataConnector.from_parquet(f"memory://{name}")
    if kind == "s3_url":
        import s3fs

        options = request.getfixturevalue("s3_server")
        fs = s3fs.S3FileSystem(**options)
        key = f"shardtrain-test/{request.node.name}/data.parquet"
        with fs.open(key, "wb") as handle:
            pq.write_table(table, handle, row_group_size=3000)
        return DataConnector.from_parquet(f"s3://{key}", storage_options=options)
    if kind == "snowpark_local":
        session = request.getfixturevalue("snowpark_session")
        name = f"T_{abs(hash(request.node.name))}"
        session.create_dataframe(table.to_pandas()).write.save_as_table(name, mode="overwrite")
        return DataConnector.from_dataframe(session.table(name))
    if kind == "ray_dataset":
        ray = request.getfixturevalue("ray_cluster")
        return DataConnector.from_ray_dataset(
            ray.data.from_arrow([table.slice(0, 4000), table.slice(4000)])
        )
    if kind == "result_batches":
        from shardtrain.data.sources import ResultBatchSource

        batches = [FakeResultBatch(table.slice(a, 2500)) for a in range(0, N, 2500)]
        return DataConnector(ResultBatchSource(batches, table.schema, {"kind": "snowpark"}))
    if kind == "from_sources":
        return DataConnector.from_sources(
            None, [table.slice(0, 3333).to_pandas(), table.slice(3333)]
        )
    raise AssertionError(kind)


KINDS = [
    "pandas",
    "arrow",
    "parquet_file",
    "parquet_folder",
    "parquet_glob",
    "parquet_file_url",
    "memory_url",
    "s3_url",
    "snowpark_local",
    "ray_dataset",
    "result_batches",
    "from_sources",
]


def as_sorted_frame(table_or_frame) -> pd.DataFrame:
    frame = table_or_frame.to_pandas() if isinstance(table_or_frame, pa.Table) else table_or_frame
    return frame.sort_values("ID").reset_index(drop=True)[["ID", "F1", "F2", "LABEL"]]


@pytest.mark.parametrize("kind", KINDS)
class TestEverySourceEveryOutput:
    def test_metadata(self, kind, tmp_path, request):
        dc = make_source(kind, tmp_path, request)
        assert dc.num_rows == N
        assert set(dc.columns) == {"ID", "F1", "F2", "LABEL"}
        assert isinstance(dc.schema, pa.Schema)
        description = dc.describe()
        assert description["num_rows"] == N and "kind" in description

    def test_iter_batches_exact_sizes_in_order(self, kind, tmp_path, request):
        dc = make_source(kind, tmp_path, request)
        batches = list(dc.iter_batches(batch_size=768))
        assert [b.num_rows for b in batches[:-1]] == [768] * (len(batches) - 1)
        assert batches[-1].num_rows == N % 768
        ids = np.concatenate([b.column("ID").to_numpy() for b in batches])
        np.testing.assert_array_equal(ids, np.arange(N))
        dropped = list(dc.iter_batches(batch_size=768, drop_last_batch=True))
        assert sum(b.num_rows for b in dropped) == (N // 768) * 768

    def test_iter_batches_columns_and_shuffle(self, kind, tmp_path, request):
        dc = make_source(kind, tmp_path, request)
        batches = list(
            dc.iter_batches(
                batch_size=1000,
                columns=["LABEL", "ID"],
                shuffle=True,
                seed=7,
                shuffle_buffer_rows=2000,
            )
        )
        assert all(b.schema.names == ["LABEL", "ID"] for b in batches)
        ids = np.concatenate([b.column("ID").to_numpy() for b in batches])
        assert sorted(ids) == list(range(N))
        assert not np.array_equal(ids, np.arange(N))
        again = np.concatenate(
            [
                b.column("ID").to_numpy()
                for b in dc.iter_batches(
                    batch_size=1000,
                    columns=["LABEL", "ID"],
                    shuffle=True,
                    seed=7,
                    shuffle_buffer_rows=2000,
                )
            ]
        )
        np.testing.assert_array_equal(ids, again)

    def test_to_arrow_and_to_pandas(self, kind, tmp_path, request):
        dc = make_source(kind, tmp_path, request)
        expected = as_sorted_frame(expected_table())
        pd.testing.assert_frame_equal(as_sorted_frame(dc.to_arrow()), expected)
        pd.testing.assert_frame_equal(as_sorted_frame(dc.to_pandas()), expected)
        head = dc.to_pandas(limit=10)
        assert head["ID"].tolist() == list(range(10))

    def test_to_torch_dataset(self, kind, tmp_path, request):
        dc = make_source(kind, tmp_path, request)
        ds = dc.to_torch_dataset(batch_size=1000, columns=["ID", "F1"], drop_last_batch=False)
        batches = list(ds)
        assert set(batches[0]) == {"ID", "F1"}
        ids = np.concatenate([b["ID"].numpy() for b in batches])
        np.testing.assert_array_equal(ids, np.arange(N))
        f1 = np.concatenate([b["F1"].numpy() for b in batches])
        np.testing.assert_allclose(f1, expected_table().column("F1").to_numpy())

    def test_to_torch_dataset_with_loader_workers(self, kind, tmp_path, request):
        dc = make_source(kind, tmp_path, request)
        ds = dc.to_torch_dataset(
            batch_size=500, columns=["ID"], shuffle=True, seed=3, drop_last_batch=False
        )
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        if kind == "ray_dataset":
            # Forked loader workers have no Ray client: refused with a clear message.
            with pytest.raises(Exception, match="num_workers=0"):
                list(loader)
            return
        batches = list(loader)
        ids = np.concatenate([b["ID"].numpy() for b in batches])
        assert sorted(ids.tolist()) == list(range(N))  # every row once: disjoint parts
        assert not np.array_equal(ids, np.arange(N))
