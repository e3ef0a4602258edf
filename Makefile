# pacs-vlm: `make demo` and `make test` set everything up on a fresh machine and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench system-deps venv clean

demo: system-deps venv
	$(BIN)/pacs-vlm demo

test: system-deps venv lint
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check integration worker models
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: system-deps venv
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.gpu_generate

system-deps:
	bash scripts/system-deps.sh

venv: $(STAMP)

# torch is pinned and installed first from the machine's local CPU wheel, so nothing later
# pulls a newer torch with gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,models]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
