# The two quick-start commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYPROJECTS := core/pyproject.toml airflow_provider/pyproject.toml prefect_collection/pyproject.toml

.PHONY: venv demo test lint bench constraints clean

venv: $(STAMP)

$(STAMP): requirements-dev.txt constraints.txt $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m shardtrain.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m bench --quick

# Re-resolve the dev set from scratch and pin it (run after editing requirements-dev.txt).
constraints:
	rm -rf /tmp/shardtrain-constraints && $(PYTHON) -m venv /tmp/shardtrain-constraints
	/tmp/shardtrain-constraints/bin/pip install --quiet -r requirements-dev.txt
	{ sed -n '1,3p' constraints.txt; /tmp/shardtrain-constraints/bin/pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV)
