# loganalyzer — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed on its own first: the CPU build here, a CUDA build on a GPU machine (override TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/loganalyzer: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[deepspeed,serve,cluster,tracking,ray,dev]"
	@touch $@

install: $(BIN)/loganalyzer ## create .venv with everything (torch first, then pinned constraints)

demo: install ## run the whole pipeline on one machine (kfp local runner, tiny model, local MLflow) -> runs/demo
	$(BIN)/loganalyzer demo

test: install ## all tests: unit + integration (tiny models); GPU tests skip without a GPU
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install ## unit tests only
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

lint: install ## ruff over the package, pipelines, tests and benchmarks
	$(BIN)/ruff check jobs pipelines tests benchmarks

bench: install ## benchmarks (chunking, synthesis client, CPT packing; GPU training when CUDA is present)
	cd benchmarks && ../$(BIN)/python bench_chunk.py
	cd benchmarks && ../$(BIN)/python bench_synthesize.py
	cd benchmarks && ../$(BIN)/python bench_pack.py
	cd benchmarks && ../$(BIN)/python bench_gpu_train.py

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
