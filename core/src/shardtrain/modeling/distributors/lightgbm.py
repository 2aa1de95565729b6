"""Distributed LightGBM on Ray: ``LightGBMEstimator`` and ``LightGBMScalingConfig``.

Data-parallel training over LightGBM's own socket network (``tree_learner=data``, one
``machines`` entry per rank, each on a free ``local_listen_port``). Each rank builds its
``Dataset`` from its shard's Arrow table (no pandas). LightGBM evaluates metrics on each
rank's local rows only, so ranks sum per-round metric statistics over a small TCP allreduce
(``runtime.collective``): every rank then sees the global metric, and early stopping decides
the same round everywhere (a rank stopping alone would hang the others).
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardtrain.config import FailureConfig
from shardtrain.errors import ConfigError, ScalingConfigError, WorkerError
from shardtrain.modeling.distributors import _gbdt
from shardtrain.runtime import collective
from shardtrain.runtime.resources import cluster_shape, resolve_gbdt_shape

MODEL_FILE = "model.txt"
PORT_RETRIES = 2
#: Metrics that are means over rows: the global value is the row-weighted mean.
_MEAN_METRICS = {
    "l2",
    "l1",
    "mse",
    "mae",
    "mape",
    "huber",
    "fair",
    "poisson",
    "quantile",
    "gamma",
    "gamma_deviance",
    "tweedie",
    "binary_logloss",
    "binary_error",
    "multi_logloss",
    "multi_error",
    "cross_entropy",
    "cross_entropy_lambda",
    "kullback_leibler",
}
_ROOT_MEAN_METRICS = {"rmse", "l2_root"}


@dataclass(frozen=True)
class LightGBMScalingConfig(_gbdt.GBDTScalingConfig):
    """The same fields as ``XGBScalingConfig``: -1 automatic, ``use_gpu=None`` detects."""


_HUBS: dict[str, socket.socket] = {}


_PORTS: dict[str, socket.socket] = {}


def _reserve_port() -> tuple[socket.socket, int]:
    """A bound socket on a free port, held until LightGBM is about to bind that port itself."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", 0))
    return sock, sock.getsockname()[1]


def _release_port(token: str) -> None:
    held = _PORTS.pop(token, None)
    if held is not None:
        held.close()


def _prepare_rank(reporter, *, rank: int, token: str):
    """Phase 1: each rank reserves its LightGBM port; rank 0 also opens the metric hub."""
    import ray

    hub_port = None
    if rank == 0:
        server, hub_port = collective.open_hub()
        _HUBS[token] = server
    held, port = _reserve_port()
    _PORTS[token] = held
    return {"ip": ray.util.get_node_ip_address(), "port": port, "hub_port": hub_port}


def _global_metrics(allreduce, results, counts):
    """LightGBM's per-rank ``evaluation_result_list`` -> the same global list on every rank."""
    stats = []
    for (_name, metric, value, *_), count in zip(results, counts[: len(results)], strict=True):
        squared = metric in _ROOT_MEAN_METRICS
        stats.append((value * value if squared else value) * count)
    totals = allreduce.sum(np.array(stats + list(counts[: len(results)]), dtype=np.float64))
    merged = []
    for i, (data_name, metric, _value, higher, *_) in enumerate(results):
        mean = totals[i] / max(totals[len(results) + i], 1.0)
        merged.append(
            (data_name, metric, math.sqrt(mean) if metric in _ROOT_MEAN_METRICS else mean, higher)
        )
    return merged


def _callback(reporter, rank, allreduce, rows, checkpoint_every, early_stopping_rounds, stop_set):
    import lightgbm

    state = {"best": None, "best_iter": 0, "best_list": None}

    def callback(env):
        results = env.evaluation_result_list or []
        counts = [rows[name] for name, *_ in results]
        merged = _global_metrics(allreduce, results, counts)
        metrics: dict[str, dict[str, float]] = {}
        for name, metric, value, _ in merged:
            metrics.setdefault(name, {})[metric] = float(value)
        if rank == 0:
            reporter.report({"round": env.iteration + 1, "metrics": metrics})
            if checkpoint_every and (env.iteration + 1) % checkpoint_every == 0:
                reporter.checkpoint(env.iteration + 1, env.model.model_to_string().encode())
        if early_stopping_rounds:
            watched = [m for m in merged if m[0] == stop_set]
            if watched:
                _, _, score, higher = watched[0]
                better = state["best"] is None or (
                    score > state["best"] if higher else score < state["best"]
                )
                if better:
                    state.update(best=score, best_iter=env.iteration, best_list=merged)
                elif env.iteration - state["best_iter"] >= early_stopping_rounds:
                    raise lightgbm.callback.EarlyStopException(
                        state["best_iter"], state["best_list"]
                    )

    callback.order = 30
    return callback


def _shard_matrix(connector, input_cols, label_col) -> tuple[np.ndarray, np.ndarray]:
    """The shard as one float32 feature matrix and label, filled from Arrow batches."""
    features, labels = [], []
    for x, y in _gbdt.matrix_batches(connector, input_cols, label_col):
        features.append(x)
        labels.append(y)
    matrix = np.concatenate(features) if features else np.empty((0, len(input_cols)), np.float32)
    label = np.concatenate(labels) if labels else np.empty((0,), np.float32)
    return matrix, label


def _train_rank(
    reporter,
    *,
    rank,
    world_size,
    token,
    machines,
    hub,
    params,
    num_boost_round,
    train,
    evals,
    input_cols,
    label_col,
    init_model,
    early_stopping_rounds,
    checkpoint_every,
):
    """One rank of a fit (runs inside a Ray actor)."""
    import lightgbm

    params = dict(params)
    if world_size > 1:
        params.update(
            tree_learner=params.get("tree_learner", "data"),
            num_machines=world_size,
            machines=",".join(f"{m['ip']}:{m['port']}" for m in machines),
            local_listen_port=machines[rank]["port"],
            pre_partition=True,
        )
    allreduce = collective.StarAllreduce(rank, world_size, hub, _HUBS.pop(token, None))
    try:
        started = time.perf_counter()
        x, y = _shard_matrix(train, input_cols, label_col)
        dtrain = lightgbm.Dataset(x, label=y, feature_name=input_cols, free_raw_data=True)
        valid_sets, names, rows = [dtrain], ["train"], {"train": len(y)}
        if evals is not None:
            ex, ey = _shard_matrix(evals, input_cols, label_col)
            valid_sets.append(lightgbm.Dataset(ex, label=ey, reference=dtrain))
            names.append("eval")
            rows["eval"] = len(ey)
        init = lightgbm.Booster(model_str=init_model.decode()) if init_model else None
        loaded = time.perf_counter()
        # Release the reserved port only now, so nothing else can take it while the shard
        # loads; LightGBM binds it a moment later.
        _release_port(token)
        booster = lightgbm.train(
            params,
            dtrain,
            num_boost_round=num_boost_round,
            valid_sets=valid_sets,
            valid_names=names,
            init_model=init,
            callbacks=[
                _callback(
                    reporter,
                    rank,
                    allreduce,
                    rows,
                    checkpoint_every,
                    early_stopping_rounds,
                    names[-1],
                )
            ],
        )
    finally:
        _release_port(token)
        allreduce.close()
    result = {
        "rows": rows["train"],
        "best_iteration": booster.best_iteration,
        # LightGBM bins lazily: "data" is reading the shard, "training" includes binning.
        "seconds": {"data": loaded - started, "training": time.perf_counter() - loaded},
    }
    if rank == 0:
        result["model"] = booster.model_to_string().encode()
    return result


def _lgb_predictor(model: bytes):
    import lightgbm

    booster = lightgbm.Booster(model_str=model.decode())
    return lambda features: booster.predict(features)


class LightGBMEstimator(_gbdt.DistributedGBDT):
    """Distributed LightGBM on Ray with the vendor's API.

    Args:
        n_estimators: boosting rounds (``n_estimators``/``num_iterations`` in ``params`` win).
        objective: the objective (``objective`` in ``params`` wins).
        params: LightGBM parameters; ``early_stopping_rounds`` (or ``early_stopping_round``)
            stops on the eval set's first metric, decided globally.
        scaling_config: a ``LightGBMScalingConfig`` (default: everything the cluster has).
        failure_config: a ``FailureConfig`` (restarts and checkpoint frequency).

    Example:
        >>> est = LightGBMEstimator(params={"num_leaves": 63})                  # doctest: +SKIP
        >>> booster = est.fit(train_connector, ["A", "B"], "Y", eval_set=eval_connector)  # doctest: +SKIP
    """

    framework = "lightgbm"
    model_file = MODEL_FILE
    _predictor = staticmethod(_lgb_predictor)

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str = "regression",
        params: dict[str, Any] | None = None,
        scaling_config: LightGBMScalingConfig | None = None,
        failure_config: FailureConfig | None = None,
    ) -> None:
        super().__init__(
            n_estimators,
            objective,
            params,
            scaling_config or LightGBMScalingConfig(),
            failure_config,
        )

    def _resolve(self):
        params = dict(self.params)
        rounds = _gbdt.pop_rounds(
            params,
            self.n_estimators,
            ("n_estimators", "num_iterations", "num_boost_round", "num_rounds"),
        )
        params.setdefault("objective", self.objective)
        params.setdefault("verbose", -1)
        early = params.pop("early_stopping_rounds", params.pop("early_stopping_round", None))
        shape = resolve_gbdt_shape(
            self.scaling_config.num_workers,
            self.scaling_config.num_cpu_per_worker,
            self.scaling_config.use_gpu,
            cluster_shape(),
        )
        _gbdt.check_thread_params(params, ("num_threads", "n_jobs", "nthread"), shape.cpus)
        if (
            str(params.get("device_type", params.get("device", "cpu"))) in ("gpu", "cuda")
            and not shape.gpus
        ):
            raise ScalingConfigError(
                "params ask for a GPU but the scaling config gives workers "
                "none; set use_gpu=True or drop the GPU parameters.",
                field="use_gpu",
            )
        if params.get("tree_learner", "data") not in ("data", "data_parallel", "serial"):
            raise ConfigError(
                "LightGBMEstimator trains data-parallel (each rank holds a row "
                f"shard); tree_learner={params['tree_learner']!r} is not supported."
            )
        params["num_threads"] = int(shape.cpus)
        return params, rounds, early, shape

    def _attempt(self, *args, **kwargs):
        # A reserved port is released a moment before LightGBM binds it; should another
        # process take it in that moment, LightGBM fails to bind: retry on fresh ports.
        for tries in range(PORT_RETRIES + 1):
            try:
                return super()._attempt(*args, **kwargs)
            except WorkerError as exc:
                if "Binding port" not in str(exc) or tries == PORT_RETRIES:
                    raise
                _gbdt.emit(
                    f"LightGBM could not bind its port ({exc.message.splitlines()[0]}); "
                    "retrying on fresh ports."
                )

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done):
        token = uuid.uuid4().hex
        world = group.world_size
        machines = group.run(_prepare_rank, [dict(rank=r, token=token) for r in range(world)])
        hub = (machines[0]["ip"], machines[0]["hub_port"])
        kwargs = [
            dict(
                job,
                rank=r,
                world_size=world,
                token=token,
                machines=machines,
                hub=hub,
                train=train_shards[r],
                evals=eval_shards[r],
            )
            for r in range(world)
        ]
        return group.run(_train_rank, kwargs, on_progress, have_step=done)

    def _load(self, model: bytes):
        import lightgbm

        return lightgbm.Booster(model_str=model.decode())

    def _dump(self, booster) -> bytes:
        return booster.model_to_string().encode()
