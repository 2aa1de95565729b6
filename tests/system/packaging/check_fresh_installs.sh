#!/usr/bin/env bash
# Each distribution as a new user gets it: built (sdist, then the wheel from the sdist),
# `twine check`ed, installed ALONE into a fresh venv with the one line the README documents
# (plus -c constraints.txt), then its example run end to end. `floor` tries the provider on
# another Airflow (AIRFLOW_FLOOR, default the claimed floor 3.3.2, which `provider` already
# runs through constraints.txt) with the dev pins less Airflow's own.
#
# Too slow for the test suite (minutes per venv): run by hand,
#   bash tests/packaging/check_fresh_installs.sh [WORKDIR] [STEP...]
# STEP: build core tune provider collection floor (default: all). Each step prints its time.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-/tmp/shardtrain-fresh}"
shift || true
STEPS="${*:-build core tune provider collection floor}"
PYTHON="${PYTHON:-python3}"
DIST="$WORK/dist"
mkdir -p "$WORK"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0

step() { echo; echo "=== $* ($(date +%T))"; }
timed() { local t0=$SECONDS; "$@"; echo "--- took $((SECONDS - t0)) s: $*"; }
fresh_venv() { rm -rf "$1"; "$PYTHON" -m venv "$1"; "$1/bin/pip" install -q --upgrade pip; }
no_cuda() {  # the CPU-only choice pulls no NCCL / CUDA wheels
    if "$1/bin/pip" list 2>/dev/null | grep -iE '^nvidia-|^xgboost ' ; then
        echo "FAIL: CUDA wheels or the full xgboost wheel in $1"; exit 1
    fi
    echo "ok: no nvidia-* and no full xgboost wheel in $1"
}

dag_run_succeeded() {  # read the metadata DB: the example DAG's run and every task succeeded
    "$PYTHON" - "$AIRFLOW_HOME/airflow.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
runs = db.execute("select state from dag_run where dag_id = 'shardtrain_xgboost'").fetchall()
tasks = db.execute("select task_id, state from task_instance where dag_id = 'shardtrain_xgboost'").fetchall()
assert runs == [("success",)], runs
assert tasks and all(s == "success" for _, s in tasks), tasks
print("ok: dag run success, tasks:", sorted(t for t, _ in tasks))
EOF
}

build() {
    step "build + twine check"
    fresh_venv "$WORK/tools"
    "$WORK/tools/bin/pip" install -q build twine
    rm -rf "$DIST"
    for d in core airflow_provider prefect_collection; do
        timed "$WORK/tools/bin/python" -m build -q --outdir "$DIST" "$REPO/$d"
    done
    "$WORK/tools/bin/twine" check --strict "$DIST"/*
    for w in "$DIST"/*.whl; do  # LICENSE, py.typed and the README inside every wheel
        "$WORK/tools/bin/python" - "$w" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
meta = zipfile.ZipFile(sys.argv[1]).read(next(n for n in names if n.endswith("METADATA"))).decode()
assert any(n.endswith("licenses/LICENSE") for n in names), names
assert any(n.endswith("py.typed") for n in names), names
assert "Description-Content-Type: text/markdown" in meta and "pip install" in meta
print("ok:", sys.argv[1].rsplit("/", 1)[1], "has LICENSE, py.typed, README as description")
EOF
    done
}

core() {
    step "core alone: pip install 'shardtrain[xgboost-cpu]'"
    local V="$WORK/venv-core"
    fresh_venv "$V"
    timed "$V/bin/pip" install -q --find-links "$DIST" 'shardtrain[xgboost-cpu]' -c "$REPO/constraints.txt"
    no_cuda "$V"
    (cd "$WORK" && SHARDTRAIN_HOME="$WORK/home-core" timed "$V/bin/python" -m shardtrain.demo --rows 20000 --rounds 10)
    # lightgbm is not installed here: the error names the extra, before any worker starts
    (cd "$WORK" && RAY_ADDRESS=127.0.0.1:1 "$V/bin/python" - <<'EOF'
import pandas as pd
from shardtrain import LightGBMEstimator, MissingDependencyError
try:
    LightGBMEstimator().fit(pd.DataFrame({"a": [1.0, 2.0], "y": [0.0, 1.0]}), ["a"], "y")
except MissingDependencyError as exc:
    assert "shardtrain[lightgbm]" in str(exc), exc
    print("ok: missing lightgbm ->", exc)
EOF
    )
}

tune() {
    step "tune extra: pip install 'shardtrain[xgboost-cpu,tune]'"
    local V="$WORK/venv-tune"
    fresh_venv "$V"
    timed "$V/bin/pip" install -q --find-links "$DIST" 'shardtrain[xgboost-cpu,tune]' -c "$REPO/constraints.txt"
    no_cuda "$V"
    # Ray Tune on the core's ray[default] alone: Optuna's search around XGBEstimator, the
    # best model published and loadable.
    (cd "$WORK" && SHARDTRAIN_HOME="$WORK/home-tune" timed "$V/bin/python" - <<'EOF'
import numpy as np
import pandas as pd
import xgboost
from shardtrain import XGBEstimator, load_model
from shardtrain.modeling import tune
from shardtrain.modeling.tune import BayesOpt, get_tuner_context

rng = np.random.default_rng(0)
frame = pd.DataFrame(rng.standard_normal((2000, 4)), columns=list("abcd"))
frame["y"] = frame["a"] * 2 + frame["b"] + rng.standard_normal(2000) * 0.1


def train_func():
    context = get_tuner_context()
    data = context.get_dataset_map()["train"].to_pandas()  # a DataConnector
    estimator = XGBEstimator(n_estimators=10, params={"eta": context.get_hyper_params()["eta"]})
    booster = estimator.fit(data, input_cols=list("abcd"), label_col="y")
    error = booster.predict(xgboost.DMatrix(data[list("abcd")])) - data["y"].to_numpy()
    context.report(metrics={"rmse": float(np.sqrt(np.mean(error**2)))}, model=booster)


results = tune.Tuner(
    train_func,
    {"eta": tune.loguniform(0.05, 0.5)},
    tune.TunerConfig(metric="rmse", mode="min", search_alg=BayesOpt(), num_trials=4),
).run(dataset_map={"train": frame})
assert len(results.results) == 4 and (results.results["status"] == "ok").all(), results.results
best = load_model(results.artifact)
print("ok: BayesOpt tuner, 4 trials, best rmse", float(results.best_result["rmse"].iloc[0]), type(best).__name__)
EOF
    )
}

provider() {
    step "provider alone: pip install 'airflow-provider-shardtrain[xgboost-cpu,lightgbm,torch,mlflow]'"
    local V="$WORK/venv-provider" H="$WORK/airflow-provider"
    fresh_venv "$V"
    timed "$V/bin/pip" install -q --find-links "$DIST" \
        'airflow-provider-shardtrain[xgboost-cpu,lightgbm,torch,mlflow]' -c "$REPO/constraints.txt"
    no_cuda "$V"
    rm -rf "$H" && mkdir -p "$H" && cp -r "$REPO/dags" "$H/dags"
    export AIRFLOW_HOME="$H/home" AIRFLOW__CORE__DAGS_FOLDER="$H/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
    timed "$V/bin/airflow" db migrate >/dev/null
    "$V/bin/airflow" providers behaviours 2>/dev/null | grep -w ray
    (cd "$H" && SHARDTRAIN_HOME="$H/shardtrain" timed "$V/bin/python" dags/xgboost_training.py 2>&1 \
        | tee "$H/run.log" | grep -E "holdout rmse|Registered|state=success|Marking run" | tail -5) || true
    dag_run_succeeded
    unset AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES
}

collection() {
    step "collection alone: pip install 'prefect-shardtrain[xgboost-cpu,lightgbm,torch,mlflow]'"
    local V="$WORK/venv-collection" H="$WORK/prefect-collection"
    fresh_venv "$V"
    timed "$V/bin/pip" install -q --find-links "$DIST" \
        'prefect-shardtrain[xgboost-cpu,lightgbm,torch,mlflow]' -c "$REPO/constraints.txt"
    no_cuda "$V"
    if "$V/bin/pip" list 2>/dev/null | grep -iE '^snowflake|^prefect-snowflake'; then
        echo "FAIL: Snowflake forced on the collection"; exit 1
    fi
    rm -rf "$H" && mkdir -p "$H" && cp -r "$REPO/dags" "$H/dags"
    (cd "$H" && PREFECT_HOME="$H/prefect" SHARDTRAIN_HOME="$H/shardtrain" \
        timed "$V/bin/python" dags/xgboost_flow.py 2>&1 | tee "$H/run.log" \
        | grep -E "holdout rmse|Finished in state" | tail -4) || true
    grep -q "Finished in state Completed" "$H/run.log"
}

floor() {
    local FLOOR="${AIRFLOW_FLOOR:-3.3.2}"
    step "Airflow floor: the provider on apache-airflow==$FLOOR"
    local V="$WORK/venv-floor" H="$WORK/airflow-floor"
    fresh_venv "$V"
    grep -viE '^apache-airflow' "$REPO/constraints.txt" > "$WORK/constraints-floor.txt"
    timed "$V/bin/pip" install -q --find-links "$DIST" "apache-airflow==$FLOOR" \
        'airflow-provider-shardtrain[xgboost-cpu,mlflow]' -c "$WORK/constraints-floor.txt"
    "$V/bin/python" -c "import airflow; assert airflow.__version__ == '$FLOOR', airflow.__version__"
    rm -rf "$H" && mkdir -p "$H" && cp -r "$REPO/dags" "$H/dags"
    export AIRFLOW_HOME="$H/home" AIRFLOW__CORE__DAGS_FOLDER="$H/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
    timed "$V/bin/airflow" db migrate >/dev/null
    PYTHONPATH="$H/dags" "$V/bin/airflow" dags reserialize >/dev/null 2>&1  # older dag.test() needs it
    (cd "$H" && SHARDTRAIN_HOME="$H/shardtrain" timed "$V/bin/python" dags/xgboost_training.py \
        > "$H/run.log" 2>&1) || true
    dag_run_succeeded
    unset AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES
}

for s in $STEPS; do "$s"; done
echo; echo "all passed: $STEPS"
