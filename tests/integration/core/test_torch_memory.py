"""A ``to_torch_dataset`` epoch over Parquet keeps a worker's memory flat (issue 18): the
reader stays a bounded number of bytes ahead of its consumer, whatever the size of the data.

Each epoch runs in a fresh process (its own peak RSS, reset before the epoch: Linux
``clear_refs``) over a Parquet file written to tmp, at two sizes four times apart, with a
consumer slower than the reader (a training step), so a read-ahead without a bound piles up
decoded data: Arrow's dataset scanner, read through before, held 50-75% of the file ahead
(peak growth ~110-125 MiB at 1M rows, ~200-215 MiB at 4M, here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[3]
FEATURES = 16
#: What four times the data may add to an epoch's peak: nothing but noise (the allocators'
#: retained pages, thread timing). Measured: 0-10 MiB since the read-ahead is bounded,
#: ~90 MiB before.
FLAT_BYTES = 48 * 2**20


def write_parquet(path: Path, rows: int) -> int:
    """``rows`` x (16 float32 features + label), 65,536-row row groups; returns the bytes.
    Plain encoding: dictionary-encoding random floats (and giving up) makes writing 6x slower."""
    writer = None
    for start in range(0, rows, 262_144):
        n = min(262_144, rows - start)
        rng = np.random.default_rng(start)
        table = pa.table(
            {f"F{i}": rng.random(n, dtype=np.float32) for i in range(FEATURES)}
            | {"Y": rng.random(n, dtype=np.float32)}
        )
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, use_dictionary=False)
        writer.write_table(table, row_group_size=65_536)
    writer.close()
    return rows * (FEATURES + 1) * 4


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def epoch_peak_growth(path: str, batch_size: int, step_seconds: float) -> dict:
    """One epoch in this process (a training step of ``step_seconds`` a batch, so the reader
    runs ahead as it would); returns peak RSS growth (bytes) and rows seen."""
    from shardtrain import DataConnector

    dataset = DataConnector.from_parquet(path).to_torch_dataset(batch_size=batch_size)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    assert _status_kib("VmHWM") <= base + 1024
    rows = 0
    for batch in dataset:
        rows += len(batch["Y"])
        time.sleep(step_seconds)
    return {"peak_growth": (_status_kib("VmHWM") - base) * 1024, "rows": rows}


def _epoch(path: Path, batch_size: int, step_seconds: float) -> dict:
    code = (
        "import json, torch\n"
        "from tests.integration.core.test_torch_memory import epoch_peak_growth\n"
        f"print(json.dumps(epoch_peak_growth({str(path)!r}, {batch_size}, {step_seconds})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset: Linux only")
def test_an_epoch_over_parquet_keeps_memory_flat(tmp_path):
    small_rows, large_rows = 2**20, 2**22  # whole batches (drop_last_batch)
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    write_parquet(small, small_rows)
    raw_large = write_parquet(large, large_rows)  # 272 MiB of float32
    first = _epoch(small, 16_384, 0.01)
    second = _epoch(large, 16_384, 0.01)
    assert first["rows"] == small_rows and second["rows"] == large_rows
    mib = {k: round(v["peak_growth"] / 2**20) for k, v in (("1M", first), ("4M", second))}
    # 4x the data (+204 MiB raw) moves the epoch's peak by less than FLAT_BYTES
    assert second["peak_growth"] - first["peak_growth"] < FLAT_BYTES, mib
    assert second["peak_growth"] < raw_large / 2, mib
