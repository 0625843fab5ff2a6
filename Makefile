# One virtual environment for everything: `make demo` and `make test` create it,
# install into it, and are safe to run again (they redo nothing that is done).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dmt-installed

.PHONY: install demo test lint typecheck bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: on the project's machines this pin is a local CPU build;
# any other request would pull a multi-gigabyte CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[model,dev,bench]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/dmt demo

lint: install
	$(VENV)/bin/ruff check dmt_privacy dmt_model tests benchmarks examples

typecheck: install
	$(VENV)/bin/mypy

test: install lint
	$(PY) -m pytest -q

bench: install
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
