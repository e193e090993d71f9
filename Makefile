# benchbook: `make setup`, `make test`, `make report MODEL=efficientnet_b1`. `make help` lists everything.
SHELL := bash
.DEFAULT_GOAL := help
.SUFFIXES:
# A recipe that fails leaves no half-made target behind for the next make to take as done.
.DELETE_ON_ERROR:

VENV ?= .venv
# The project's venv when it exists; otherwise the host's python3 (e.g. a GPU host with its own stack).
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYTHONUNBUFFERED := 1

# --- run parameters (every one is validated before any work; `make help` explains them) -----
# Each is defined once, in lib/config/params.py RUN_PARAMETERS (default, parser, help text); these defaults and
# the PARAMS list below are checked against it by tests/config/test_params_registry.py.
MODEL ?= efficientnet_b1
BACKENDS ?= auto
PRECISIONS ?= auto
BATCH_SIZES ?= auto
SHAPES ?= auto
WARMUP ?= 0.2
ITERS ?= 5
DURATION ?= 0.25
ROUNDS ?= 4
POINT_CAP ?= 2.0
CI_TARGET ?= 0.01
NOISE_SPREAD ?= 0.05
HOST_SLOW ?= 0.10
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
CALIB ?=
MAX_ACC_DROP ?= auto
PRICE_PER_HOUR ?=
LOAD ?= auto
CONCURRENCY ?= 1,2,4,8
RATES ?= auto
RUNS ?=
FIDELITY_BATCH ?= 32
EXTRAS ?= test,tensorrt-rtx,transformers,torchao

# Every parameter above that `make report` reads; a variable given on the command line that is not one of
# these (or of PYTHON VENV EXTRAS) is refused with a did-you-mean, so BATCH_SIZE=8 is not silently ignored.
PARAMS := MODEL BACKENDS PRECISIONS BATCH_SIZES SHAPES WARMUP ITERS DURATION ROUNDS POINT_CAP CI_TARGET NOISE_SPREAD \
  HOST_SLOW DEVICE OUTLIERS WEIGHTS SEED \
  UNSTABLE_CV CHANNELS_LAST TF32 COMPILE_MODE TRT_WORKSPACE TRT_OPT_LEVEL RUN_ID REPORTS_DIR MODELS_DIR CACHE_DIR \
  DATA CALIB MAX_ACC_DROP PRICE_PER_HOUR LOAD CONCURRENCY RATES
OTHER_VARS := PYTHON VENV EXTRAS PLAN RUNS PYTHONPATH SHELL REPRO_TOL HOG FIDELITY_BATCH LAB_PORT
CMDLINE_VARS = $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v)))
UNKNOWN_VARS = $(filter-out $(PARAMS) $(OTHER_VARS),$(CMDLINE_VARS))

# A value quoted for the shell, so spaces or quotes in it reach the plan step's checks intact.
q = '$(subst ','\'',$(1))'
# A parameter's text as given, quoted: $(value) keeps make from expanding a "$(shell ...)" written in a value
# (make would run it), and unexport keeps make from expanding it to put it in the recipes' environment.
qv = $(call q,$(value $(1)))
unexport $(PARAMS) RUNS FIDELITY_BATCH

# Every run parameter but the plan step's own two, as --set NAME=value (the plan step maps each to its field).
PLAN_SETS = $(foreach v,$(filter-out RUN_ID REPORTS_DIR,$(PARAMS)),--set $(v)=$(call qv,$(v)))

.PHONY: help setup test test-fast report execute lab models clean-cache index

help:
	@echo "make setup                      create $(VENV) and install benchbook with its dependencies"
	@echo "make test                       run the test suite"
	@echo "make report MODEL=name [...]    export, benchmark every backend, render reports/<model>/<run>/report.html"
	@# the run parameters with their current values, from lib.config.params.RUN_PARAMETERS (each value single-quoted
	@# for the shell: it is printed, never run)
	@$(PYTHON) -m lib.pipeline.cli help $(foreach v,$(PARAMS),--set $(v)=$(call qv,$(v)))
	@echo "  bad values are refused in seconds, before any work, with what is valid"
	@echo "make compare RUNS=\"<run dir> <run dir> ...\"  one HTML page comparing runs (first = reference)"
	@echo "make fidelity                   harness checks on a CUDA GPU (vs torch.utils.benchmark, sampler cost, GPU busy time)"
	@echo "make reproducibility [vars]     make report twice, compare point by point (HOG=1:2 adds a periodic CPU hog)"
	@echo "make models                     list the models"
	@echo "make clean-cache                delete CACHE_DIR (refused unless it holds only benchbook's caches)"
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
	@$(PYTHON) -m lib.pipeline.cli models $(if $(value MODELS_DIR),--models-dir $(call qv,MODELS_DIR))

# Localhost only, with the token Jupyter generates (the URL it prints carries it). As root (containers,
# cloud GPU hosts) Jupyter refuses to start without --allow-root, so it is added there and only there.
LAB_PORT ?= 8888
lab:
	$(PYTHON) -m jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --no-browser \
	  --notebook-dir=notebooks$(if $(filter 0,$(shell id -u)), --allow-root)

# --- the report pipeline -----------------------------------------------------------------
# The plan step validates every parameter (seconds, before any heavy work), creates the run folder
# and writes plan.mk there; a second make then builds that run's files from it.
# Ctrl-C or kill: every point measured so far stays on disk; RUN_ID=<the id printed> resumes.
# The second make runs holding the run folder's lock (lib.pipeline.cli locked): a second `make report` of the same
# RUN_ID is refused, naming the live one.
report:
	@run_dir=$$($(PYTHON) -m lib.pipeline.cli plan $(PLAN_SETS) --reports-dir $(call qv,REPORTS_DIR) \
	  --run-id $(call qv,RUN_ID) --unknown-vars '$(UNKNOWN_VARS)' --known-vars '$(PARAMS)') && \
	  $(PYTHON) -m lib.pipeline.cli locked --run-dir "$$run_dir" -- \
	  $(MAKE) --no-print-directory execute PLAN=$$run_dir/plan.mk

# (Recipes stay single commands: bash then execs them, so make waits for them on Ctrl-C or kill. A step that
# is interrupted by itself, not through make, interrupts the makes above it: lib/pipeline/cli.py _interrupt_makes.)

ifdef PLAN
include $(PLAN)
# Two passes over the backends: pass 1 in plan order, a kernel each; pass 2 in reverse order, every backend in one
# process (lib/sweep/bench.py and lib/sweep/second_pass.py say why).
BENCH_PASS1 := $(foreach c,$(COMBOS),$(RUN_DIR)/bench/$(subst @,-,$(c))/pass1.done)
BENCH_DONE := $(RUN_DIR)/bench/pass2.done
# Chained pattern targets: make would delete them as intermediate files at the end; they are records.
.SECONDARY: $(BENCH_PASS1)

# Measurements never overlap: one step at a time whatever -j is given (and lib.common.runstate.device_lock keeps
# separate runs on one host from measuring on the same device at once).
.NOTPARALLEL:

execute: $(RUN_DIR)/report.html
	@$(PYTHON) -m lib.pipeline.cli summary $(RUN_DIR) --reports-dir $(call qv,REPORTS_DIR)

# Export (cached by content hash under $(CACHE_DIR)/onnx): redone only when the model's files change.
$(ONNX_STAMP): $(ONNX_DEPS) notebooks/00_export.ipynb lib/artifacts/export.py lib/artifacts/quantize.py
	@$(PYTHON) -m lib.pipeline.cli notebook export --run-dir $(RUN_DIR) --stamp $@

$(RUN_DIR)/export.json: $(ONNX_STAMP)
	@$(PYTHON) -m lib.pipeline.cli export-record --run-dir $(RUN_DIR)

# Pass 1, one kernel per backend/precision: a crash takes down only its own notebook (recorded, the sweep goes
# on). Pass 2 waits for every pass 1; a backend that crashes its process is recorded and the rest go on in a new one.
$(RUN_DIR)/bench/%/pass1.done: $(RUN_DIR)/export.json notebooks/10_benchmark.ipynb
	@$(PYTHON) -m lib.pipeline.cli notebook benchmark --run-dir $(RUN_DIR) --combo $* --pass 1

$(BENCH_DONE): $(BENCH_PASS1)
	@$(PYTHON) -m lib.pipeline.cli second-pass --run-dir $(RUN_DIR)

# Latency under load, after every benchmark pass (it picks its configurations from their results) and before
# the analysis: closed loop, Poisson arrivals, dynamic batching (lib/sweep/load_stage.py). LOAD=none writes only
# load/load.json saying so. A failure is recorded there and the report says why the section is empty.
$(RUN_DIR)/load/load.json: $(BENCH_DONE) notebooks/15_load.ipynb
	@$(PYTHON) -m lib.pipeline.cli notebook load --run-dir $(RUN_DIR)

# Both written under a temporary name and renamed when complete (lib/pipeline/cli.py, lib/report/render.py).
$(RUN_DIR)/analysis.ipynb: $(BENCH_DONE) $(RUN_DIR)/load/load.json $(RUN_DIR)/export.json notebooks/20_analysis.ipynb
	@$(PYTHON) -m lib.pipeline.cli notebook analysis --run-dir $(RUN_DIR)

$(RUN_DIR)/report.html: $(RUN_DIR)/analysis.ipynb
	@$(PYTHON) -m lib.pipeline.cli html $(RUN_DIR)
endif

index:
	@$(PYTHON) -m lib.pipeline.cli index $(call qv,REPORTS_DIR)

# Checked before anything is deleted: only a folder that holds nothing but benchbook's caches (lib.common.cache.clean_cache).
clean-cache:
	@$(PYTHON) -m lib.pipeline.cli clean-cache --cache-dir $(call qv,CACHE_DIR)

# --- figures about the harness itself (CUDA GPU): fidelity vs torch.utils.benchmark, sampler cost,
# timed median vs the GPU's busy time (CUPTI)
.PHONY: fidelity
fidelity:
	$(PYTHON) -m lib.sweep.fidelity --model $(call qv,MODEL) --batch $(call qv,FIDELITY_BATCH) --cache $(call qv,CACHE_DIR)

# --- compare runs: one HTML page across runs (two GPUs, two library versions, before/after) ----------
# make compare RUNS="reports/<model>/<run A> reports/<model>/<run B> ..."  (the first run is the reference)
# -> $(REPORTS_DIR)/compare/<UTC time>/compare.html, a new folder every time
.PHONY: compare
compare:
	@$(PYTHON) -m lib.report.compare --runs $(call qv,RUNS) --outliers $(call qv,OUTLIERS) \
	  --reports-dir $(call qv,REPORTS_DIR)

# --- does a report reproduce? `make report` twice with the same variables, compared point by point:
# agreement within REPRO_TOL, flags, silent disagreements, headlines, wall times (figures, not a test).
# HOG=1:2 runs a periodic all-core CPU hog beside both runs (1 s on, 2 s off).
REPRO_TOL ?= 0.05
HOG ?=
.PHONY: reproducibility
reproducibility:
	$(PYTHON) -m lib.pipeline.reproducibility run --python $(call q,$(PYTHON)) --tol $(call qv,REPRO_TOL) \
	  $(if $(HOG),--hog $(call qv,HOG)) -- $(foreach v,$(filter $(PARAMS),$(CMDLINE_VARS)),$(v)=$(call qv,$(v)))
