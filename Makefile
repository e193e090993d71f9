# benchbook: `make setup`, `make test`, `make report MODEL=efficientnet_b1`. `make help` lists everything.
SHELL := bash
.DEFAULT_GOAL := help
.SUFFIXES:

VENV ?= .venv
# The project's venv when it exists; otherwise the host's python3 (e.g. a GPU host with its own stack).
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYTHONUNBUFFERED := 1

# --- run parameters (every one is validated before any work; `make help` explains them) -----
MODEL ?= efficientnet_b1
BACKENDS ?= auto
PRECISIONS ?= auto
BATCH_SIZES ?= auto
SHAPES ?= auto
WARMUP ?= 0.2
ITERS ?= 20
DURATION ?= 1.0
DEVICE ?= auto
OUTLIERS ?= tukey
WEIGHTS ?=
SEED ?= 0
UNSTABLE_CV ?= 0.05
CHANNELS_LAST ?= auto
TF32 ?= 1
COMPILE_MODE ?= default
TRT_WORKSPACE ?= 4
TRT_OPT_LEVEL ?= 3
RUN_ID ?=
REPORTS_DIR ?= reports
MODELS_DIR ?=
CACHE_DIR ?= build
DATA ?=
PRICE_PER_HOUR ?=
CONCURRENCY ?= 1,2,4,8
RATES ?= auto
LOAD ?= auto
RUNS ?=
EXTRAS ?= test,tensorrt-rtx,transformers

# Every parameter above that `make report` reads; a variable given on the command line that is not one of
# these (or of PYTHON VENV EXTRAS) is refused with a did-you-mean, so BATCH_SIZE=8 is not silently ignored.
PARAMS := MODEL BACKENDS PRECISIONS BATCH_SIZES SHAPES WARMUP ITERS DURATION DEVICE OUTLIERS WEIGHTS SEED \
  UNSTABLE_CV CHANNELS_LAST TF32 COMPILE_MODE TRT_WORKSPACE TRT_OPT_LEVEL RUN_ID REPORTS_DIR MODELS_DIR CACHE_DIR \
  DATA PRICE_PER_HOUR CONCURRENCY RATES LOAD
OTHER_VARS := PYTHON VENV EXTRAS PLAN RUNS PYTHONPATH SHELL
CMDLINE_VARS = $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v)))
UNKNOWN_VARS = $(filter-out $(PARAMS) $(OTHER_VARS),$(CMDLINE_VARS))

# A value quoted for the shell, so spaces or quotes in it reach the plan step's checks intact.
q = '$(subst ','\'',$(1))'

PLAN_SETS = --set model=$(call q,$(MODEL)) --set backends=$(call q,$(BACKENDS)) \
  --set precisions=$(call q,$(PRECISIONS)) --set batch_sizes=$(call q,$(BATCH_SIZES)) \
  --set shapes=$(call q,$(SHAPES)) --set warmup=$(call q,$(WARMUP)) --set iters=$(call q,$(ITERS)) \
  --set duration=$(call q,$(DURATION)) --set device=$(call q,$(DEVICE)) --set outliers=$(call q,$(OUTLIERS)) \
  --set weights=$(call q,$(WEIGHTS)) --set seed=$(call q,$(SEED)) --set unstable_cv=$(call q,$(UNSTABLE_CV)) \
  --set channels_last=$(call q,$(CHANNELS_LAST)) --set tf32=$(call q,$(TF32)) \
  --set compile_mode=$(call q,$(COMPILE_MODE)) --set trt_workspace_gib=$(call q,$(TRT_WORKSPACE)) \
  --set trt_opt_level=$(call q,$(TRT_OPT_LEVEL)) --set models_dir=$(call q,$(MODELS_DIR)) \
  --set cache_dir=$(call q,$(CACHE_DIR)) --set data=$(call q,$(DATA)) \
  --set price_per_hour=$(call q,$(PRICE_PER_HOUR)) --set concurrency=$(call q,$(CONCURRENCY)) \
  --set rates=$(call q,$(RATES)) --set load=$(call q,$(LOAD))

.PHONY: help setup test test-fast report execute lab models clean-cache index

help:
	@echo "make setup                      create $(VENV) and install benchbook with its dependencies"
	@echo "make test                       run the test suite"
	@echo "make report MODEL=name [...]    export, benchmark every backend, render reports/<model>/<run>/report.html"
	@echo "  BACKENDS=$(BACKENDS) PRECISIONS=$(PRECISIONS) BATCH_SIZES=$(BATCH_SIZES) SHAPES=$(SHAPES) DEVICE=$(DEVICE)"
	@echo "  WARMUP=$(WARMUP)s ITERS=$(ITERS) DURATION=$(DURATION)s OUTLIERS=$(OUTLIERS) WEIGHTS=<state_dict.pth>"
	@echo "  RUN_ID=<existing run id> resumes an interrupted run (Ctrl-C keeps every measured point and prints the id); empty = a new run"
	@echo "  DATA=<folder of labelled images, one sub-folder per class>: top-1/top-5 accuracy per backend"
	@echo "  PRICE_PER_HOUR=<the machine's price per hour>: cost per million inferences per configuration"
	@echo "  LOAD=$(LOAD) (auto|all|none) CONCURRENCY=$(CONCURRENCY) RATES=$(RATES): latency under load (closed loop, Poisson arrivals, dynamic batching)"
	@echo "  bad values are refused in seconds, before any work, with what is valid"
	@echo "make compare RUNS=\"<run dir> <run dir> ...\"  one HTML page comparing runs (first = reference)"
	@echo "make fidelity                   harness checks on a CUDA GPU (vs torch.utils.benchmark, sampler cost, GPU busy time)"
	@echo "make models                     list the models"
	@echo "make lab                        JupyterLab on the notebooks (localhost only, token required)"

# --- set-up --------------------------------------------------------------------------------
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[$(EXTRAS)]"
	@# headless Chromium renders reports in the browser test; installed where this is a root shell with apt
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: chromium not installed; the browser test will be skipped"; fi
	touch $@

test:
	$(PYTHON) -m pytest -q -ra

test-fast:
	$(PYTHON) -m pytest -q -ra -m "not slow"

models:
	@$(PYTHON) -m lib.cli models $(if $(MODELS_DIR),--models-dir $(call q,$(MODELS_DIR)))

lab:
	$(PYTHON) -m jupyter lab --ServerApp.ip=127.0.0.1 --no-browser --notebook-dir=notebooks

# --- the report pipeline -----------------------------------------------------------------
# The plan step validates every parameter (seconds, before any heavy work), creates the run folder
# and writes plan.mk there; a second make then builds that run's files from it.
# Ctrl-C or kill: every point measured so far stays on disk; RUN_ID=<the id printed> resumes.
report:
	@run_dir=$$($(PYTHON) -m lib.cli plan $(PLAN_SETS) --reports-dir $(call q,$(REPORTS_DIR)) \
	  --run-id $(call q,$(RUN_ID)) --unknown-vars '$(UNKNOWN_VARS)' --known-vars '$(PARAMS)') && \
	  $(MAKE) --no-print-directory execute PLAN=$$run_dir/plan.mk

ifdef PLAN
include $(PLAN)
BENCH_DONE := $(foreach c,$(COMBOS),$(RUN_DIR)/bench/$(subst @,-,$(c))/notebook.done)

execute: $(RUN_DIR)/report.html
	@$(PYTHON) -m lib.cli index $(call q,$(REPORTS_DIR))
	@echo "report: $(RUN_DIR)/report.html"

# Export (cached by content hash under $(CACHE_DIR)/onnx): redone only when the model's files change.
$(ONNX_STAMP): $(ONNX_DEPS) notebooks/00_export.ipynb lib/export.py
	@$(PYTHON) -m lib.cli notebook export --run-dir $(RUN_DIR) --stamp $@

$(RUN_DIR)/export.json: $(ONNX_STAMP)
	@$(PYTHON) -m lib.cli export-record --run-dir $(RUN_DIR)

# One kernel per backend/precision: a crash takes down only its own notebook (recorded, sweep goes on).
$(RUN_DIR)/bench/%/notebook.done: $(RUN_DIR)/export.json notebooks/10_benchmark.ipynb
	@$(PYTHON) -m lib.cli notebook benchmark --run-dir $(RUN_DIR) --combo $*

$(RUN_DIR)/analysis.ipynb: $(BENCH_DONE) $(RUN_DIR)/export.json notebooks/20_analysis.ipynb
	@$(PYTHON) -m lib.cli notebook analysis --run-dir $(RUN_DIR)

$(RUN_DIR)/report.html: $(RUN_DIR)/analysis.ipynb
	@$(PYTHON) -m lib.cli html $(RUN_DIR)
endif

index:
	@$(PYTHON) -m lib.cli index $(call q,$(REPORTS_DIR))

clean-cache:
	rm -rf $(CACHE_DIR)

# --- figures about the harness itself (CUDA GPU): fidelity vs torch.utils.benchmark, sampler cost,
# timed median vs the GPU's busy time (CUPTI)
FIDELITY_BATCH ?= 32
.PHONY: fidelity
fidelity:
	$(PYTHON) -m lib.fidelity --model $(call q,$(MODEL)) --batch $(call q,$(FIDELITY_BATCH)) --cache $(call q,$(CACHE_DIR))

# --- compare runs: one HTML page across runs (two GPUs, two library versions, before/after) ----------
# make compare RUNS="reports/<model>/<run A> reports/<model>/<run B> ..."  (the first run is the reference)
# -> $(REPORTS_DIR)/compare/<UTC time>/compare.html, a new folder every time
.PHONY: compare
compare:
	@$(PYTHON) -m lib.compare --runs $(call q,$(RUNS)) --outliers $(call q,$(OUTLIERS)) \
	  --reports-dir $(call q,$(REPORTS_DIR))
