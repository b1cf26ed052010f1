# equivrepro — every target sets up its own virtual environment first (idempotent: a second call installs nothing).
#   make reproduce              smoke reproduction of the three tasks on the embedded data + the headline figure
#   make test                   the test suite
#   make bench                  benchmarks (speed/overhead targets live here, not in tests)
#   make reproduce-figures      every paper figure (SCALE=smoke on a CPU, SCALE=paper from cluster runs)
#   make reproduce-efficiency-gap  equivariant vs augmented vs twirled at equal compute (SCALE=smoke / paper)
# Cluster users: `make venv TORCH_SPEC="torch==2.5.1" TORCH_INDEX=https://download.pytorch.org/whl/cu124`
# or `conda env create -f environment.yml`.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CONSTRAINTS := $(VENV)/constraints.txt
DATA_DIR    ?= data

SCALE       ?= smoke
FIGURES_PREREQS ?= venv data   # the embedded data are built once, before parallel runs need them

export PYTHONHASHSEED := 0
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export EQUIVREPRO_DATA ?= $(abspath $(DATA_DIR))

.PHONY: venv test test-fast bench data lint clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	$(PY) -m pip install -q --no-deps mdanalysistests==2.11.0
	touch $(STAMP)

test: venv
	WANDB_MODE=disabled $(PY) -m pytest -q tests

test-fast: venv
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" tests

# speed and memory targets: the decomposition's overhead (≤ 1.15 × K plain forward passes), then every task's own
# benchmarks (tasks/<task>/bench_*.py, e.g. the force-field readers' streaming: peak RSS < 2 GB, independent of size)
TASK_BENCHES := $(subst /,.,$(patsubst %.py,%,$(wildcard tasks/*/bench_*.py)))

bench: venv
	$(PY) scripts/bench_decomposition.py
	$(foreach b,$(TASK_BENCHES),$(PY) -m $(b) &&) true

clean-venv:
	rm -rf $(VENV)

# ---- embedded default data (generated once, cached under $(DATA_DIR)); each task card lists its files ----
data: venv
	$(PY) -m equivrepro.catalog data --data-dir $(DATA_DIR)

-include make/figures.mk
-include make/analysis.mk
-include make/efficiency.mk

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
