# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RECSYS_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: venv demo test test-fast lint typecheck bench serve clean

venv: $(STAMP)

# torch==2.13.0 first: it resolves to the machine's local CPU build; a range would pull CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(BIN)/recsys demo

test: venv
	$(BIN)/ruff check recsys feature_store training serving tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not gpu and not slow" -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -q -m "not gpu and not slow and not integration" -p no:cacheprovider

lint: venv
	$(BIN)/ruff check recsys feature_store training serving tests benchmarks
	$(BIN)/ruff format --check recsys feature_store training serving tests benchmarks

typecheck: venv
	$(BIN)/mypy

# Run as modules: as scripts, benchmarks/feature_store.py would shadow the feature_store package.
# ranker, pipeline_latency and serve_load need a trained home (RECSYS_HOME, e.g. after `make demo`).
bench: venv
	$(BIN)/python -m benchmarks.feature_store
	$(BIN)/python -m benchmarks.text_model
	$(BIN)/python -m benchmarks.ranker
	$(BIN)/python -m benchmarks.pipeline_latency
	$(BIN)/python -m benchmarks.serve_load

serve: venv
	$(BIN)/recsys serve --host 127.0.0.1 --port 8000 --workers 2

clean:
	rm -rf .recsys .pytest_cache .mypy_cache .ruff_cache
