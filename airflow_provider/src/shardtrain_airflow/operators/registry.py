"""RegisterModelOperator: register a training task's model in a model registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from shardtrain.integrations import resolve_module
from shardtrain_airflow.hooks.snowpark import optional_session
from shardtrain_airflow.library_logs import library_logs


class RegisterModelOperator(BaseOperator):
    """Register a trained model (a training task's XCom) in a model registry.

    ``model`` is the artifact dict a training operator returned (``train.output``) or a model
    URI; ``registry`` is None/``"mlflow"`` (the embedded sqlite MLflow registry), an MLflow
    tracking URI, or ``"snowflake"`` (with ``snowflake_conn_id``). ``module`` is the
    ``torch.nn.Module`` for a PyTorch state dict: a class or factory, or its dotted path. A
    retried task (same artifact) returns the version it already registered. The XCom is the
    ``RegisteredModel`` as a dict. Given a many-model run manifest (``ManyModelTrainOperator``'s
    XCom), it registers every trained partition's model, tagged ``shardtrain.partition``, and
    the XCom is partition id -> ``RegisteredModel`` dict.
    """

    template_fields: Sequence[str] = ("model", "name", "registry", "version", "tags")
    ui_color = "#eefde8"

    def __init__(
        self,
        *,
        model: Any,
        name: str,
        registry: str | None = None,
        version: str | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        module: Any = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model, self.name, self.registry, self.version = model, name, registry, version
        self.metrics, self.tags, self.module = metrics, tags, module
        self.snowflake_conn_id = snowflake_conn_id
        self.storage_options = storage_options

    def execute(self, context: Any) -> dict[str, Any]:
        from shardtrain.model.registry import register_model, registry_libraries

        # MLflow's registry events at info in the task log, not at error
        libraries = registry_libraries(self.registry)
        from shardtrain.modeling.distributors.many_model import (
            is_run_manifest,
            register_partitions,
        )

        many = is_run_manifest(self.model)  # a many-model run: every partition's model
        entry: dict[str, Any] = dict(
            name=self.name,
            registry=self.registry,
            version=self.version,
            metrics=self.metrics,
            tags=self.tags,
            storage_options=self.storage_options,
        )
        with optional_session(self.snowflake_conn_id) as session, library_logs(*libraries):
            if many:
                by_partition = register_partitions(self.model, session=session, **entry)
            else:
                registered = register_model(
                    self.model, session=session, module=resolve_module(self.module), **entry
                )
        if many:
            self.log.info("registered %d partition models as %s", len(by_partition), self.name)
            return by_partition
        self.log.info(
            "registered model: %s version %s (%s) from %s",
            registered.name,
            registered.version,
            registered.model_uri,
            registered.source_uri,
        )
        self._registered = registered  # for get_openlineage_facets_on_complete
        return registered.to_dict()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the optional OpenLineage provider only): the published model
        in, its registry entry out."""
        from shardtrain_airflow.lineage import for_registration

        return for_registration(self)
