"""Data loading: DataConnector vs a plain pyarrow.dataset scan of the same Parquet file.

    python -m bench.data_loading [--rows 1000000] [--repeats 5]

Each case reads every row of a rows x 32 float32 Parquet file (row groups of 128k rows) and
touches every column as numpy, as a trainer would; medians of ``--repeats`` runs, in one
process, alternating cases so that page-cache and CPU-frequency effects hit both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from shardtrain import DataConnector

COLUMNS = 32
BATCH = 8192


def make_file(path: Path, rows: int) -> int:
    rng = np.random.default_rng(0)
    table = pa.table({f"f{i}": rng.random(rows, dtype=np.float32) for i in range(COLUMNS)})
    pq.write_table(table, path, row_group_size=128 * 1024)
    return table.nbytes


def touch(batch: pa.RecordBatch) -> int:
    for column in batch.columns:
        column.to_numpy()
    return batch.num_rows


def plain_scan(path: Path) -> int:
    return sum(touch(b) for b in ds.dataset(str(path)).to_batches(batch_size=BATCH))


def connector_batches(path: Path) -> int:
    dc = DataConnector.from_parquet(str(path))
    return sum(touch(b) for b in dc.iter_batches(batch_size=BATCH))


def connector_torch(path: Path) -> int:
    dc = DataConnector.from_parquet(str(path))
    return sum(len(b["f0"]) for b in dc.to_torch_dataset(batch_size=BATCH, drop_last_batch=False))


CASES = {
    "pyarrow.dataset scan": plain_scan,
    "DataConnector.iter_batches": connector_batches,
    "DataConnector.to_torch_dataset": connector_torch,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        nbytes = make_file(path, args.rows)
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.repeats):
            for name, case in CASES.items():
                start = time.perf_counter()
                assert case(path) == args.rows
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["pyarrow.dataset scan"])
    print(
        f"{args.rows:,} rows x {COLUMNS} float32 ({nbytes / 2**20:.0f} MiB decoded), "
        f"batch {BATCH}, median of {args.repeats}"
    )
    results = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        results[name] = {
            "median_s": median,
            "rows_per_s": args.rows / median,
            "mib_per_s": nbytes / 2**20 / median,
            "vs_plain": base / median,
        }
        print(
            f"  {name:32s} {median:6.3f} s  {args.rows / median / 1e6:6.2f} M rows/s  "
            f"{nbytes / 2**20 / median:7.0f} MiB/s  {base / median:5.2f}x plain"
        )
    return results


if __name__ == "__main__":
    main()
