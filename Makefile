# xaibench — `make help` lists the targets.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.setup-stamp-$(shell sha256sum pyproject.toml | cut -c1-16)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install xaibench with its test extra (idempotent)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@rm -f .venv/.setup-stamp-*
	@touch $(STAMP)

demo: setup ## the main job on the embedded data (trains the demo classifier, then the demo explainer)
	$(PY) train.py experiment=demo

test: setup ## fast test suite (no slow marker) + lint
	$(PY) -m ruff check xaibench tests scripts train.py eval.py
	@$(PY) -m pytest -m "not slow"; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): a failure, fix the selection"; fi; \
	  exit $$rc

test-full: setup ## every test, slow ones included
	$(PY) -m pytest

bench: setup ## speed and memory ratios, measured side by side
	$(PY) scripts/bench.py

clean: ## remove outputs and caches (keeps .venv and data/)
	rm -rf outputs cache .pytest_cache .ruff_cache

.PHONY: help setup demo test test-full bench clean
