# One virtual environment for everything: `make demo` and `make test` create it,
# install into it, and are safe to run again (they redo nothing that is done).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dmt-installed

.PHONY: install demo test lint typecheck bench clean wordnet risk-env

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: on the project's machines this pin is a local CPU build;
# any other request would pull a multi-gigabyte CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[model,server,federated,audio,image,dev,bench]"
	touch $(STAMP)

# WordNet 3.0 for nltk, offline: Debian's packages where apt-get exists, then a copy
# into ./nltk_data (plus the lexnames table nltk needs); nltk.download where neither.
NLTK_DATA_DIR := $(CURDIR)/nltk_data
WORDNET_STAMP := $(NLTK_DATA_DIR)/corpora/wordnet/lexnames
WORDNET_APT := wordnet-base wordnet-sense-index

wordnet: $(WORDNET_STAMP)

$(WORDNET_STAMP): | $(STAMP)
	@if command -v apt-get >/dev/null 2>&1 && \
	    { [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/wordnet/index.sense ]; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends $(WORDNET_APT) || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $(WORDNET_APT); }; \
	fi
	$(PY) -m dmt_privacy.modify.wordnet install $(NLTK_DATA_DIR)

demo: install wordnet
	NLTK_DATA=$(NLTK_DATA_DIR) $(VENV)/bin/dmt demo

lint: install
	$(VENV)/bin/ruff check dmt_privacy dmt_model tests benchmarks examples

typecheck: install
	$(VENV)/bin/mypy

test: install lint typecheck wordnet
	NLTK_DATA=$(NLTK_DATA_DIR) $(PY) -m pytest -q

# anonymeter pins numpy < 1.27, so the privacy-risk measurement has an environment of its own.
RISK_VENV := .venv-risk
RISK_STAMP := $(RISK_VENV)/.dmt-installed

risk-env: $(RISK_STAMP)

$(RISK_STAMP):
	$(PYTHON) -m venv $(RISK_VENV)
	$(RISK_VENV)/bin/python -m pip install --quiet "anonymeter==1.1.0"
	touch $(RISK_STAMP)

BENCHMARKS := model_quality kanon_adult kanon_scaling ldp_throughput modify_throughput \
	sharing_crypto sharing_pipeline federated_baseline

bench: install wordnet risk-env
	for name in $(BENCHMARKS); do \
	  [ ! -f benchmarks/$$name.py ] || NLTK_DATA=$(NLTK_DATA_DIR) $(PY) benchmarks/$$name.py || exit 1; \
	done
	$(PY) benchmarks/privacy_utility.py --risk

clean:
	rm -rf $(VENV) $(RISK_VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
