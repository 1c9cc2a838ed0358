# The README's commands: `make demo` (the main job) and `make test` (lint + tests).
# Both install what they need into .venv/ first; each install step is skipped when its inputs
# have not changed (stamps in .venv/.stamps/).

SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMPS := $(VENV)/.stamps
TORCH_PINS := torch==2.14.1 torchvision==0.29.1 setuptools==81.0.0 wheel
OP_SOURCES := $(shell find ops -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
PY_SOURCES := lite_detr tests tools configs projects benchmarks train_net.py setup.py
CLANG_SOURCES := $(shell find ops -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
export MAX_JOBS ?= 2

.PHONY: install test lint format demo cuda-check gpu-check clean-build check-tools

install: $(STAMPS)/package

check-tools:
	@$(PYTHON_SYS) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed, found " + sys.version.split()[0])' \
	  || { echo "make install: $(PYTHON_SYS) is missing or too old (need Python >= 3.10; set PYTHON_SYS=...)" >&2; exit 1; }
	@$(PYTHON_SYS) -c 'import venv, ensurepip' 2>/dev/null \
	  || { echo "make install: $(PYTHON_SYS) lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2; exit 1; }
	@command -v g++ >/dev/null || command -v c++ >/dev/null \
	  || { echo "make install: no C++ compiler found, needed to build lite_detr._C (Debian: apt-get install g++)" >&2; exit 1; }
	@command -v cc >/dev/null \
	  || { echo "make install: no C compiler found, needed to build detectron2 (Debian: apt-get install gcc)" >&2; exit 1; }

$(PY): | check-tools
	$(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMPS)/torch: | $(PY)
	@mkdir -p $(STAMPS)
	$(PIP) install $(TORCH_PINS)
	@touch $@

$(STAMPS)/detectron2: tools/install_detectron2.sh $(STAMPS)/torch
	D2_KEEP_SRC=$(VENV)/src/detectron2 bash tools/install_detectron2.sh $(PY)
	@touch $@

$(STAMPS)/deps: requirements.txt requirements-dev.txt $(STAMPS)/detectron2
	$(PIP) install -r requirements.txt -r requirements-dev.txt
	@touch $@

# Editable install: Python changes need no reinstall; op sources or setup.py changes rebuild _C.
# On failure the stamp is not written and the stale extension is removed, so nothing half-built
# is imported later.
$(STAMPS)/package: setup.py $(OP_SOURCES) $(STAMPS)/deps
	@rm -f $@
	$(PIP) install --no-build-isolation --no-deps -e . \
	  || { rm -f lite_detr/_C*.so; echo "make install: building lite_detr._C failed (see the compiler errors above)" >&2; exit 1; }
	$(PY) -c "import torch, lite_detr._C" \
	  || { rm -f lite_detr/_C*.so; echo "make install: lite_detr._C was built but does not import" >&2; exit 1; }
	@touch $@

lint: install
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/black --check --quiet $(PY_SOURCES)
	$(VENV)/bin/clang-format --dry-run --Werror $(CLANG_SOURCES)

format: install
	$(VENV)/bin/ruff check --fix $(PY_SOURCES)
	$(VENV)/bin/black --quiet $(PY_SOURCES)
	$(VENV)/bin/clang-format -i $(CLANG_SOURCES)

test: install lint
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then $(MAKE) --no-print-directory cuda-check; \
	  else echo "cuda-check: nvcc not found, skipped"; fi
	$(PY) -m pytest -q

# Compile the CUDA sources with nvcc (no GPU needed).
cuda-check: install
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(PY) ops/cuda_check.py

demo: install
	$(PY) tools/run_demo.py

# On a CUDA machine: build the CUDA kernels, run the op tests, benchmark ops, training and
# inference, and write one report (tools/gpu_check.py). Elsewhere: says so and does nothing.
# GPU_PY=python3 uses an existing Python with torch and detectron2 instead of .venv (no install).
GPU_REPORT ?= output/gpu_check.md
gpu-check:
	@if ! nvidia-smi -L >/dev/null 2>&1; then \
	  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check."; \
	  exit 0; fi; \
	if [ -n "$(GPU_PY)" ]; then $(GPU_PY) tools/gpu_check.py --output $(GPU_REPORT); \
	else $(MAKE) --no-print-directory install && $(PY) tools/gpu_check.py --output $(GPU_REPORT); fi

clean-build:
	rm -rf build lite_detr/_C*.so *.egg-info $(STAMPS)/package
