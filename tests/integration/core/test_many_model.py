"""Many-model training on real Ray: a failing partition leaves the others published, a rerun
trains only what failed, a run restores in a fresh process, vendor programs run with the import
prefix changed, and bad input is refused before any task starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardtrain.errors import PartitionError, ShardtrainError
from shardtrain.modeling.distributors.many_model import (
    ManyModelInference,
    ManyModelRun,
    ManyModelTraining,
    PartitionStatus,
    RunStatus,
    plan_partitions,
)
from shardtrain.modeling.serde import PickleSerde
from shardtrain.stage import open_stage
from tests.unit.core.test_many_model import stores

xgboost = pytest.importorskip("xgboost")


def make_train(calls: Path, fail: str | None = None, marker: Path | None = None):
    """A train function that records each call and raises for ``fail`` until ``marker``
    exists (so a rerun after 'fixing' it succeeds)."""

    def train(data_connector, context):
        (calls / f"{context.partition_id}-{uuid.uuid4().hex}").touch()
        if context.partition_id == fail and not (marker and marker.exists()):
            raise ValueError(f"bad data in partition {context.partition_id}")
        df = data_connector.to_pandas()
        model = xgboost.XGBRegressor(n_estimators=8, max_depth=3, n_jobs=1)
        model.fit(df[["x1", "x2"]], df["y"])
        context.log_metrics(rows=len(df))
        return model

    return train


def trained(calls: Path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in calls.iterdir())


@pytest.fixture(scope="module")
def failed_run(ray_cluster, tmp_path_factory):
    """Ten partitions, partition 7 raising: the run, its stage and the call log."""
    root = tmp_path_factory.mktemp("mmt")
    calls = root / "calls"
    calls.mkdir()
    stage = str(root / "stage")
    train = make_train(calls, fail="7", marker=root / "fixed")
    run = ManyModelTraining(train, stage).run(partition_by="store", data=stores(), run_id="r10")
    return run, stage, root, calls, train


def test_one_failing_partition_leaves_nine_published_and_rerun_trains_only_it(failed_run):
    run, stage, root, calls, train = failed_run
    assert run.wait() == RunStatus.PARTIAL_FAILURE
    details = run.partition_details
    assert sorted(details, key=int) == [str(i) for i in range(10)]
    done = [p for p, d in details.items() if d.status == PartitionStatus.DONE]
    assert len(done) == 9
    failed = details["7"]
    assert failed.status == PartitionStatus.FAILED
    assert "ValueError: bad data in partition 7" in failed.error
    assert "Traceback" in failed.traceback and "in train" in failed.traceback
    with pytest.raises(PartitionError, match="partition '7'") as info:
        run.get_model("7")
    assert "bad data" in info.value.worker_traceback

    # nine models, each under <stage>/model/<run_id>/<partition>/ with its own manifest,
    # loadable by the run and by the ordinary loader (pickle-free UBJSON)
    import shardtrain

    frame = stores()
    for pid in done:
        assert details[pid].location == str(Path(stage, "model", "r10", pid))
        assert Path(details[pid].location, "_MANIFEST.json").is_file()
        model = run.get_model(pid)
        assert isinstance(model, xgboost.XGBRegressor)
        rows = frame[frame.store == int(pid)]
        assert model.predict(rows[["x1", "x2"]]).shape == (len(rows),)
        booster = shardtrain.load_model(details[pid].location)
        assert isinstance(booster, xgboost.Booster)
        assert details[pid].metrics == {"train": {"rows": 60.0}}
    manifest = run.manifest
    assert manifest["status"] == "PARTIAL_FAILURE"
    assert Path(stage, "model", "r10", "_RUN.json").is_file()

    # rerun the same run id after the fix: only partition 7 trains
    (root / "fixed").touch()
    before = trained(calls)
    rerun = ManyModelTraining(train, stage).run(partition_by="store", data=frame, run_id="r10")
    assert rerun.wait() == RunStatus.SUCCESS
    assert trained(calls) == sorted([*before, "7"])
    assert rerun.partition_details["7"].attempts == 2
    assert rerun.partition_details["0"].attempts == 1
    assert isinstance(rerun.get_model("7"), xgboost.XGBRegressor)


def test_restore_a_run_in_a_new_process(failed_run):
    run, stage, *_ = failed_run
    run.wait()
    script = textwrap.dedent(
        f"""
        from shardtrain.modeling.distributors.many_model import ManyModelRun
        run = ManyModelRun.restore_from("r10", {stage!r})
        model = run.get_model(3)
        print(type(model).__name__, run.status.value, len(run.partition_details))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.split()
    assert out[0] == "XGBRegressor" and out[2] == "10"
    with pytest.raises(ShardtrainError, match="no many-model run"):
        ManyModelRun.restore_from("nope", stage)


def test_inference_writes_each_partitions_predictions_as_parquet(failed_run):
    run, stage, *_ = failed_run
    run.wait()
    frame = stores(partitions=3, seed=1)
    inference = ManyModelInference(None, stage, "r10").run(
        partition_by="store", data=frame, run_id="i1"
    )
    assert inference.wait() == RunStatus.SUCCESS
    location = inference.partition_details["2"].location
    table = pq.read_table(location)
    assert table.num_rows == 60 and "prediction" in table.column_names
    expected = run.get_model("2").predict(frame[frame.store == 2][["x1", "x2"]])
    np.testing.assert_allclose(table.column("prediction").to_numpy(), expected, rtol=1e-5)


VENDOR_PROGRAM = """
from snowflake.ml.modeling.distributors.many_model import ManyModelTraining
from snowflake.ml.modeling.distributors.distributed_partition_function.entities import RunStatus

def train_xgboost_model(data_connector, context):
    from xgboost import XGBRegressor
    df = data_connector.to_pandas()
    model = XGBRegressor(n_estimators=5)
    model.fit(df[["X1", "X2"]], df["Y"])
    return model

trainer = ManyModelTraining(train_xgboost_model, STAGE)
training_run = trainer.run(
    partition_by="STORE",
    snowpark_dataframe=session.table("SALES"),
    run_id="vendor_run",
)
final_status = training_run.wait()
assert final_status == RunStatus.SUCCESS, final_status
models = {pid: training_run.get_model(pid) for pid in training_run.partition_details}
"""


def test_vendor_program_runs_with_the_prefix_changed(ray_cluster, snowpark_session, tmp_path):
    from tests.helpers import snowpark_table

    frame = stores(partitions=3, rows=40)
    frame.columns = [c.upper() for c in frame.columns]
    snowpark_table(snowpark_session, frame, "SALES")
    code = VENDOR_PROGRAM.replace("snowflake.ml", "shardtrain")
    scope = {"session": snowpark_session, "STAGE": str(tmp_path / "stage")}
    exec(compile(code, "vendor_program", "exec"), scope)  # noqa: S102
    assert sorted(scope["models"]) == ["0", "1", "2"]
    assert all(isinstance(m, xgboost.XGBRegressor) for m in scope["models"].values())


def test_parquet_by_column_and_by_folders_plan_the_same_partitions(ray_cluster, tmp_path):
    frame = stores(3, 10)
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "flat.parquet")
    by_column = plan_partitions(str(tmp_path / "flat.parquet"), "store")
    for store in range(3):
        folder = tmp_path / "hive" / f"store={store}"
        folder.mkdir(parents=True)
        part = frame[frame.store == store].drop(columns="store")
        pq.write_table(pa.Table.from_pandas(part), folder / "p.parquet")
    by_folder = plan_partitions(str(tmp_path / "hive"), "store")
    assert [p.partition_id for p in by_column] == [p.partition_id for p in by_folder]
    assert [p.connector().num_rows for p in by_folder] == [10, 10, 10]
    assert by_column[1].connector().to_pandas().x1.tolist() == frame[frame.store == 1].x1.tolist()


def test_train_func_returning_none_or_an_unknown_model(ray_cluster, tmp_path):
    def train(data_connector, context):
        if context.partition_id == "0":
            return None
        return {"mean": float(data_connector.to_pandas().y.mean())}  # no pickle-free format

    stage = str(tmp_path / "stage")
    run = ManyModelTraining(train, stage).run(partition_by="store", data=stores(2, 5), run_id="n")
    assert run.wait() == RunStatus.FAILURE
    assert run.partition_details["0"].error.startswith("NoModelReturnedError")
    assert "PickleSerde" in run.partition_details["1"].error

    # pickles only when asked for, and read back only when the reader asks too
    pickled = ManyModelTraining(train, stage, serde=PickleSerde()).run(
        partition_by="store", data=stores(2, 5), run_id="p"
    )
    assert pickled.wait() == RunStatus.PARTIAL_FAILURE
    with pytest.raises(ShardtrainError, match="PickleSerde"):
        ManyModelRun.restore_from("p", stage).get_model("1")
    model = ManyModelRun.restore_from("p", stage, serde=PickleSerde()).get_model("1")
    assert set(model) == {"mean"}


def test_publishes_to_a_snowflake_stage_and_restores_from_it(ray_cluster, snowpark_session):
    """Workers have no Snowpark session: each task returns its model folder and the driver
    publishes it to the ``@stage``; restore, get_model and inference read it back through the
    session (inference ships the model bytes to the tasks and uploads their predictions)."""
    from tests.helpers import snowpark_table

    stage = f"@DB.SCH.MM_{uuid.uuid4().hex[:8].upper()}"
    frame = stores(partitions=3, rows=40)
    run = ManyModelTraining(_train_xgb, stage, session=snowpark_session).run(
        partition_by="store", data=frame, run_id="sf1"
    )
    assert run.wait() == RunStatus.SUCCESS
    assert run.partition_details["1"].location == f"{stage}/model/sf1/1"

    restored = ManyModelRun.restore_from("sf1", stage, session=snowpark_session)
    assert restored.status == RunStatus.SUCCESS
    rows = frame[frame.store == 1][["x1", "x2"]]
    np.testing.assert_allclose(
        restored.get_model(1).predict(rows), run.get_model(1).predict(rows), rtol=1e-6
    )
    assert restored.partition_details["1"].metrics == {"train": {"rows": 40.0}}

    inference = ManyModelInference(None, stage, "sf1", session=snowpark_session).run(
        partition_by="store", data=frame, run_id="sf1-predict"
    )
    assert inference.wait() == RunStatus.SUCCESS
    location = inference.partition_details["2"].location
    assert location == f"{stage}/predictions/sf1-predict/2/predictions.parquet"
    folder = open_stage(location.rsplit("/", 1)[0], session=snowpark_session)
    predictions = pq.read_table(pa.BufferReader(folder.read_bytes("predictions.parquet")))
    assert predictions.num_rows == 40 and "prediction" in predictions.column_names

    # the vendor's form: the stage named, the session taken from the Snowpark DataFrame
    upper = frame.rename(columns=str.upper)
    snowpark_table(snowpark_session, upper, "MM_SALES")
    vendor = ManyModelTraining(_train_xgb_upper, stage).run(
        partition_by="STORE", snowpark_dataframe=snowpark_session.table("MM_SALES"), run_id="sf2"
    )
    assert vendor.wait() == RunStatus.SUCCESS
    assert isinstance(vendor.get_model("0"), xgboost.XGBRegressor)


def _train_xgb(data_connector, context):
    df = data_connector.to_pandas()
    context.log_metrics(rows=len(df))
    model = xgboost.XGBRegressor(n_estimators=4, max_depth=2, n_jobs=1)
    return model.fit(df[["x1", "x2"]], df["y"])


def _train_xgb_upper(data_connector, context):
    df = data_connector.to_pandas()
    model = xgboost.XGBRegressor(n_estimators=4, max_depth=2, n_jobs=1)
    return model.fit(df[["X1", "X2"]], df["Y"])
