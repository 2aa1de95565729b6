"""``ManyModelInference``: apply each partition's model from a training run to its rows.

Why: the same partitions, the same Ray tasks, the same manifest as training, so predictions
for thousands of partitions are one call. Models and predictions cross the driver only where
the workers cannot reach the stage (Snowflake through the driver's session, ``memory://``):
then the driver fetches and ships each model's verified files, and uploads the predictions a
task returns; local and remote-filesystem stages are read and written by the workers.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from shardtrain.errors import PartitionError
from shardtrain.model.artifact import check_request_id
from shardtrain.model.load import fetched_model
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
    session_for,
    submit,
)
from shardtrain.modeling.distributors.many_model.transfer import (
    FILES,
    RESULT,
    model_payload,
    pack,
    unpack,
    workers_reach,
)
from shardtrain.modeling.serde import ModelSerde, serde_from_record
from shardtrain.stage import open_stage
from shardtrain.stage.base import join


@contextlib.contextmanager
def _model_file(
    payload: dict[str, Any], storage_options: dict[str, Any] | None
) -> Iterator[tuple[Path, str | None, list[str]]]:
    """The model's folder, file name and input columns, from its location (read here) or from
    the files the driver shipped."""
    if "location" in payload:
        with fetched_model(payload["location"], storage_options=storage_options) as (a, folder):
            yield folder, a.model_file, list(a.input_cols)
        return
    with tempfile.TemporaryDirectory(prefix="shardtrain-mmi-model-") as tmp:
        unpack(payload[FILES], Path(tmp))
        yield Path(tmp), payload.get("model_file"), payload.get("input_cols") or []


def _infer_partition(
    func: Callable | None,
    serde: ModelSerde | None,
    part: Partition,
    model_src: dict[str, Any] | None,
    serde_record: dict[str, Any],
    output_uri: str | None,
    storage_options: dict[str, Any] | None,
    run_id: str,
    partition_by: str,
    prediction_col: str,
    batch_size: int,
) -> dict[str, Any]:
    """Predict one partition into ``<run_id>/<partition>/predictions.parquet``: written to
    ``output_uri`` here, or (None: the driver writes it) returned packed. Never raises."""
    import pyarrow.parquet as pq

    started = time.monotonic()
    details = PartitionDetails(part.partition_id, folder=part.folder, num_rows=part.num_rows)
    payload: dict[str, Any] = {}
    try:
        if model_src is None:
            raise PartitionError(
                f"the training run has no model for partition {part.partition_id!r}.",
                partition_id=part.partition_id,
                run_id=run_id,
            )
        chosen = serde_from_record(serde_record, serde)
        with _model_file(model_src, storage_options) as (mfolder, model_file, input_cols):
            model = chosen.read(str(mfolder / (model_file or chosen.filename)))
            features = [c for c in input_cols if c != partition_by]
        connector = part.connector()
        prefix = join(run_id, part.folder)
        with tempfile.TemporaryDirectory(prefix="shardtrain-mmi-") as tmp:
            context = PartitionContext(part.partition_id, run_id, output_uri or "", Path(tmp))
            out = Path(tmp) / "predictions.parquet"
            rows = 0
            if func is not None:
                result = func(connector, model, context)
                if result is not None:
                    table = (
                        result
                        if isinstance(result, pa.Table)
                        else pa.Table.from_pandas(result, preserve_index=False)
                    )
                    pq.write_table(table, out)
                    rows = table.num_rows
            else:
                writer = None
                for batch in connector.iter_batches(batch_size=batch_size):
                    frame = batch.to_pandas()
                    cols = _model_features(model) or [c for c in features if c in frame]
                    predictions = model.predict(frame[cols])
                    table = pa.Table.from_batches([batch]).append_column(
                        prediction_col, pa.array(_flat(predictions))
                    )
                    if writer is None:
                        writer = pq.ParquetWriter(out, table.schema)
                    writer.write_table(table)
                    rows += table.num_rows
                if writer is not None:
                    writer.close()
            files = {join(prefix, rel): data for rel, data in pack(Path(tmp)).items()}
        if output_uri is None:
            payload[FILES] = files
        else:
            stage = open_stage(output_uri, storage_options=storage_options)
            for path, data in files.items():
                stage.write_bytes(path, data)
        payload[RESULT] = join(prefix, "predictions.parquet") if rows else None
        details.status = PartitionStatus.DONE
        details.metrics = {"inference": {"rows": float(rows)}}
    except Exception as exc:  # noqa: BLE001 - the partition's failure, reported not raised
        details.fail(exc)
        payload = {}
    details.duration_s = round(time.monotonic() - started, 3)
    return {**details.to_dict(), **payload}


def _model_features(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    if names is None and hasattr(model, "feature_names"):
        names = model.feature_names
    if names is None and hasattr(model, "feature_name"):
        try:
            names = model.feature_name()
        except Exception:  # noqa: BLE001
            names = None
    return [str(n) for n in names] if names is not None else None


def _flat(predictions: Any) -> Any:
    import numpy as np

    arr = np.asarray(predictions)
    return arr if arr.ndim == 1 else list(arr)


class ManyModelInference:
    """Apply each partition's model (from a training run) to that partition's rows.

    Args:
        func: ``func(data_connector, model, context)`` returning predictions (pandas/Arrow) to
            write, as the vendor's; None: ``model.predict`` on the model's feature columns,
            batch by batch (streaming), each batch's rows written with a ``prediction`` column.
        stage_name: the training run's stage.
        training_run_id: the run whose models to use.
        serde: to read a pickle or custom-serde run's models.
        session: the Snowpark session for a Snowflake stage (models and predictions then
            pass through this process).
        output_stage: where predictions go (default ``<stage_name>/predictions``):
            ``<output_stage>/<run_id>/<partition>/predictions.parquet``.

    ``run(...).wait()``, like training; ``predictions_to_table(run, session, name)``
    appends every partition's predictions to a Snowflake table.
    """

    def __init__(
        self,
        func: Callable | None,
        stage_name: str,
        training_run_id: str,
        serde: ModelSerde | None = None,
        *,
        output_stage: str | None = None,
        prediction_col: str = "prediction",
        batch_size: int = 65_536,
        session: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.func = func
        self.stage_name = stage_name
        self.training_run_id = check_request_id(training_run_id)
        self.serde = serde
        self.session = session
        self.storage_options = storage_options
        self.prediction_col = prediction_col
        self.batch_size = batch_size
        self.output_stage = output_stage  # default: beside the training run's stage

    def run(
        self,
        *,
        partition_by: str,
        snowpark_dataframe: Any = None,
        data: Any = None,
        run_id: str | None = None,
        execution_options: ExecutionOptions | dict | None = None,
    ) -> ManyModelRun:
        session = session_for(self.session, snowpark_dataframe)
        training = ManyModelRun.restore_from(
            self.training_run_id,
            self.stage_name,
            serde=self.serde,
            session=session,
            storage_options=self.storage_options,
        )
        run_id, options, parts = prepare_run(
            snowpark_dataframe, data, run_id, execution_options, partition_by, self.storage_options
        )
        trained = training._manifest["partitions"]
        serde_record = training._manifest.get("serde") or {}
        out = open_stage(
            self.output_stage or training._stage.child_uri("predictions"),
            session=session,
            storage_options=self.storage_options,
        )
        manifest = new_manifest(
            "inference", run_id, out, partition_by, training_run_id=self.training_run_id
        )
        manifest["partitions"] = {
            p.partition_id: PartitionDetails(
                p.partition_id, folder=p.folder, num_rows=p.num_rows
            ).to_dict()
            for p in parts
        }

        def args(part: Partition) -> tuple:
            rec = trained.get(part.partition_id, {})
            location = rec.get("location") if rec.get("status") == "DONE" else None
            model_src = location and model_payload(
                training._stage,
                location,
                session=session,
                storage_options=self.storage_options,
            )
            return (
                self.serde,
                part,
                model_src or None,
                rec.get("serde") or serde_record,
                out.uri if workers_reach(out) else None,
                self.storage_options,
                run_id,
                partition_by,
                self.prediction_col,
                self.batch_size,
            )

        pending = submit(_infer_partition, options, self.func, parts, args)
        # the inference manifest lives beside its predictions: <output_stage>/model/<run_id>/
        run = ManyModelRun(
            run_id,
            out.uri,
            manifest,
            stage=out,
            pending=pending,
            storage_options=self.storage_options,
            session=session,
        )
        run._write()
        return run
