# equivrepro — every target sets up its own virtual environment first (idempotent).
#   make test                 set up, then run the test suite
#   make reproduce            set up, then the smoke reproduction on the embedded data
#   make bench                benchmarks (speed/overhead targets live here, not in tests)
# Cluster users: `make venv TORCH_SPEC="torch==2.5.1" TORCH_INDEX=https://download.pytorch.org/whl/cu124`
# or use environment.yml with conda.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CONSTRAINTS := $(VENV)/constraints.txt
DATA_DIR    ?= data
SCALE       ?= smoke

export PYTHONHASHSEED := 0
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export HYDRA_FULL_ERROR ?= 0

.PHONY: venv test test-fast bench reproduce clean-venv data

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	$(PY) -m pip install -q --no-deps mdanalysistests==2.11.0
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

bench: venv
	$(PY) scripts/bench_decomposition.py

clean-venv:
	rm -rf $(VENV)
