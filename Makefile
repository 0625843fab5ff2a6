# One virtual environment for everything: `make demo` and `make test` create it,
# install into it, and are safe to run again (they redo nothing that is done).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dmt-installed

.PHONY: install demo test lint typecheck bench bench-quick clean wordnet risk-env postgres

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: on the project's machines this pin is a local CPU build;
# any other request would pull a multi-gigabyte CUDA build. What is installed must be
# byte-compiled: with PYTHONDONTWRITEBYTECODE set, as on the project's machines, Python
# would otherwise compile torch and the rest from source in every process that imports
# them (a clean-checkout `make test` ran twice as long). pip compiles one file after the
# other (about 110 of its 180 s here); compileall does it on every core. A file it cannot
# compile (torch ships a file of Python 3.12 syntax) only costs that file's import time, as
# under pip, so compileall's exit status and its list of such files are not shown; a
# site-packages folder that is not there stops the install.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --no-compile "torch==2.13.0"
	$(PIP) install --quiet --no-compile -e ".[model,server,federated,audio,image,dev,bench,executorch]"
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	  test -d "$$site" && { $(PY) -m compileall -q -j 0 "$$site" >/dev/null || true; }
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

# PostgreSQL for the server tests: Debian's packages where apt-get exists (installed if
# missing); `make test` starts a throwaway cluster owned by a non-root user on 127.0.0.1 and a
# free port, data under build/postgres (gitignored), passes its URL to pytest as
# DMT_TEST_POSTGRES_URL and stops it when pytest ends, pass or fail. Elsewhere the PostgreSQL
# tests skip.
PG_DIR := $(CURDIR)/build/postgres
PG_APT := postgresql

postgres:
	@if command -v apt-get >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends $(PG_APT) || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $(PG_APT); }; \
	fi

# Sets pg_bin, pg_as (runs a command as the cluster's owner), pg_dir and pg_port; starts the
# cluster or fails. As root the owner is Debian's `postgres` user; if it cannot write under the
# checkout (e.g. one in /root), the data go to a temporary folder instead.
define PG_START
pg_bin=$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1); \
if [ -z "$$pg_bin" ]; then echo "No PostgreSQL here (needs apt-get): its tests will skip."; else \
  pg_as=""; pg_dir=$(PG_DIR); rm -rf $(PG_DIR); mkdir -p $(PG_DIR); \
  if [ "$$(id -u)" = 0 ]; then pg_as="runuser -u postgres --"; chown postgres $(PG_DIR); \
    $$pg_as test -w $(PG_DIR) || { pg_dir=$$(mktemp -d /tmp/dmt-postgres.XXXXXX); chown postgres $$pg_dir; }; fi; \
  pg_port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
  { $$pg_as $$pg_bin/initdb -D $$pg_dir/data -U dmt --auth=trust -E UTF8 --no-sync >$$pg_dir/initdb.log && \
    $$pg_as $$pg_bin/pg_ctl -D $$pg_dir/data -l $$pg_dir/server.log -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $$pg_port -c unix_socket_directories=''" start >/dev/null; } || \
  { echo "PostgreSQL did not start; see $$pg_dir/*.log"; exit 1; }; \
  export DMT_TEST_POSTGRES_URL="postgresql://dmt@127.0.0.1:$$pg_port/postgres" \
    DMT_TEST_POSTGRES_CTL="$$pg_as $$pg_bin/pg_ctl -D $$pg_dir/data -l $$pg_dir/server.log"; \
  echo "PostgreSQL test cluster on 127.0.0.1:$$pg_port ($$pg_dir)"; \
fi
endef
PG_STOP = [ -z "$$pg_bin" ] || [ ! -f "$$pg_dir/data/postmaster.pid" ] || \
  $$pg_as $$pg_bin/pg_ctl -D $$pg_dir/data -m fast -w stop >/dev/null

# Two workers (CI has 2 cores; TEST_WORKERS=0 runs in one process); the PostgreSQL tests
# share one worker (tests/conftest.py).
TEST_WORKERS ?= 2

test: install lint typecheck wordnet postgres
	@trap '$(PG_STOP)' EXIT; trap 'exit 130' INT TERM; $(PG_START); \
	NLTK_DATA=$(NLTK_DATA_DIR) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# anonymeter pins numpy < 1.27, so the privacy-risk measurement has an environment of its own.
RISK_VENV := .venv-risk
RISK_STAMP := $(RISK_VENV)/.dmt-installed

risk-env: $(RISK_STAMP)

$(RISK_STAMP):
	$(PYTHON) -m venv $(RISK_VENV)
	$(RISK_VENV)/bin/python -m pip install --quiet "anonymeter==1.1.0"
	touch $(RISK_STAMP)

# `make bench` runs every script in benchmarks/ to the end (several hours on 2 cores:
# model_quality ~48 min, privacy_utility ~29 min, federated_baseline ~14 min, task_quality
# longest), each writing its JSON (and plots) into BENCH_OUTPUT; adult.py is a module the
# k-anonymity benchmarks share and risk_anonymeter.py runs inside privacy_utility --risk.
# server_load uses the same throwaway PostgreSQL cluster as the tests. `make bench-quick`
# runs every one with small arguments into build/bench-quick, to check that they all work
# without replacing the committed results.
BENCH_OUTPUT ?= benchmarks/results
QUICK ?=
quick = $(if $(QUICK),$(1))

bench: install wordnet risk-env postgres
	@trap '$(PG_STOP)' EXIT; trap 'exit 130' INT TERM; $(PG_START); \
	run() { name=$$1; shift; echo "== benchmarks/$$name.py $$*"; \
	  NLTK_DATA=$(NLTK_DATA_DIR) $(PY) benchmarks/$$name.py --output $(BENCH_OUTPUT) "$$@" \
	  || exit 1; }; \
	run startup $(call quick,--repeat 1); \
	run kanon_adult $(call quick,--no-anonypy); \
	run kanon_scaling $(call quick,--sizes 30000); \
	run anonymity_device_path; \
	run ldp_throughput $(call quick,--values 20000 --repeat 1); \
	run modify_throughput; \
	run sharing_crypto $(call quick,--records 500 --repeat 2); \
	run sharing_pipeline $(call quick,--records 500 --packages 2 --small 20 --repeat 1); \
	run device_store --label encrypted $(call quick,--records 500 --repeat 1); \
	run reshare_exposure $(call quick,--notes 20 --attempts 2); \
	run privacy_pass_tokens $(call quick,--packages 20 --repeats 1); \
	run server_load $(call quick,--packages 200 --clients 5); \
	run ingest_cli $(call quick,--packages 200 --rounds 1); \
	run federated_baseline $(call quick,--seeds 1); \
	run fl_engine_parity $(call quick,--seeds 1); \
	run fl_protocol $(call quick,--quick); \
	run adoption --users 120 20 $(call quick,--tasks friedman --seeds 1 --users 20); \
	run model_quality $(call quick,--seeds 1 --datasets boston --spreads 0.15 --workers 1); \
	run personalization_few_records $(call quick,--seeds 2 --records 3 --spreads 0); \
	run personal_rule $(call quick,--seeds 1 --datasets boston adult --spreads 0.3 --alphas 1 --workers 1); \
	run personalize_again $(call quick,--seeds 1 --spreads 0 --workers 1); \
	run far_from_proxy $(call quick,--seeds 1 --distances 5 90 --records 20); \
	run label_noise $(call quick,--seeds 1); \
	run foundation_training $(call quick,--seeds 1 --datasets boston star98); \
	run skewed_inputs $(call quick,--seeds 1 --reaches 10 --workers 1); \
	run privacy_utility --risk $(call quick,--seeds 1); \
	run task_baselines $(call quick,--seeds 1); \
	run task_quality $(call quick,--seeds 1 --personalization-seeds 1 --workers 1)

bench-quick:
	$(MAKE) bench QUICK=1 BENCH_OUTPUT=$(CURDIR)/build/bench-quick

clean:
	rm -rf $(VENV) $(RISK_VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
