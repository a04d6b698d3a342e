# Unified Segmentation - the two commands in README: `make demo` and `make test`.
# Both install what is missing (PostgreSQL 15 + PL/Python, Python environments),
# start a project-local cluster unless DATABASE_URL points at a server, install
# the system with the real loader, and go.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV          ?= .venv
PY            := $(VENV)/bin/python
SEG_PGPORT    ?= 55432
export SEG_PGPORT
ifeq ($(shell id -u),0)
SEG_LIB_DIR   ?= /usr/local/lib/segmentation
else
SEG_LIB_DIR   ?= /var/tmp/unified-segmentation/lib
endif
export SEG_LIB_DIR
CLUSTER_URL   := postgresql://postgres@localhost:$(SEG_PGPORT)/postgres
DEMO_DB       ?= segmentation_demo
DEMO_PLAYERS  ?= 20000

.PHONY: help deps venv cluster cluster-stop demo test test-core quality bench lint clean

help:
	@echo "make demo   - install everything, start a local PostgreSQL 15, load and segment a demo population"
	@echo "make test   - run the whole test suite against a real PostgreSQL 15 with plpython3u"
	@echo "make quality / make bench / make lint / make cluster-stop"

deps:
	@bash scripts/install-system-deps.sh

venv:
	@bash scripts/install-server.sh --venv $(VENV) --lib-dir $(SEG_LIB_DIR)

cluster: deps
	@if [ -z "$$DATABASE_URL" ]; then bash scripts/pg-cluster.sh start; fi

cluster-stop:
	@bash scripts/pg-cluster.sh stop

demo: venv cluster
	@$(PY) -m segmentation_loader.demo --db $(DEMO_DB) --players $(DEMO_PLAYERS) \
		--cluster-url "$${DATABASE_URL:-$(CLUSTER_URL)}" --lib-dir "$(SEG_LIB_DIR)"

test: venv cluster
	@$(PY) -m pytest -q $(PYTEST_ARGS)

test-core: venv
	@$(PY) -m pytest -q tests/core $(PYTEST_ARGS)

quality: venv cluster
	@$(PY) -m tests.quality.run $(QUALITY_ARGS)

bench: venv cluster
	@$(PY) -m bench.run $(BENCH_ARGS)

lint: venv
	@$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
