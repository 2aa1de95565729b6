"""LightGBM's rank-side code, run inside the Ray actors (this module imports ``lightgbm``;
the estimator imports it only when it launches ranks).

Phase 1 (``prepare_rank``): each rank reserves the port LightGBM will listen on and rank 0
opens the metric hub. Phase 2 (``train_rank``): each rank builds its ``Dataset`` from its
shard's Arrow table (LightGBM reads the Arrow columns in place: no numpy matrix) and trains
data-parallel; when the fit evaluates anything, per-round metric statistics are summed over
``runtime.collective`` so every rank sees the global metric. LightGBM is imported without
scikit-learn in the workers (``worker_imports``).
"""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import ray

from shardtrain.data import numeric
from shardtrain.modeling.distributors.boosting import BoostingJob, BoostingRankResult
from shardtrain.modeling.distributors.worker_imports import import_framework
from shardtrain.runtime import collective
from shardtrain.runtime.events import RoundMetrics

lightgbm = import_framework("lightgbm")

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


def prepare_rank(reporter, *, rank: int, token: str) -> dict:
    """Phase 1: each rank reserves its LightGBM port; rank 0 also opens the metric hub."""
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
    """LightGBM callback: global metrics each round (reported by rank 0), checkpoints, and
    early stopping decided on the global metric, so every rank stops on the same round."""
    state = {"best": None, "best_iter": 0, "best_list": None}

    def callback(env):
        results = env.evaluation_result_list or []
        counts = [rows[name] for name, *_ in results]
        # Every rank has the same valid sets: with none, no rank joins the allreduce.
        merged = _global_metrics(allreduce, results, counts) if results else []
        metrics: dict[str, dict[str, float]] = {}
        for name, metric, value, _ in merged:
            metrics.setdefault(name, {})[metric] = float(value)
        if rank == 0:
            reporter.report(RoundMetrics(env.iteration + 1, metrics))
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


def train_rank(
    reporter,
    *,
    rank: int,
    world_size: int,
    token: str,
    machines: list[dict],
    hub: tuple[str, int],
    job: BoostingJob,
    train,
    evals,
) -> BoostingRankResult:
    """One rank of a fit (runs inside a Ray actor)."""
    params = dict(job.params)
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
        objective = str(params.get("objective", ""))
        # The Dataset holds the only reference to the shard's table, and drops it once built
        # (free_raw_data): the rank holds no second copy of its features while binning.
        dtrain = lightgbm.Dataset(
            *numeric.shard_table(train, job.input_cols, job.label_col, job.label_rule, objective),
            feature_name=job.input_cols,
            free_raw_data=True,
        )
        # The training set is a valid set only when the fit wants its metric (see
        # boosting.wants_train_metric): otherwise LightGBM skips evaluating it each round.
        valid_sets, names = ([dtrain], ["train"]) if job.evaluate_train else ([], [])
        rows = {"train": len(dtrain.get_label())}
        if evals is not None:
            deval = lightgbm.Dataset(
                *numeric.shard_table(
                    evals, job.input_cols, job.label_col, job.label_rule, objective
                ),
                reference=dtrain,
            )
            valid_sets.append(deval)
            names.append("eval")
            rows["eval"] = len(deval.get_label())
        init = lightgbm.Booster(model_str=job.init_model.decode()) if job.init_model else None
        loaded = time.perf_counter()
        # Release the reserved port only now, so nothing else can take it while the shard
        # loads; LightGBM binds it a moment later.
        _release_port(token)
        booster = lightgbm.train(
            params,
            dtrain,
            num_boost_round=job.num_boost_round,
            valid_sets=valid_sets,
            valid_names=names,
            init_model=init,
            callbacks=[
                _callback(
                    reporter,
                    rank,
                    allreduce,
                    rows,
                    job.checkpoint_every,
                    job.early_stopping_rounds,
                    names[-1] if names else None,
                )
            ],
        )
    finally:
        _release_port(token)
        allreduce.close()
    # LightGBM bins lazily: "data" is reading the shard, "training" includes binning.
    return BoostingRankResult(
        rows=rows["train"],
        best_iteration=booster.best_iteration,
        data_seconds=loaded - started,
        training_seconds=time.perf_counter() - loaded,
        model=booster.model_to_string().encode() if rank == 0 else None,
    )
