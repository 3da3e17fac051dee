# exfiqa: `make paper` regenerates every figure and table, `make test` runs the test suite.
# Both bootstrap .venv from requirements-ci.txt (exact pins) on a machine with Python 3.11 and pip.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/demo.yaml
STAMP  := $(VENV)/.installed
# Modules type-checked strictly by `make lint` (the others are followed for their types only).
MYPY_STRICT := exfiqa/evaluation/rules.py exfiqa/evaluation/verification.py exfiqa/evaluation/scores.py exfiqa/evaluation/edc.py exfiqa/evaluation/pauc.py exfiqa/evaluation/quality.py exfiqa/evaluation/templates.py exfiqa/evaluation/bootstrap.py exfiqa/evaluation/operating.py exfiqa/evaluation/calibration.py exfiqa/evaluation/fusion.py exfiqa/evaluation/exits.py exfiqa/models/vitfiqa.py exfiqa/study.py

.DEFAULT_GOAL := help
.PHONY: help venv test paper extract demo notebooks lab lint bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-7s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG) (make paper CONFIG=configs/paper.yaml for the real benchmarks)"

$(STAMP): requirements-ci.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install it or pass PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name exfiqa --display-name "exfiqa (Python 3)" >/dev/null
	touch $@

venv: $(STAMP) ## create .venv with the pinned dependencies (once)

test: $(STAMP) ## run the whole test suite (incl. the notebooks on the demo world)
	$(BIN)/python -m pytest

paper: $(STAMP) ## regenerate every figure and table into results/ (CONFIG=configs/demo.yaml)
	$(BIN)/python -m exfiqa.paper --config $(CONFIG)

extract: $(STAMP) ## compute the per-sample arrays of CONFIG, one read per image (make paper runs it first)
	$(BIN)/python -m exfiqa.extract --config $(CONFIG)

demo: $(STAMP) ## build the offline demo world (faces, benchmarks, trained models) if missing
	$(BIN)/python -m exfiqa.demo --config $(CONFIG)

notebooks: $(STAMP) ## regenerate the paired notebooks/*.ipynb (no outputs) from the .py sources
	$(BIN)/jupytext --to ipynb --update notebooks/0*.py

lab: $(STAMP) ## JupyterLab with jupytext (open notebooks/*.py as notebooks)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP) ## ruff; the layering contracts (import-linter, pyproject.toml); mypy --strict on the core
	$(BIN)/ruff check exfiqa tests bench notebooks
	$(BIN)/lint-imports
	$(BIN)/mypy --strict $(MYPY_STRICT)

bench: $(STAMP) ## run the benchmark scripts (results go to bench/RESULTS.md by hand)
	$(BIN)/python bench/bench_model.py
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_exit.py

clean: ## remove results/ and caches (keeps .venv and the demo world)
	rm -rf results .pytest_cache .ruff_cache
