"""Many-model training and inference: one model per data partition, in one Ray job.

Why: a model per store / region / product group is usually done in an orchestrator with one
mapped task (and one interpreter and cluster start) per partition. Here one call plans the
partitions on the driver, runs each as a Ray task with its own resources (Ray reuses warm
worker processes between tasks), and the driver publishes each returned model through the one
publish path (``publish_model``) under ``<stage>/model/<run_id>/<partition>/`` with its own
manifest, as results arrive; it keeps a run-level manifest ``<stage>/model/<run_id>/_RUN.json``
(whole-file writes) listing every partition's status, location, metrics and, for a failure,
its traceback. Because only the driver touches the stage, a Snowflake stage (through the
Snowpark ``session=`` the user passes) works as well as a folder or an fsspec URL.

Names follow the vendor's ``snowflake.ml.modeling.distributors.many_model``:
``ManyModelTraining(train_func, stage_name, serde=None).run(partition_by=...,
snowpark_dataframe=...)`` returns a ``ManyModelRun`` (``wait()``, ``partition_details``,
``get_model(pid)``, ``ManyModelRun.restore_from(run_id, stage_name)``), and
``ManyModelInference(func, stage_name, training_run_id)``. Differences: data may be any
DataConnector source (``data=``), models are stored pickle-free by default, and rerunning a
run id trains only the partitions that have no model yet.

The package's modules, one concept each: ``entities`` (statuses, details, task options),
``context`` (``PartitionContext``), ``partitions`` (planning from each source), ``transfer``
(files between tasks and the driver), ``run`` (``ManyModelRun`` and its manifest),
``training``, ``inference``, ``orchestration`` (what the Airflow/Prefect wrappers call).
"""

from shardtrain.modeling.distributors.many_model.context import PartitionContext
from shardtrain.modeling.distributors.many_model.entities import (
    ExecutionOptions,
    PartitionDetails,
    PartitionStatus,
    RunStatus,
)
from shardtrain.modeling.distributors.many_model.inference import ManyModelInference
from shardtrain.modeling.distributors.many_model.orchestration import (
    predictions_to_table,
    register_partitions,
    serde_named,
    train_many_models,
)
from shardtrain.modeling.distributors.many_model.partitions import plan_partitions
from shardtrain.modeling.distributors.many_model.run import (
    RUN_MANIFEST,
    ManyModelRun,
    is_run_manifest,
)
from shardtrain.modeling.distributors.many_model.training import ManyModelTraining
from shardtrain.modeling.serde import (
    LightGBMSerde,
    ModelSerde,
    PickleSerde,
    TorchSerde,
    XGBoostSerde,
)

__all__ = [
    "RUN_MANIFEST",
    "ExecutionOptions",
    "LightGBMSerde",
    "ManyModelInference",
    "ManyModelRun",
    "ManyModelTraining",
    "ModelSerde",
    "PartitionContext",
    "PartitionDetails",
    "PartitionStatus",
    "PickleSerde",
    "RunStatus",
    "TorchSerde",
    "XGBoostSerde",
    "is_run_manifest",
    "plan_partitions",
    "predictions_to_table",
    "register_partitions",
    "serde_named",
    "train_many_models",
]
