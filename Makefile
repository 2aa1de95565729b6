# The two quick-start commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYPROJECTS := core/pyproject.toml airflow_provider/pyproject.toml prefect_collection/pyproject.toml

.PHONY: venv demo test test-unit test-integration test-system lint typecheck bench constraints clean

venv: $(STAMP)

$(STAMP): requirements-dev.txt constraints.txt $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

# The main job: the example XGBoost DAG, run with dag.test() on the embedded defaults
# (a local Airflow home with a migrated sqlite DB under .demo/, local Ray, local stage).
DEMO_AIRFLOW := AIRFLOW_HOME=$(CURDIR)/.demo/airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False

demo: $(STAMP)
	mkdir -p .demo/airflow
	test -f .demo/airflow/airflow.db || $(DEMO_AIRFLOW) $(VENV)/bin/airflow db migrate
	$(DEMO_AIRFLOW) $(PY) dags/xgboost_training.py

# Everything: lint, the type check and the three layers (the README's and CI's command).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The quick loop: logic only, no Ray, no subprocess, no network (tests/unit).
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

# The session's Ray head, dag.test() in process, the Prefect harness, moto, Snowpark local_testing.
test-integration: $(STAMP)
	$(PY) -m pytest tests/integration -q

# Real processes end to end: example DAGs as scripts, served flows, Ray Jobs, killed processes.
test-system: $(STAMP)
	$(PY) -m pytest tests/system -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy over the three packages, as configured in pyproject.toml ([tool.mypy]).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench --quick

# Re-resolve the dev set and pin it (run after editing requirements-dev.txt). The anchors keep
# the resolver on the versions known to work together (an open resolve picks Airflow 3.2 with
# Prefect 3.9, which installs and then fails every Airflow task).
ANCHORS := apache-airflow==3.3.2 prefect==3.7.7 ray==2.60.0 xgboost-cpu==3.2.0 lightgbm==4.7.0 \
	torch==2.13.0 snowflake-snowpark-python==1.56.0 pendulum==3.3.0 mlflow==3.17.2 \
	'pyarrow<26' 'importlib-metadata<10'
constraints:
	rm -rf /tmp/shardtrain-constraints && $(PYTHON) -m venv /tmp/shardtrain-constraints
	/tmp/shardtrain-constraints/bin/pip install --quiet -r requirements-dev.txt $(ANCHORS)
	{ grep '^#' constraints.txt; /tmp/shardtrain-constraints/bin/pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV)
