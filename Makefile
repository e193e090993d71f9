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
CHANNELS_LAST ?= 0
TF32 ?= 1
COMPILE_MODE ?= default
TRT_WORKSPACE ?= 4
TRT_OPT_LEVEL ?= 3
RUN_ID ?=
REPORTS_DIR ?= reports
MODELS_DIR ?=
CACHE_DIR ?= build
RUNS ?=
EXTRAS ?= test,tensorrt-rtx

PLAN_SETS = --set model=$(MODEL) --set backends=$(BACKENDS) --set precisions=$(PRECISIONS) \
  --set batch_sizes=$(BATCH_SIZES) --set shapes=$(SHAPES) --set warmup=$(WARMUP) --set iters=$(ITERS) \
  --set duration=$(DURATION) --set device=$(DEVICE) --set outliers=$(OUTLIERS) --set weights=$(WEIGHTS) \
  --set seed=$(SEED) --set unstable_cv=$(UNSTABLE_CV) --set channels_last=$(CHANNELS_LAST) --set tf32=$(TF32) \
  --set compile_mode=$(COMPILE_MODE) --set trt_workspace_gib=$(TRT_WORKSPACE) \
  --set trt_opt_level=$(TRT_OPT_LEVEL) --set models_dir=$(MODELS_DIR) --set cache_dir=$(CACHE_DIR)

.PHONY: help setup test test-fast report execute lab models clean-cache index

help:
	@echo "make setup                      create $(VENV) and install benchbook with its dependencies"
	@echo "make test                       run the test suite"
	@echo "make report MODEL=name [...]    export, benchmark every backend, render reports/<model>/<run>/report.html"
	@echo "  BACKENDS=$(BACKENDS) PRECISIONS=$(PRECISIONS) BATCH_SIZES=$(BATCH_SIZES) SHAPES=$(SHAPES) DEVICE=$(DEVICE)"
	@echo "  WARMUP=$(WARMUP)s ITERS=$(ITERS) DURATION=$(DURATION)s OUTLIERS=$(OUTLIERS) WEIGHTS=<state_dict.pth>"
	@echo "  RUN_ID=<existing run id> resumes an interrupted run; empty = a new run"
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
	@$(PYTHON) -m lib.cli models $(if $(MODELS_DIR),--models-dir $(MODELS_DIR))

lab:
	$(PYTHON) -m jupyter lab --ServerApp.ip=127.0.0.1 --no-browser --notebook-dir=notebooks

# --- the report pipeline -----------------------------------------------------------------
# The plan step validates every parameter (seconds, before any heavy work), creates the run folder
# and writes plan.mk there; a second make then builds that run's files from it.
report:
	@run_dir=$$($(PYTHON) -m lib.cli plan $(PLAN_SETS) --reports-dir $(REPORTS_DIR) --run-id "$(RUN_ID)") && \
	  $(MAKE) --no-print-directory execute PLAN=$$run_dir/plan.mk

ifdef PLAN
include $(PLAN)
BENCH_DONE := $(foreach c,$(COMBOS),$(RUN_DIR)/bench/$(subst @,-,$(c))/notebook.done)

execute: $(RUN_DIR)/report.html
	@$(PYTHON) -m lib.cli index $(REPORTS_DIR)
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
	@$(PYTHON) -m lib.cli index $(REPORTS_DIR)

clean-cache:
	rm -rf $(CACHE_DIR)
