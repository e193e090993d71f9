"""Faults, provoked for real, and what is kept:

* a backend whose process crashes (a real SIGSEGV from reading address 0, a real SIGABRT) takes down
  only its own kernel: the sweep goes on, the report renders and shows the crash with its stack;
* Ctrl-C (a real SIGINT to a running ``make report``'s process group) and ``kill`` (SIGTERM) keep every
  point measured so far, intact; RUN_ID=<id> resumes measuring only the missing points; a new run
  never touches an earlier one;
* a truncated cached ONNX export is detected by its sha256 and rebuilt, with a warning;
* a load.py whose build_model raises stops the run at the export with one line naming model and cause;
* out of memory at one batch size is recorded as "oom" and the sweep goes on. No OOM is provoked on a
  device for real (there is no GPU here, and exhausting host memory is not safe): the classifier is fed
  real exception types and messages, a real ORT arena exhaustion and real host allocation failures, and
  the recorded point comes from a model that raises torch.cuda.OutOfMemoryError at batch 3.

The pipeline tests (``slow``) share one tiny "faulty" model and one CACHE_DIR, so it is exported once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lib.common.cache import read_json, sha256_file

from conftest import FIXTURES, REPO, Log

FAULTY_LOAD_PY = '''
"""The tiny CNN of tests/fixtures with faults on request, read from the environment when it runs:

* BENCHBOOK_TEST_FAULT=segv|abort: building it for the torch backend crashes that process (a real
  SIGSEGV from reading address 0, or a real SIGABRT); the export and the other backends build it fine;
  segv-pass2: the same, only in the second pass's worker (lib/sweep/second_pass.py);
* BENCHBOOK_TEST_OOM=cuda|host: its forward pass at batch 3 fails to allocate: ``cuda`` raises the
  error CUDA raises (torch.cuda.OutOfMemoryError; no GPU needed), ``host`` asks the CPU allocator for
  4 EiB, a real allocation failure that allocates nothing.
"""
import ctypes
import os
import traceback

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        oom = os.environ.get("BENCHBOOK_TEST_OOM")
        if oom and x.shape[0] == 3:
            if oom == "cuda":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a "
                                                  "total capacity of 79.19 GiB of which 1.25 GiB is free.")
            torch.empty(1 << 62, dtype=torch.uint8)
        return self.body(x)


def build_model(config):
    fault = os.environ.get("BENCHBOOK_TEST_FAULT")
    stack = traceback.extract_stack()
    if fault == "segv-pass2" and not any(f.filename.endswith("sweep/second_pass.py") for f in stack):
        fault = None
    if fault and any(f.filename.endswith("backends/torch/engine.py") for f in stack):
        print(f"faulty: crashing with {fault}", flush=True)
        if fault == "abort":
            os.abort()
        ctypes.string_at(0)
    return Net()
'''


def write_faulty(root: Path, name: str = "faulty", load_py: str = FAULTY_LOAD_PY) -> Path:
    raw = yaml.safe_load((FIXTURES / "tiny_cnn" / "config.yaml").read_text())
    raw["name"] = name
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (d / "load.py").write_text(textwrap.dedent(load_py).lstrip())
    return root


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BENCHBOOK_MODELS_DIR", "RUN_ID", "BENCHBOOK_TEST_FAULT",
                        "BENCHBOOK_TEST_OOM")}
    return {**env, **extra}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, sha256_file(p) if p.is_file() else "")
            for p in sorted(folder.rglob("*"))}


def _kernel_pid(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("[benchbook] kernel pid "):
            return int(line.split()[-1])
    return None


def _gone(pid: int | None, wait_s: float = 30) -> bool:
    import psutil

    deadline = time.monotonic() + wait_s
    while pid is not None and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return pid is not None


def _check_points(points_dir: Path) -> dict:
    """Every point on disk is consistent: valid JSON, and every round it lists has all its timed samples in
    its parquet. Returns {point: its rounds}."""
    records = {}
    for pj in sorted(points_dir.glob("*.json")):
        rec = json.loads(pj.read_text())
        assert rec["status"] == "ok", rec
        if rec["rounds"]:
            frame = pd.read_parquet(pj.with_suffix(".parquet"))
            assert len(frame) == sum(r["n"] for r in rec["rounds"]) > 0
        records[pj.stem] = rec["rounds"]
    assert not list(points_dir.glob(".*.tmp")), "a half-written file was left behind"
    return records


def _n_rounds(records: dict) -> int:
    return sum(len(r) for r in records.values())


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A models folder with the faulty model, and a CACHE_DIR shared by this module's pipelines."""
    root = tmp_path_factory.mktemp("faults")
    return {"models": write_faulty(root / "models"), "cache": root / "cache", "root": root}


def make_report(faulty: dict, reports: Path, *args: str, env: dict | None = None, timeout: int = 400):
    cmd = ["make", "--no-print-directory", "report", "MODEL=faulty", f"MODELS_DIR={faulty['models']}",
           f"REPORTS_DIR={reports}", f"CACHE_DIR={faulty['cache']}", "ITERS=3", "DURATION=0.25", "WARMUP=0.02", *args]
    # (DURATION long enough for the ~10 Hz resource sampler to tick inside every timed window: lib/report/stability.py's
    # plot_resources fails on a run where none did)
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


# --- a backend that crashes its process ---------------------------------------------------------------
def _crashed_run(faulty: dict, folder: str, backends: str, fault: str) -> tuple[str, Path, Path]:
    """``make report`` of the faulty model with ``BENCHBOOK_TEST_FAULT=fault``, which must still end well:
    (its output, the run folder, the faulty load.py the crash stacks name)."""
    reports = faulty["root"] / folder
    proc = make_report(faulty, reports, f"BACKENDS={backends}", env=_env(BENCHBOOK_TEST_FAULT=fault))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    (run_dir,) = (reports / "faulty").iterdir()
    return out, run_dir, faulty["models"] / "faulty" / "load.py"


@pytest.mark.slow
def test_crashing_backend_takes_down_only_its_own_kernel(faulty):
    out, run_dir, load_py = _crashed_run(faulty, "crash-reports", "torch,ort", "segv")
    summary = f"kernel crashed (SIGSEGV: Segmentation fault) at {load_py} line "
    assert "[make] benchmark torch/fp32 pass 1 (1/2) FAILED after" in out and summary in out, out[-4000:]

    torch_dir, ort_dir = run_dir / "bench" / "torch-fp32", run_dir / "bench" / "ort-fp32"
    failed = read_json(torch_dir / "notebook.failed.json")
    assert failed["summary"].startswith(summary) and failed["summary"].endswith(" in build_model")
    error = failed["error"]
    assert error.splitlines()[-1] == failed["summary"]  # the record ends with what matters (the report shows its tail)
    assert "Fatal Python error: Segmentation fault" in error and f'File "{load_py}", line' in error
    # (the last lines the notebook printed are in the record too when they left the kernel before it died)
    assert not (torch_dir / "pass1.done").exists() and not list((torch_dir / "points").glob("*.json"))
    assert _gone(_kernel_pid(torch_dir / "kernel.log"))  # it crashed in pass 1

    # the other backend ran in its own kernel, unaffected, and its pass 2 ran
    assert (ort_dir / "pass1.done").exists() and not (ort_dir / "notebook.failed.json").exists()
    assert read_json(ort_dir / "done.json") == {"points": 2, "ok": 2, "oom": 0, "error": 0}

    # the report rendered and shows the crash with the tail of its error
    from lib.results.run import load_run

    run = load_run(run_dir)
    crashed = run.failures[run.failures["status"] == "crashed"]
    assert list(crashed["backend"]) == ["torch"] and summary in crashed["reason"].iloc[0]
    assert set(run.points["backend"]) == {"ort"}
    html = (run_dir / "report.html").read_text()
    assert "crashed" in html and "kernel crashed (SIGSEGV: Segmentation fault)" in html
    assert "Fatal Python error: Segmentation fault" in html
    assert f"report: {run_dir}/report.html" in out

    # the same backend aborting (SIGABRT), rerun on that run folder: recorded the same way
    proc = subprocess.run([sys.executable, "-m", "lib.pipeline.cli", "notebook", "benchmark", "--run-dir", str(run_dir),
                           "--combo", "torch-fp32"], cwd=REPO, env=_env(BENCHBOOK_TEST_FAULT="abort"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = read_json(torch_dir / "notebook.failed.json")
    assert failed["summary"].startswith(f"kernel crashed (SIGABRT: Aborted) at {load_py} line ")
    assert "Fatal Python error: Aborted" in failed["error"]


@pytest.mark.slow
def test_a_backend_that_crashes_the_second_pass_is_recorded_and_the_rest_go_on(faulty):
    """Pass 2 runs every backend in one process: torch (first in pass 2's reverse order) segfaults there; its
    pass-1 rounds stay in the report, the crash is recorded from the worker's signal and faulthandler's stack,
    and ort's pass 2 runs in a new worker."""
    out, run_dir, load_py = _crashed_run(faulty, "crash2-reports", "ort,torch", "segv-pass2")
    summary = f"the second-pass worker crashed (SIGSEGV: Segmentation fault) at {load_py} line "
    assert "[make] benchmark torch/fp32 pass 2 crashed the worker (recorded;" in out and summary in out, out[-4000:]
    torch_dir, ort_dir = run_dir / "bench" / "torch-fp32", run_dir / "bench" / "ort-fp32"
    failed = read_json(torch_dir / "notebook.failed.json")
    assert failed["pass"] == 2 and failed["summary"].startswith(summary) and failed["summary"].endswith(" in build_model")
    assert "Fatal Python error: Segmentation fault" in failed["error"]
    assert not (torch_dir / "done.json").exists()
    assert read_json(ort_dir / "done.json") == {"points": 2, "ok": 2, "oom": 0, "error": 0}
    assert (run_dir / "bench" / "pass2.done").exists() and (run_dir / "report.html").exists()

    from lib.results.run import load_run

    run = load_run(run_dir)
    assert set(run.points["backend"]) == {"ort", "torch"}  # torch's pass-1 rounds are kept
    assert set(run.rounds.loc[run.rounds["backend"] == "torch", "pass"]) == {1}
    assert set(run.rounds.loc[run.rounds["backend"] == "ort", "pass"]) == {1, 2}
    crashed = run.failures[run.failures["status"] == "crashed"]
    assert list(crashed["backend"]) == ["torch"] and summary in crashed["reason"].iloc[0]


# --- Ctrl-C, kill, resume -----------------------------------------------------------------------------
# 3 points x 2 modes x 2 rounds of >= 0.5 s: time to interrupt between rounds
SLOW_POINTS = ["BACKENDS=torch", "BATCH_SIZES=1,2,4", "DURATION=0.5", "ROUNDS=2", "POINT_CAP=0.5"]


def _start(faulty: dict, reports: Path, *args: str) -> subprocess.Popen:
    cmd = ["make", "--no-print-directory", "report", "MODEL=faulty", f"MODELS_DIR={faulty['models']}",
           f"REPORTS_DIR={reports}", f"CACHE_DIR={faulty['cache']}", "ITERS=3", "WARMUP=0.02", *SLOW_POINTS, *args]
    log = open(reports.parent / f"{reports.name}-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a terminal's Ctrl-C would hit
    proc.log = log
    return proc


def _rounds_in(reports: Path) -> int:
    n = 0
    for p in reports.glob("faulty/*/bench/*/points/*.json"):
        try:
            n += len(json.loads(p.read_text()).get("rounds") or [])
        except ValueError:
            pass
    return n


def _interrupt_after_first_point(proc: subprocess.Popen, reports: Path, sig: int, exclude: int = 0,
                                 timeout: float = 300) -> tuple[Path, str]:
    """Wait until more than ``exclude`` rounds are on disk, send ``sig`` to the whole process group;
    (run_dir, output)."""
    deadline = time.monotonic() + timeout
    while True:
        new = list(reports.glob("faulty/*/bench/*/points/*.json"))
        if new and _rounds_in(reports) > exclude:
            break
        assert proc.poll() is None, f"make ended before a point was measured:\n{_output(proc)[-4000:]}"
        assert time.monotonic() < deadline, f"no point after {timeout} s:\n{_output(proc)[-4000:]}"
        time.sleep(0.2)
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return max((p.parents[3] for p in new), key=lambda d: d.name), _output(proc)  # the newest run


def _output(proc: subprocess.Popen) -> str:
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


@pytest.mark.slow
def test_interrupt_keeps_points_and_resume_measures_only_the_missing(faulty):
    reports = faulty["root"] / "sigint-reports"
    reports.mkdir()

    # 1. Ctrl-C during the sweep
    proc = _start(faulty, reports)
    run_a, out = _interrupt_after_first_point(proc, reports, signal.SIGINT)
    assert proc.returncode != 0
    points = run_a / "bench" / "torch-fp32" / "points"
    kept = _check_points(points)
    n = _n_rounds(kept)
    assert 1 <= n < 12  # 3 points x 2 modes x 2 rounds
    with_rounds = sum(1 for r in kept.values() if r)
    assert (f"interrupted during the benchmark notebook (torch-fp32): the {n} round{'s' if n != 1 else ''} "
            f"({with_rounds} point{'s' if with_rounds != 1 else ''}) measured so far "
            f"{'is' if n == 1 else 'are'} kept in {run_a}; to resume, rerun the same command with "
            f"RUN_ID={run_a.name}") in out, out[-3000:]
    assert "Traceback" not in out and "Deleting file" not in out, out[-3000:]
    assert not (run_a / "report.html").exists()
    assert _gone(_kernel_pid(run_a / "bench" / "torch-fp32" / "kernel.log"))

    # 2. kill (SIGTERM to the process group) during the resumed sweep: handled like Ctrl-C
    proc = _start(faulty, reports, f"RUN_ID={run_a.name}")
    _, out = _interrupt_after_first_point(proc, reports, signal.SIGTERM, exclude=n)
    assert proc.returncode != 0
    assert f"RUN_ID={run_a.name}" in out and "interrupted during the benchmark notebook" in out, out[-3000:]
    assert "[torch/fp32] resuming pass" in out and "points already on disk (kept; only missing rounds are measured)" in out, out[-3000:]
    kept2 = _check_points(points)
    assert n < _n_rounds(kept2)
    assert all(kept2[k][:len(r)] == r for k, r in kept.items())  # the rounds on disk are kept as they were

    # 3. resume to the end: only the missing rounds are measured
    proc = subprocess.run(["make", "--no-print-directory", "report", "MODEL=faulty", f"MODELS_DIR={faulty['models']}",
                           f"REPORTS_DIR={reports}", f"CACHE_DIR={faulty['cache']}", "ITERS=3", "WARMUP=0.02",
                           *SLOW_POINTS, f"RUN_ID={run_a.name}"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[torch/fp32] resuming pass" in out
    final = _check_points(points)
    assert all(final[k][:len(r)] == r for k, r in kept2.items())
    assert all(len([x for x in r if x["mode"] == m]) >= 2 for r in final.values() for m in ("device", "end_to_end"))
    assert out.count(f"[plan] run {run_a.name} exists") == 1  # said once, by the plan step (issue 14)
    assert read_json(run_a / "bench" / "torch-fp32" / "done.json")["ok"] == 3
    assert (run_a / "report.html").is_file()
    snapshot_a = _snapshot(run_a)

    # 4. the same command without RUN_ID: a new run; interrupting it leaves the earlier run (and report) alone
    proc = _start(faulty, reports)
    run_b, out = _interrupt_after_first_point(proc, reports, signal.SIGINT, exclude=_rounds_in(reports))
    assert run_b != run_a and run_b.parent == run_a.parent
    assert proc.returncode != 0 and f"RUN_ID={run_b.name}" in out
    assert _snapshot(run_a) == snapshot_a


# --- a truncated cached export -------------------------------------------------------------------------
@pytest.mark.slow
def test_truncated_onnx_is_detected_and_rebuilt(faulty):
    reports = faulty["root"] / "onnx-reports"
    args = ("BACKENDS=ort", "BATCH_SIZES=1")
    if not list(faulty["cache"].glob("onnx/faulty/*/export-*.done")):  # run alone: make the export first
        assert make_report(faulty, reports, *args).returncode == 0
    (onnx,) = [p for p in faulty["cache"].glob("onnx/faulty/*/model.onnx")
               if list(p.parent.glob("export-*.done"))]
    good = onnx.read_bytes()
    with open(onnx, "r+b") as f:  # a killed copy, a full disk: the file is cut short
        f.truncate(len(good) // 3)
    proc = make_report(faulty, reports, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (f"[plan] warning: the cached ONNX export cannot be used: {onnx} does not match its recorded "
            f"sha256 (truncated or corrupt); it will be rebuilt") in out
    assert "[export] rebuilding:" in out and "torch.onnx.export" in out
    manifest = read_json(onnx.parent / "manifest.json")
    assert onnx.stat().st_size == manifest["bytes"] and sha256_file(onnx) == manifest["sha256"]
    run_dir = sorted((reports / "faulty").iterdir())[-1]
    assert read_json(run_dir / "bench" / "ort-fp32" / "done.json")["ok"] == 1


# --- a load.py that raises ------------------------------------------------------------------------------
@pytest.mark.slow
def test_load_py_that_raises_stops_the_run_at_the_export(tmp_path):
    models = write_faulty(tmp_path / "models", "broken", load_py='''
        import torch


        def build_model(config):
            raise RuntimeError("cannot reach the checkpoint server")
    ''')
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "--no-print-directory", "report", "MODEL=broken", f"MODELS_DIR={models}",
                           f"REPORTS_DIR={tmp_path / 'r'}", f"CACHE_DIR={tmp_path / 'c'}"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: model 'broken': build_model() in {models / 'broken' / 'load.py'} raised RuntimeError "
                      f"(line 5): cannot reach the checkpoint server"], proc.stderr
    assert "Traceback" not in proc.stderr and "[make] benchmark" not in proc.stderr
    assert not (tmp_path / "r" / "broken").exists()  # issue 14: no empty run folder left behind
    print(f"load.py error reported after {seconds:.1f} s (a kernel had to start and import torch)")


# --- out of memory ---------------------------------------------------------------------------------------


def test_is_oom_on_real_exception_types():
    import torch

    from lib.sweep.bench import is_oom

    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.19 GiB "
                                              "total capacity; 1.25 GiB free)"))
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    # the text ORT's CUDA execution provider raises when the device is full (it cannot be provoked here)
    assert is_oom(ort_state.RuntimeException(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
        "Name:'/conv1/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 "
        "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, "
        "onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 4294967296"))
    assert not is_oom(ValueError("shapes (3,4) and (5,6) not aligned"))
    assert not is_oom(RuntimeError("Given groups=1, weight of size [8, 3, 3, 3], expected input to have 3 channels"))


def _real_host_alloc_failures():
    import numpy as np
    import torch

    errors = {}
    try:
        torch.empty(1 << 62, dtype=torch.uint8)  # the allocator is asked for 4 EiB and refuses: nothing allocated
    except RuntimeError as e:
        errors["torch"] = e
    try:
        np.empty(1 << 62, dtype=np.uint8)
    except MemoryError as e:
        errors["numpy"] = e
    return errors


@pytest.mark.parametrize("lib_name", ["torch", "numpy"])
def test_is_oom_on_real_host_allocation_failures(lib_name):
    from lib.sweep.bench import is_oom

    exc = _real_host_alloc_failures()[lib_name]
    assert is_oom(exc), f"{type(exc).__name__}: {exc}"


def test_is_oom_on_a_real_ort_arena_exhaustion(tiny_onnx):
    """ONNX Runtime on the CPU with its arena capped at 256 KiB, run at batch 16: a real allocation failure
    (in a subprocess: the capped allocator is registered process-wide)."""
    code = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        from lib.sweep.bench import is_oom
        so = ort.SessionOptions()
        so.add_session_config_entry("session.use_env_allocators", "1")
        mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(mem, ort.OrtArenaCfg(256 * 1024, -1, -1, -1))
        sess = ort.InferenceSession({str(tiny_onnx["fp32"].path)!r}, so, providers=["CPUExecutionProvider"])
        try:
            sess.run(None, {{"image": np.zeros((16, 3, 64, 64), np.float32)}})
            print("NO ERROR")
        except Exception as e:
            print("OOM" if is_oom(e) else "NOT-OOM", type(e).__name__, str(e)[-200:])
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    last = proc.stdout.strip().splitlines()[-1]
    assert "smaller than requested bytes" in last or "allocate" in last.lower(), last
    assert last.startswith("OOM"), last


def _oom_run(tmp_path, monkeypatch, kind: str):
    from lib.config.params import RunParams
    from lib.sweep.bench import run_backend
    from lib.sweep.plan import make_plan

    models = write_faulty(tmp_path / "models")
    monkeypatch.setenv("BENCHBOOK_TEST_OOM", kind)
    params = RunParams.from_strings(model="faulty", models_dir=str(models), backends="torch", precisions="fp32",
                                    device="cpu", batch_sizes="1,3,4", warmup="0.02", iters="3", duration="0.3",
                                    cache_dir=str(tmp_path / "cache"))
    plan = make_plan(params, tmp_path / "reports", log=Log())
    log = Log()
    done = run_backend(plan.run_dir, "torch", "fp32", log=log)
    return plan.run_dir, done, log


def test_oom_point_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from lib.report import stability
    from lib.results.run import load_run

    run_dir, done, log = _oom_run(tmp_path, monkeypatch, "cuda")
    assert done == {"points": 3, "ok": 2, "oom": 1, "error": 0}
    points = run_dir / "bench" / "torch-fp32" / "points"
    rec = read_json(points / "bs3_32x32.json")
    assert rec["status"] == "oom" and rec["batch"] == 3 and "OutOfMemoryError: CUDA out of memory" in rec["error"]
    assert read_json(points / "bs4_32x32.json")["status"] == "ok"  # measured after the OOM
    assert "batch 3, shape 32x32: OUT OF MEMORY" in log.text
    table = stability.failures_table(load_run(run_dir))
    row = table[table["status"] == "oom"]
    assert list(row["batch"]) == ["3"] and "CUDA out of memory" in row["reason"].iloc[0]
    assert "oom" in table.to_html()


def test_real_host_oom_point_is_recorded_as_oom(tmp_path, monkeypatch):
    run_dir, done, _ = _oom_run(tmp_path, monkeypatch, "host")
    assert done["ok"] == 2  # the sweep goes on either way
    assert done == {"points": 3, "ok": 2, "oom": 1, "error": 0}


@pytest.mark.slow
def test_oom_point_renders_in_the_report(tmp_path, monkeypatch):
    run_dir, done, _ = _oom_run(tmp_path, monkeypatch, "cuda")
    for cmd in (["notebook", "analysis", "--run-dir", str(run_dir)], ["html", str(run_dir)]):
        proc = subprocess.run([sys.executable, "-m", "lib.pipeline.cli", *cmd], cwd=REPO, env=_env(), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    html = (run_dir / "report.html").read_text()
    assert "oom" in html and "CUDA out of memory. Tried to allocate 20.00 GiB" in html
