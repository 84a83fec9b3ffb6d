# The two-command contract: `make run` and `make test` on a machine with only python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/monitor.yaml
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# `monitor run` migrates and loads the baseline itself before it starts polling.
run: $(STAMP)
	mkdir -p data
	$(PY) -m monitor --config $(CONFIG) run

test: $(STAMP)
	$(PY) -m ruff check monitor tests
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check monitor tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) data .pytest_cache
