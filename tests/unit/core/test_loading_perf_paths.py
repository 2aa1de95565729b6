"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_loading_perf_paths.py.]

The fast loading paths keep exact semantics: Parquet read on a read-ahead thread with a
byte budget and the batch size as a hint, exact-size batches passed through, and torch tensors
that wrap freshly decoded Arrow buffers instead of copying them (never the caller's data)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from shardtrain import DataConnector, ShardedDataConnector
from shardtrain.data import parquet
from shardtrain.data.parquet import _read_ahead, read_rows
from shardtrain.data.torch import column_to_tensor

ROWS = 23_456


def _table(rows: int = ROWS) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "i": np.arange(rows, dtype=np.int64),
            "f": rng.standard_normal(rows).astype(np.float32),
            "u8": (np.arange(rows) % 251).astype(np.uint8),
            "d": rng.standard_normal(rows),
        }
    )


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory):
    """Three files of uneven row groups (none a multiple of the batch sizes below)."""
    folder = tmp_path_factory.mktemp("loading")
    table = _table()
    cuts = [0, 9_000, 9_001, ROWS]
    for n, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        pq.write_table(table.slice(a, b - a), folder / f"part-{n}.parquet", row_group_size=3_333)
    return folder, table


@pytest.mark.parametrize("batch_size", [1, 7, 100, 1000, 3_333, 8192, 50_000, None])
@pytest.mark.parametrize("window", [(0, ROWS), (5, 9_003), (3_333, 6_666), (12_345, 12_346)])
def test_parquet_batches_are_exact_in_order_for_any_window(parquet_folder, batch_size, window):
    folder, table = parquet_folder
    start, stop = window
    part = DataConnector.from_parquet(str(folder))._part(start, stop)
    batches = list(part.iter_batches(batch_size=batch_size, columns=["d", "i"]))
    got = pa.Table.from_batches(batches)
    assert got.column_names == ["d", "i"]
    assert got.equals(table.select(["d", "i"]).slice(start, stop - start))
    if batch_size is not None:
        sizes = [b.num_rows for b in batches]
        assert all(n == batch_size for n in sizes[:-1]) and 0 < sizes[-1] <= batch_size
        dropped = list(part.iter_batches(batch_size=batch_size, drop_last_batch=True))
        assert [b.num_rows for b in dropped] == [batch_size] * ((stop - start) // batch_size)


def test_batches_as_stored_never_cross_a_row_group(parquet_folder):
    folder, _ = parquet_folder
    sizes = [b.num_rows for b in DataConnector.from_parquet(str(folder)).iter_batches()]
    assert sum(sizes) == ROWS and max(sizes) <= 3_333


def test_read_size_is_a_multiple_of_small_batches():
    assert read_rows(None) == 65_536
    assert read_rows(100) % 100 == 0 and 8_192 <= read_rows(100) < 8_292
    assert read_rows(8_192) == 8_192 and read_rows(100_000) == 100_000


def test_shards_of_parquet_cover_every_row_once(parquet_folder):
    folder, table = parquet_folder
    shards = ShardedDataConnector.from_parquet(str(folder)).shards(3)
    ids = [b.column("i").to_numpy() for shard in shards for b in shard.iter_batches(batch_size=999)]
    assert np.array_equal(np.concatenate(ids), table.column("i").to_numpy())


def test_shuffled_parquet_is_a_repeatable_permutation(parquet_folder):
    folder, _ = parquet_folder
    dc = DataConnector.from_parquet(str(folder))

    def ids(seed):
        batches = dc.iter_batches(batch_size=1000, shuffle=True, seed=seed, columns=["i"])
        return np.concatenate([b.column("i").to_numpy() for b in batches])

    first = ids(3)
    assert np.array_equal(first, ids(3)) and not np.array_equal(first, ids(4))
    assert np.array_equal(np.sort(first), np.arange(ROWS))


TYPES = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
]


@pytest.mark.parametrize("kind", TYPES, ids=str)
def test_owned_column_is_wrapped_not_copied_with_the_same_dtype_and_values(kind):
    values = np.arange(40).astype(kind.to_pandas_dtype())
    column = pa.array(values, kind).slice(5, 30)  # an offset into the buffer, as a slice has
    itemsize = values.dtype.itemsize
    wrapped = column_to_tensor(column, owned=True)
    copied = column_to_tensor(column, owned=False)
    expected = torch.from_numpy(values[5:35].copy())
    for tensor in (wrapped, copied):
        assert tensor.dtype == expected.dtype and tensor.shape == (30,)
        assert torch.equal(tensor, expected)
    address = column.buffers()[1].address + 5 * itemsize
    assert wrapped.data_ptr() == address  # no copy
    assert copied.data_ptr() != address


def test_nulls_bools_and_decimals_are_converted_even_when_owned():
    ints = column_to_tensor(pa.array([1, None, 3], pa.int32()), owned=True)
    assert ints.dtype == torch.float64 and ints[0] == 1 and torch.isnan(ints[1])
    flags = column_to_tensor(pa.array([True, False, True]), owned=True)
    assert flags.dtype == torch.bool and flags.tolist() == [True, False, True]
    money = column_to_tensor(pa.array([Decimal("1.25"), None], pa.decimal128(5, 2)), owned=True)
    assert money.dtype == torch.float64 and money[0] == 1.25 and torch.isnan(money[1])


def test_parquet_torch_batches_match_the_file_exactly(parquet_folder, tmp_path):
    folder, table = parquet_folder
    dc = DataConnector.from_parquet(str(folder))
    batches = list(dc.to_torch_dataset(batch_size=1000, drop_last_batch=False))
    assert [len(b["i"]) for b in batches] == [1000] * 23 + [456]
    for name in table.column_names:
        got = torch.cat([b[name] for b in batches])
        expected = torch.from_numpy(table.column(name).to_numpy().copy())
        assert got.dtype == expected.dtype and torch.equal(got, expected), name


def test_tensors_from_in_memory_data_never_alias_it():
    """In-place work on a batch must not change the caller's table (or the next epoch)."""
    table = pa.table({"x": np.arange(10_000, dtype=np.float32)})
    dataset = DataConnector.from_arrow(table).to_torch_dataset(batch_size=1000)
    for batch in dataset:
        batch["x"].mul_(0)
    assert table.column("x").to_numpy()[-1] == 9_999
    again = torch.cat([b["x"] for b in dataset])
    assert torch.equal(again, torch.arange(10_000, dtype=torch.float32))


def test_tensors_from_parquet_are_independent_between_epochs(parquet_folder):
    folder, table = parquet_folder
    dataset = DataConnector.from_parquet(str(folder)).to_torch_dataset(
        batch_size=512, columns=["f"], drop_last_batch=False
    )
    for batch in dataset:
        batch["f"].zero_()
    again = torch.cat([b["f"] for b in dataset])
    assert torch.equal(again, torch.from_numpy(table.column("f").to_numpy().copy()))


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "shardtrain-parquet-read-ahead"]


def _wait_for_no_read_ahead_thread() -> None:
    deadline = time.monotonic() + 10
    while _read_ahead_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _read_ahead_threads()


def test_read_ahead_stops_at_its_budget_and_keeps_order():
    """A consumer that stalls finds at most the budget decoded ahead (plus the batch in the
    making), not the rest of the data."""
    made = []

    def produce():
        for i in range(100):
            made.append(i)
            yield pa.record_batch({"x": np.full(2**18, i, dtype=np.float32)})  # 1 MiB

    batches = _read_ahead([produce], budget=4 * 2**20)
    assert next(batches).column("x")[0].as_py() == 0
    time.sleep(0.5)  # a slow step: the reader runs ahead as far as it may
    assert len(made) <= 1 + 4 + 1, len(made)
    rest = [b.column("x")[0].as_py() for b in batches]
    assert rest == list(range(1, 100))
    _wait_for_no_read_ahead_thread()


def _part(value: int, batches: int = 3, before=None):
    def produce():
        if before is not None:
            before()
        for _ in range(batches):
            yield pa.record_batch({"x": np.full(2**18, value, dtype=np.float32)})  # 1 MiB

    return produce


def test_parts_are_made_two_at_a_time_and_handed_on_in_order():
    """Row groups decode on two threads at once (one at a time was ~15% slower than Arrow's
    scan) and still reach the consumer in order."""
    second_started = threading.Event()
    overlapped = []
    parts = [
        _part(0, before=lambda: overlapped.append(second_started.wait(10))),
        _part(1, before=second_started.set),
        *(_part(i) for i in range(2, 6)),
    ]
    values = [b.column("x")[0].as_py() for b in _read_ahead(parts, budget=64 * 2**20)]
    assert values == [i for i in range(6) for _ in range(3)]
    assert overlapped == [True], "part 0 was not made while part 1 was"
    _wait_for_no_read_ahead_thread()


def test_a_later_part_never_starves_the_part_the_consumer_waits_for():
    """With the budget spent on a later part, the consumer's part may still add a batch: no
    deadlock whatever the budget, and a stalled consumer still bounds what is made."""
    made = []
    parts = [_part(i, before=lambda i=i: made.append(i)) for i in range(8)]
    values = [b.column("x")[0].as_py() for b in _read_ahead(parts, budget=1)]
    assert values == [i for i in range(8) for _ in range(3)] and sorted(made) == list(range(8))

    counted = []

    def counting(i):
        def produce():
            for _ in range(50):
                counted.append(i)
                yield pa.record_batch({"x": np.full(2**18, i, dtype=np.float32)})

        return produce

    batches = _read_ahead([counting(i) for i in range(4)], budget=4 * 2**20)
    next(batches)
    time.sleep(0.5)  # stalled: both threads run ahead as far as they may
    # the budget, one batch past it for the consumer's part, one in the making per thread,
    # and the one taken
    assert len(counted) <= 4 + 1 + 2 + 1, counted
    assert sum(1 for _ in batches) == 199
    _wait_for_no_read_ahead_thread()


def test_inside_decode_threads_1_a_read_runs_one_thread(parquet_folder):
    """GBDT ranks read inside ``decode_threads(1)`` (each decoding thread holds a row group's
    decoding state, and their build is slower than one thread decodes); elsewhere a read runs
    ``DECODE_THREADS``, with the same rows in the same order."""
    folder, table = parquet_folder

    def threads_while_reading() -> tuple[int, list[int]]:
        most, values = 0, []
        for batch in DataConnector.from_parquet(str(folder)).iter_batches(batch_size=1000):
            most = max(most, len(_read_ahead_threads()))
            values.extend(batch.column("i").to_pylist())
        return most, values

    with parquet.decode_threads(1):
        lean, lean_values = threads_while_reading()
    usual, usual_values = threads_while_reading()
    assert lean == 1 and usual == parquet.DECODE_THREADS == 2
    assert lean_values == usual_values == table.column("i").to_pylist()
    _wait_for_no_read_ahead_thread()


def test_an_error_in_a_later_part_comes_after_every_batch_before_it():
    started = []

    def failing():
        started.append(1)
        raise OSError("row group 1 unreadable")
        yield  # pragma: no cover

    slow_first = _part(0, batches=5, before=lambda: time.sleep(0.3))
    parts = [slow_first, failing, _part(2, before=lambda: started.append(2))]
    batches = _read_ahead(parts)
    seen = []
    with pytest.raises(OSError, match="row group 1 unreadable"):
        for batch in batches:
            seen.append(batch.column("x")[0].as_py())
    assert seen == [0] * 5
    assert started == [1], "a part after the failed one was started"
    _wait_for_no_read_ahead_thread()


def test_an_abandoned_read_stops_its_thread_and_closes_its_reader(parquet_folder, monkeypatch):
    folder, _ = parquet_folder
    monkeypatch.setattr(parquet, "READAHEAD_BYTES", 1)  # the thread waits after each batch
    closed = []

    def produce():
        try:
            yield from DataConnector.from_parquet(str(folder)).iter_batches(batch_size=100)
        finally:
            closed.append(True)

    batches = _read_ahead([produce], budget=1)
    assert next(batches).num_rows == 100
    del batches  # the consumer stops (a break, an exception in the training loop)
    _wait_for_no_read_ahead_thread()
    assert closed == [True]
    # and the same through the Parquet source itself
    stream = DataConnector.from_parquet(str(folder)).iter_batches(batch_size=100)
    next(stream)
    assert _read_ahead_threads()  # waiting for room: the budget is one batch
    del stream
    _wait_for_no_read_ahead_thread()


def test_a_read_error_reaches_the_consumer_after_the_batches_before_it():
    def produce():
        yield pa.record_batch({"x": [1]})
        raise OSError("disk gone")

    batches = _read_ahead([produce])
    assert next(batches).num_rows == 1
    with pytest.raises(OSError, match="disk gone"):
        next(batches)
    _wait_for_no_read_ahead_thread()
