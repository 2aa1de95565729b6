"""``ManyModelTraining``: one model per partition, each trained in its own Ray task.

Why: one call trains every partition with its own resources (Ray reuses warm worker
processes between tasks) instead of one orchestrator task, interpreter and cluster start per
partition. The task trains and writes the model through its serde into a local folder and
returns that folder; the driver publishes it (``run.land``) so that every stage works,
Snowflake's included. Rerunning a run id trains only the partitions that have no model yet.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardtrain.data.data_connector import DataConnector
from shardtrain.errors import ConfigError, NoModelReturnedError, StageError
from shardtrain.model.publish import library_versions
from shardtrain.modeling.distributors.many_model.context import PartitionContext
from shardtrain.modeling.distributors.many_model.entities import (
    ExecutionOptions,
    PartitionDetails,
    PartitionStatus,
)
from shardtrain.modeling.distributors.many_model.partitions import Partition
from shardtrain.modeling.distributors.many_model.run import (
    ManyModelRun,
    new_manifest,
    prepare_run,
    read_run_manifest,
    session_for,
    submit,
)
from shardtrain.modeling.distributors.many_model.transfer import FILES, PUBLISH, pack
from shardtrain.modeling.serde import ModelSerde, serde_for_model
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage, join

logger = logging.getLogger("shardtrain")


def _train_partition(
    train_func: Callable,
    serde: ModelSerde | None,
    part: Partition,
    run_id: str,
    stage_name: str,
    partition_by: str,
) -> dict[str, Any]:
    """Train one partition and write its model (and the context's extra files) into a local
    folder; returns the partition's record with the folder packed for the driver to publish.
    Never raises: a failure is the partition's record, with its traceback."""
    started = time.monotonic()
    details = PartitionDetails(part.partition_id, folder=part.folder, num_rows=part.num_rows)
    payload: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="shardtrain-mmt-") as tmp:
            folder = Path(tmp)
            context = PartitionContext(part.partition_id, run_id, stage_name, folder)
            connector = part.connector()
            model = train_func(connector, context)
            if model is None:
                raise NoModelReturnedError(
                    f"the train function returned None for partition {part.partition_id!r}: it "
                    "must return the model it trained (return model).",
                    partition_id=part.partition_id,
                    run_id=run_id,
                )
            chosen = serde or serde_for_model(model)
            chosen.write(model, str(folder / chosen.filename))
            payload[FILES] = pack(folder)
        payload[PUBLISH] = {
            "framework": chosen.framework,
            "model_file": chosen.filename,
            "metrics": context.metrics,
            "params": {
                "partition_by": partition_by,
                "partition_id": part.partition_id,
                "run_id": run_id,
                "serde": chosen.describe(),
            },
            "input_cols": [c for c in connector.columns if c != partition_by],
            "num_rows": {"train": part.num_rows},
            "source": connector.describe(),
            # Read here, where the framework is imported: the driver then need not import it.
            "versions": library_versions(chosen.framework),
        }
        details.status = PartitionStatus.DONE
        details.metrics = context.metrics
        details.serde = chosen.describe()
    except Exception as exc:  # noqa: BLE001 - the partition's failure, reported not raised
        details.fail(exc)
        payload = {}
    details.duration_s = round(time.monotonic() - started, 3)
    return {**details.to_dict(), **payload}


class ManyModelTraining:
    """Train one model per partition of the data, each as its own Ray task.

    Args:
        train_func: ``train_func(data_connector, context) -> model``; ``data_connector`` holds
            the partition's rows, ``context.partition_id`` names it.
        stage_name: where models go (any stage URI ``open_stage`` takes).
        serde: how models are written; default: by the returned model's library (XGBoost
            UBJSON, LightGBM text, torch state dict). ``PickleSerde()`` only when asked for.

    Example:
        >>> def train(data_connector, context):  # doctest: +SKIP
        ...     import xgboost
        ...     df = data_connector.to_pandas()
        ...     return xgboost.XGBRegressor(n_estimators=20).fit(df[["x"]], df["y"])
        >>> run = ManyModelTraining(train, "/tmp/stage").run(  # doctest: +SKIP
        ...     partition_by="store", data=frame, run_id="stores-v1")
        >>> run.wait()  # doctest: +SKIP
        <RunStatus.SUCCESS: 'SUCCESS'>
    """

    def __init__(
        self,
        train_func: Callable[[DataConnector, PartitionContext], Any],
        stage_name: str | None = None,
        serde: ModelSerde | None = None,
        *,
        session: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not callable(train_func):
            raise ConfigError(f"train_func must be callable, got {type(train_func).__name__}.")
        if serde is not None and not isinstance(serde, ModelSerde):
            raise ConfigError(
                f"serde must be a ModelSerde (XGBoostSerde(), LightGBMSerde(), TorchSerde(), "
                f"PickleSerde() or your subclass), got {type(serde).__name__}."
            )
        self.train_func = train_func
        self.stage_name = stage_name if stage_name is not None else open_stage(None).uri
        self.serde = serde
        self.session = session
        self.storage_options = storage_options

    def run(
        self,
        *,
        partition_by: str,
        snowpark_dataframe: Any = None,
        data: Any = None,
        run_id: str | None = None,
        execution_options: ExecutionOptions | dict | None = None,
        on_existing_artifacts: str = "resume",
        ray_address: str | None = None,
    ) -> ManyModelRun:
        """Start training every partition; returns the run at once (``run.wait()`` blocks).

        ``on_existing_artifacts`` when ``run_id`` already has a run on the stage: "resume"
        (default) trains only the partitions without a published model; "overwrite" trains
        every partition again; "error" refuses. Bad input (missing column, null or empty
        partitions, no data) raises before any task starts.
        """
        if on_existing_artifacts not in ("resume", "overwrite", "error"):
            raise ConfigError(
                f"on_existing_artifacts must be 'resume', 'overwrite' or 'error', got "
                f"{on_existing_artifacts!r}."
            )
        session = session_for(self.session, snowpark_dataframe)
        stage = open_stage(self.stage_name, session=session, storage_options=self.storage_options)
        run_id, options, parts = prepare_run(
            snowpark_dataframe,
            data,
            run_id,
            execution_options,
            partition_by,
            self.storage_options,
            ray_address,
        )
        previous = read_run_manifest(stage, run_id) or {}
        if previous and on_existing_artifacts == "error":
            raise StageError(
                f"run {run_id!r} already exists on {stage.uri}: use another run_id, or "
                "on_existing_artifacts='resume' (train what has no model) or 'overwrite'.",
                run_id=run_id,
            )
        if on_existing_artifacts == "overwrite":
            previous = {**previous, "partitions": {}}
        done = {
            pid: rec
            for pid, rec in previous.get("partitions", {}).items()
            if rec.get("status") == "DONE" and _has_model(stage, run_id, rec)
        }
        manifest = new_manifest("training", run_id, stage, partition_by)
        if previous.get("created_at"):
            manifest["created_at"] = previous["created_at"]
        manifest["partitions"] = {**previous.get("partitions", {})}
        if self.serde is not None:
            manifest["serde"] = self.serde.describe()
        elif previous.get("serde"):
            manifest["serde"] = previous["serde"]
        todo = [p for p in parts if p.partition_id not in done]
        for part in todo:
            manifest["partitions"][part.partition_id] = {
                **PartitionDetails(
                    part.partition_id, folder=part.folder, num_rows=part.num_rows
                ).to_dict(),
                "attempts": previous.get("partitions", {})
                .get(part.partition_id, {})
                .get("attempts", 0),
            }
        logger.info(
            "many-model run %s: %d partitions to train, %d already trained",
            run_id,
            len(todo),
            len(parts) - len(todo),
        )
        pending = submit(
            _train_partition,
            options,
            self.train_func,
            todo,
            lambda part: (self.serde, part, run_id, stage.uri, partition_by),
        )
        run = ManyModelRun(
            run_id,
            self.stage_name,
            manifest,
            stage=stage,
            serde=self.serde,
            pending=pending,
            storage_options=self.storage_options,
            session=session,
        )
        run._fail_fast = options.fail_fast
        run._write()
        return run


def _has_model(stage: Stage, run_id: str, record: dict[str, Any]) -> bool:
    from shardtrain.model.manifest import MANIFEST

    folder = record.get("folder")
    if not folder:
        return False
    return stage.exists(join("model", run_id, folder, MANIFEST))
