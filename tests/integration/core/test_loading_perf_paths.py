"""The fast loading paths keep exact semantics: Parquet read on a read-ahead thread with a
byte budget and the batch size as a hint, exact-size batches passed through, and torch tensors
that wrap freshly decoded Arrow buffers instead of copying them (never the caller's data)."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq

from tests.unit.core.test_loading_perf_paths import _table

ROWS = 23_456


def test_a_process_that_reads_then_exits_exits_cleanly(tmp_path):
    """The read ends once its threads have closed their files: a thread still closing one as
    the interpreter exits aborted the process ('terminate called without an active
    exception', exit code 134)."""
    path = tmp_path / "groups.parquet"
    pq.write_table(_table(40_000), path, row_group_size=2_000)
    code = (
        "from shardtrain import DataConnector\n"
        f"rows = sum(b.num_rows for b in DataConnector.from_parquet({str(path)!r}).iter_batches())\n"
        "print(rows)\n"
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert (done.returncode, done.stdout.strip()) == (0, "40000"), done.stderr[-2000:]
