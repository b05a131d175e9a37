# TempoTrain developer entry points. `make demo` and `make test` are all a new machine needs
# (with Go and Python 3.11 installed); everything else is built or installed on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= operator,workers,client,dev
STATE_DIR ?= .tempotrain/platform
DEV := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m tempotrain_dev --state-dir $(STATE_DIR)
PYTEST_ARGS ?=
DEMO ?= bert

.PHONY: help doctor venv tools images up down status demo test lint crds clean clean-cache

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

# Installed from the wheelhouse (dev/tempotrain_dev/wheelhouse.py): one download of every wheel,
# shared with the images' builds.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	wheels="$$(PYTHONPATH=dev $(PY) -m tempotrain_dev.wheelhouse)" && \
	  $(PY) -m pip install --quiet --no-index --find-links "$$wheels" -e '.[$(EXTRAS)]'
	@touch $@

doctor: ## one line per prerequisite (Go, Python 3.11, disk, root and kernel for the real node)
	@PYTHONPATH=dev $(PYTHON) -m tempotrain_dev.doctor

venv: $(VENV)/.installed ## create .venv and install tempotrain with its extras

tools: ## build (or find cached) etcd, Kubernetes, kwok, helm, KubeRay under ~/.cache/tempotrain
	@# What is built, and how long it took, is news; a cache hit is not (as in tempotrain_dev).
	@bash dev/build-tools.sh 2>&1 >/dev/null | { grep -v 'cache hit' || true; } >&2

images: venv tools ## build (or find) the operator and workers images for the real node
	$(DEV) images

up: venv tools ## start the local control plane, a real node and Temporal (no-op when up)
	$(DEV) up

down: ## stop everything `up` started
	@if [ -x $(PY) ]; then $(DEV) down; fi

status: venv ## which platform processes run (and the demo's operator and worker)
	@$(DEV) status || test $$? -eq 3  # 3: not up, which is an answer, not an error

demo: doctor images up ## bring the platform up and run a real experiment on it (DEMO=bert|sweep|cifar10|inference|queueing)
	@source $(STATE_DIR)/env.sh && \
	  echo "== kubectl version" && kubectl version && \
	  echo "== kubectl get nodes" && kubectl get nodes \
	    -o custom-columns='NAME:.metadata.name,POOL:.metadata.labels.tempotrain\.dev/node-pool,CPU:.status.capacity.cpu,GPUS:.status.capacity.nvidia\.com/gpu,READY:.status.conditions[?(@.type=="Ready")].status' && \
	  echo "== temporal operator cluster health" && $(VENV)/bin/temporal operator cluster health --address "$$TEMPORAL_ADDRESS"
	@echo; echo "== the local $(DEMO) experiment (CPU)"
	$(DEV) demo --experiment $(DEMO)
	@echo; echo "Platform is up. Use it with:  source $(STATE_DIR)/env.sh   Stop it with:  make down"

test: venv tools images ## run the whole test suite against a platform of its own
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

crds: venv ## regenerate crds/ from the pydantic models
	$(PY) -m tempotrain_workers.api.crdgen

CACHE ?= $(HOME)/.cache/tempotrain

clean: down ## stop the platform, then free what this checkout rebuilds: .venv, .tempotrain, caches
	@du -sh $(VENV) .tempotrain 2>/dev/null || true
	rm -rf $(VENV) .tempotrain tempotrain.egg-info .mypy_cache .ruff_cache bench/.mypy_cache
	@find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "freed; ~/.cache/tempotrain (tools, wheels, images: $$(du -sh $(CACHE) 2>/dev/null | cut -f1)) is kept: make clean-cache"

clean-cache: ## free ~/.cache/tempotrain too (the next make rebuilds tools and images: ~25 min)
	@du -sh $(CACHE) 2>/dev/null || true
	rm -rf $(CACHE)

lint: venv ## ruff and mypy --strict on the packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator/tempotrain_operator workers/tempotrain_workers dev/tempotrain_dev client/tempotrain_client
