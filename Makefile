# taskpod: `make demo` runs the operator on a local control plane; `make test` runs every test.
# Both set up what they need: the Python venv (.venv) and the upstream binaries, built once from the
# Go module proxy and cached in $${XDG_CACHE_HOME:-~/.cache}/taskpod/bin.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLUSTER_DIR ?= .cluster
POD_NETWORK ?= auto
NODE ?= kwok
PYTEST_ARGS ?=
BENCH_SIZES ?= 100,1000,5000
BENCH_ARGS ?=
SOAK_MINUTES ?= 30
SOAK_TASKS ?= 36
SOAK_SEED ?=
SOAK_ARGS ?=
# make images: the three images of images/*/Dockerfile (the build context is the repository root).
CONTAINER_ENGINE ?= docker
REGISTRY ?= ghcr.io/taskpod-dev
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGES := operator workspace agent-sim
export PYTHONPATH := $(CURDIR)/hack:$(CURDIR)

.PHONY: help demo simulator venv binaries test unit integration properties bench soak lint fmt cluster cluster-down clean \
	images images-local images-push

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: binaries ## the main job: a local control plane, the operator, and a task through its life (NODE=real: for real)
	$(BIN)/python hack/demo.py --dir $(CLUSTER_DIR) --node $(NODE)

# The images' pins constrain the venv, so the tests run what the images ship even when PyPI moves on
# (hack/pin-requirements.py re-pins on purpose).
PINS := images/operator/requirements.txt images/agent-sim/requirements.txt

$(VENV)/.installed: pyproject.toml $(PINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(addprefix -c ,$(PINS)) -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## create the Python venv with taskpod and its dev tools

binaries: venv ## build the upstream binaries into the cache (first time: several minutes)
	$(BIN)/python -m localkube build

test: binaries ## run every test (unit and integration; starts a local control plane)
	$(BIN)/pytest $(PYTEST_ARGS)

properties: binaries ## the property-based tests at length: 500 examples a property (make test runs 25)
	HYPOTHESIS_PROFILE=long $(BIN)/pytest tests/integration/test_properties.py --timeout 14400 \
		--hypothesis-show-statistics $(PYTEST_ARGS)

bench: binaries ## the benchmark: N tasks applied, paused, resumed and idle vs the floor (bench/README.md)
	$(BIN)/python -m bench --sizes $(BENCH_SIZES) $(BENCH_ARGS)

soak: binaries ## random operations and faults on SOAK_TASKS tasks for SOAK_MINUTES, then invariants checked
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --tasks $(SOAK_TASKS) \
		$(if $(SOAK_SEED),--seed $(SOAK_SEED)) $(SOAK_ARGS)

unit: venv ## run the unit tests only (seconds, no cluster)
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

integration: binaries ## run the integration tests only
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

lint: venv ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

cluster: binaries ## start a local control plane in the background (kubeconfig: .cluster/kubeconfig)
	$(BIN)/python -m localkube up --dir $(CLUSTER_DIR) --pod-network $(POD_NETWORK) --node $(NODE)

simulator: venv ## run the workspace simulator in the foreground against .cluster/kubeconfig
	$(BIN)/python -m agentsim --kubeconfig $(CLUSTER_DIR)/kubeconfig --state-dir $(CLUSTER_DIR)/agent-state

cluster-down: venv ## stop the local control plane
	$(BIN)/python -m localkube down --dir $(CLUSTER_DIR)

images: $(addprefix image-,$(IMAGES)) ## build the images with CONTAINER_ENGINE as REGISTRY/<name>:VERSION

image-%:
	$(CONTAINER_ENGINE) build -f images/$*/Dockerfile --build-arg VERSION=$(VERSION) -t $(REGISTRY)/$*:$(VERSION) .

images-local: venv ## build the same images here without a registry (buildah), into the real node if it runs
	$(BIN)/python -m localkube.images --dir $(CLUSTER_DIR)

images-push: images ## push the images built by make images
	for image in $(IMAGES); do $(CONTAINER_ENGINE) push $(REGISTRY)/$$image:$(VERSION) || exit 1; done

clean: cluster-down ## stop the cluster and remove the venv (the binary cache stays)
	rm -rf $(VENV) $(CLUSTER_DIR)
