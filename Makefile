# pacs-vlm: `make demo` and `make test` set everything up on a fresh machine and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Dependencies come from uv.lock only (`uv sync --locked` never resolves anew); `make lock` refreshes it.
# uv itself is pinned and bootstrapped with pip into .uv/. The CPU build of torch comes from the
# machine's wheel folder (the `cpu` extra, see pyproject.toml [tool.uv]).
UV_VERSION := $(shell sed -n 's/^required-version = "==\(.*\)"/\1/p' pyproject.toml)
UV         := .uv/bin/uv
EXTRAS     := --extra models --extra cpu --extra dev
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS    := never
# Installed packages are compiled to bytecode once, at install: this machine sets PYTHONDONTWRITEBYTECODE, so
# without it every process the suite or an operator starts (worker, listener, api, CLI) compiled torch and
# transformers from source again (import of the model stack: 11.8 s -> 5.6 s).
export UV_COMPILE_BYTECODE    := 1
# The suite runs on this many processes (pytest-xdist), one test module at a time each: most tests wait on
# real peers (api, listener, Orthanc, Chromium), so two processes share two cores well.  TEST_WORKERS=0 runs
# it in one process.
TEST_WORKERS ?= 2
# npm ci's record of the single sign-on tests' OpenID provider (tests/support/oidc/package-lock.json).
OIDC_MODULES := tests/support/oidc/node_modules/.package-lock.json

.PHONY: demo test lint bench lock system-deps venv clean

demo: system-deps venv
	$(BIN)/pacs-vlm demo

test: system-deps venv lint $(OIDC_MODULES)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

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

# The OpenID provider the single sign-on tests start (tests/support/oidc), from its committed lock file.
$(OIDC_MODULES): tests/support/oidc/package-lock.json
	cd tests/support/oidc && npm ci --no-audit --no-fund

venv: $(STAMP)

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python $(PYTHON) $(EXTRAS)
	touch $(STAMP)

# On purpose only, then `make test` and commit uv.lock with the change (README, Upgrading dependencies):
#   make lock                      every dependency to its newest release that pyproject.toml allows
#   make lock PACKAGES="pydicom"   only those; everything else keeps its pin (a new dependency is added)
lock: $(UV)
	$(UV) lock --python $(PYTHON) $(if $(PACKAGES),$(addprefix --upgrade-package ,$(PACKAGES)),--upgrade)

clean:
	rm -rf $(VENV) .uv var .pytest_cache .mypy_cache .ruff_cache
