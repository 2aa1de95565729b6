"""Data loading cases: every row of the training Parquet file, every column touched, batch 8192.

The comparison is like for like: every case reads the same file, all of its columns
(``COLUMNS = None``), in batches of ``BATCH`` rows, and ends with the same output type.

- ``pyarrow.dataset`` scan to numpy: the practical limit for reading this file in Python,
  and the baseline of ``DataConnector.iter_batches`` (Arrow record batches, each column
  turned into numpy the same way).
- ``pyarrow.dataset`` scan to torch: the same scan, each column a tensor without a copy
  (DLPack), the output ``to_torch_dataset`` gives (dicts of tensors): its like-for-like
  baseline. The targets are quoted against the scan to numpy, which is the stricter one.
- Ray Data ``read_parquet(...).iter_torch_batches``: the dataset path Ray Train feeds from.

Each case checks it saw every row; the report turns the time into rows per second. The
harness (``python -m bench``) times each case's repeats one after another. On a shared
machine load drifts between those blocks, so ratios are best read from interleaved rounds:

    python -m bench.data_loading --rows 1000000 --rounds 15

writes the data if needed, runs one untimed pass of each case, then ``rounds`` rounds of
every case (the order rotated each round) and prints each case's time and, per round, the
scan's time over the case's: median and spread (min / quartiles / max).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

BATCH = 8192
COLUMNS = None  # every column, in every case


def _touch(batch: pa.RecordBatch) -> int:
    for column in batch.columns:
        column.to_numpy()
    return batch.num_rows


def _check(ctx, rows: int) -> None:
    expected = pq.ParquetFile(ctx.train).metadata.num_rows
    if rows != expected:
        raise AssertionError(f"read {rows} rows, the file has {expected}")


def _scan(ctx):
    return ds.dataset(str(ctx.train)).to_batches(columns=COLUMNS, batch_size=BATCH)


def pyarrow_scan(ctx) -> None:
    _check(ctx, sum(_touch(b) for b in _scan(ctx)))


def pyarrow_scan_torch(ctx) -> None:
    import torch

    rows = 0
    for batch in _scan(ctx):
        tensors = {
            name: torch.from_dlpack(column.__dlpack__())
            for name, column in zip(batch.schema.names, batch.columns, strict=True)
        }
        rows += len(tensors["y"])
    _check(ctx, rows)


def connector_batches(ctx) -> None:
    from shardtrain import DataConnector

    connector = DataConnector.from_parquet(str(ctx.train))
    batches = connector.iter_batches(batch_size=BATCH, columns=COLUMNS)
    _check(ctx, sum(_touch(b) for b in batches))


def connector_torch(ctx) -> None:
    from shardtrain import DataConnector

    connector = DataConnector.from_parquet(str(ctx.train))
    batches = connector.to_torch_dataset(batch_size=BATCH, drop_last_batch=False, columns=COLUMNS)
    _check(ctx, sum(len(batch["y"]) for batch in batches))


def ray_data_torch(ctx) -> None:
    import ray.data

    dataset = ray.data.read_parquet(str(ctx.train))
    _check(ctx, sum(len(batch["y"]) for batch in dataset.iter_torch_batches(batch_size=BATCH)))


#: The interleaved run: the baseline first, then what is compared with it.
INTERLEAVED = {
    "pyarrow scan -> numpy": pyarrow_scan,
    "pyarrow scan -> torch": pyarrow_scan_torch,
    "DataConnector.iter_batches -> numpy": connector_batches,
    "DataConnector.to_torch_dataset": connector_torch,
}
RATIOS = (
    ("DataConnector.iter_batches -> numpy", "pyarrow scan -> numpy"),
    ("DataConnector.to_torch_dataset", "pyarrow scan -> numpy"),
    ("DataConnector.to_torch_dataset", "pyarrow scan -> torch"),
)


def _spread(values: list[float], fmt: str) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return (
        f"median {fmt % statistics.median(values)}  min {fmt % min(values)}  "
        f"q1 {fmt % q[0]}  q3 {fmt % q[2]}  max {fmt % max(values)}"
    )


def interleaved(train: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds (this process, every thread) per case and round, every case once
    per round in a rotated order. CPU time moves less with other load than wall time does."""
    import torch  # noqa: F401

    import shardtrain  # noqa: F401  (imports are not loading)

    ctx = SimpleNamespace(train=train)
    names = list(INTERLEAVED)
    for fn in INTERLEAVED.values():
        fn(ctx)  # untimed: the first read pays the page cache
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            INTERLEAVED[name](ctx)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return times, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.data_loading")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    args = parser.parse_args(argv)
    from bench.data import make_parquet

    args.data.mkdir(parents=True, exist_ok=True)
    train = args.data / f"train-{args.rows}.parquet"
    if not train.exists():
        make_parquet(train, args.rows)
    times, cpu = interleaved(train, args.rounds)
    print(f"{args.rows:,} rows, batch {BATCH}, every column, {args.rounds} interleaved rounds")
    for label, table in (("wall", times), ("cpu", cpu)):
        for name, values in table.items():
            print(f"  {label} {name:36s} {_spread(values, '%.3f s')}")
    print("throughput ratios (baseline time / case time, per round; >= 1 is as fast or faster)")
    for label, table in (("wall", times), ("cpu", cpu)):
        for case, base in RATIOS:
            ratios = [b / c for b, c in zip(table[base], table[case], strict=True)]
            print(f"  {label} {case} / {base}: {_spread(ratios, '%.2fx')}")


if __name__ == "__main__":
    main()
