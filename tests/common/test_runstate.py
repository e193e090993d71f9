"""lib.common.runstate: a run folder's state is checked, not assumed. Each defect is provoked for real: a second
process holding a lock, garbage written into a point file or params.json, a load.py or weights file changed
between the interruption and the resume, a backend killed with SIGKILL, a file size limit at the HTML step.
The ``make report`` ones (Ctrl-C during the analysis, a failed analysis, two reports of one run at once,
``-j2``) are in ``test_run_folder_pipeline`` below, marked slow."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from lib.common.errors import ConfigError
from lib.common.runstate import CorruptFile, RunBusy, device_lock, lock_holder, valid_points
from lib.results.run import load_run

from conftest import FIXTURES, REPO, TINY_LOAD_PY, Log, make_run

PY = sys.executable


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "RUN_ID")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _hold(code: str, ready: Path, env: dict | None = None) -> subprocess.Popen:
    """A second process that runs ``code`` (which must create ``ready``) and then sleeps until killed."""
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(code)], cwd=REPO, env=env or _env())
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the second process did not start"
        time.sleep(0.05)
    return proc


# --- corrupt files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage", b"{}", b'{"status": "ok"'],
                         ids=["binary", "empty-object", "truncated"])
def test_a_corrupt_point_is_named_and_the_rest_of_the_run_loads(copy_run, content):
    bad = copy_run / "bench" / "torch-fp32" / "points" / "bs1_32x32.json"
    bad.write_bytes(content)
    run = load_run(copy_run)  # before: UnicodeDecodeError / JSONDecodeError naming no file, or {} dropped
    row = run.failures.query("status == 'corrupt'")
    assert len(row) == 1 and str(bad) in row["reason"].iloc[0], run.failures
    assert set(run.points["backend"]) == {"torch", "ort"}  # the other backends (and points) still load
    assert len(run.points.query("backend == 'ort'")) == len(load_run(copy_run).points.query("backend == 'ort'"))


def test_a_corrupt_point_is_set_aside_and_measured_again_on_resume(copy_run):
    from lib.sweep.bench import run_backend

    points = copy_run / "bench" / "torch-fp32" / "points"
    (points / "bs1_32x32.json").write_bytes(b"\x00\xff garbage")
    keep = (points / "bs4_32x32.json").read_bytes()
    log = Log()
    done = run_backend(copy_run, "torch", "fp32", log=log)
    assert done["ok"] == 2, done  # before: the garbage was counted as measured and read as a result
    assert f"{points / 'bs1_32x32.json'} is corrupt" in log.text and "measured again" in log.text
    assert (points / "bs1_32x32.json.corrupt-1").read_bytes() == b"\x00\xff garbage"  # kept for inspection
    assert json.loads((points / "bs1_32x32.json").read_text())["status"] == "ok"
    assert (points / "bs4_32x32.json").read_bytes() == keep  # the good point is not measured again
    assert "rounds of 1 of 2 points already on disk" in log.text
    assert load_run(copy_run).failures.query("status == 'corrupt'").empty


def test_an_ok_point_without_its_samples_is_measured_again(copy_run):
    points = copy_run / "bench" / "ort-fp32" / "points"
    (points / "bs4_32x32.parquet").unlink()
    assert valid_points(points, log=Log()) == {"bs1_32x32"}
    assert (points / "bs4_32x32.json.corrupt-1").exists()


def test_garbage_params_json_is_a_clear_error(copy_run, tmp_path, cache_dir):
    other = tmp_path / "other" / "tiny_cnn" / "b"
    shutil.copytree(copy_run, other)
    (copy_run / "params.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFile) as e:  # before: UnicodeDecodeError, the file not named
        load_run(copy_run)
    assert f"{copy_run / 'params.json'} is corrupt: not UTF-8 text" in str(e.value)
    with pytest.raises(CorruptFile):  # resuming it: the same one-line error
        make_run(copy_run.parent.parent, cache_dir, run_id=copy_run.name)
    proc = subprocess.run([PY, "-m", "lib.report.compare", "--runs", f"{other} {copy_run}", "--reports-dir",
                           str(tmp_path / "r")], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{copy_run / 'params.json'} is corrupt" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_names_a_corrupt_point(copy_run, tmp_path):
    from lib.report.compare import load_comparison

    other = tmp_path / "other" / "tiny_cnn" / "b"
    shutil.copytree(copy_run, other)
    bad = other / "bench" / "ort-fp32" / "points" / "bs4_32x32.json"
    bad.write_text("not json")
    cmp = load_comparison(f"{copy_run} {other}")  # before: JSONDecodeError, the file not named
    assert any(str(bad) in r for r in cmp.runs[1].failures["reason"])
    (other / "plan.json").write_text("[1, 2]")
    proc = subprocess.run([PY, "-m", "lib.report.compare", "--runs", f"{copy_run} {other}", "--reports-dir",
                           str(tmp_path / "r")], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{other / 'plan.json'} is corrupt" in proc.stderr, proc.stderr


# --- resume checks what it resumes ------------------------------------------------------------------------
def _model_copy(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(FIXTURES / "tiny_cnn", models / "tiny_cnn")
    return models


def test_resume_refuses_a_changed_load_py(tmp_path, cache_dir):
    models = _model_copy(tmp_path)
    plan = make_run(tmp_path / "reports", cache_dir, models_dir=str(models))
    (models / "tiny_cnn" / "load.py").write_text(TINY_LOAD_PY.replace("nn.ReLU()", "nn.GELU()"))
    with pytest.raises(ConfigError) as e:  # before: resumed, measuring new points on the new model
        make_run(tmp_path / "reports", cache_dir, run_id=plan.run_dir.name, models_dir=str(models))
    msg = str(e.value)
    assert f"RUN_ID={plan.run_dir.name} cannot be resumed" in msg and "load.py (changed" in msg, msg
    (models / "tiny_cnn" / "load.py").write_text(TINY_LOAD_PY)  # restored: the run resumes
    assert make_run(tmp_path / "reports", cache_dir, run_id=plan.run_dir.name, models_dir=str(models)).resumed


def test_resume_refuses_changed_weights(tmp_path, cache_dir, tiny_module):
    import torch

    weights = tmp_path / "w.pth"
    torch.save(tiny_module.state_dict(), weights)
    plan = make_run(tmp_path / "reports", cache_dir, weights=str(weights))
    state = tiny_module.state_dict()
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, weights)  # same path, other weights
    with pytest.raises(ConfigError) as e:
        make_run(tmp_path / "reports", cache_dir, run_id=plan.run_dir.name, weights=str(weights))
    assert "the weights file (sha256" in str(e.value), str(e.value)


def test_resume_refuses_other_library_versions(tmp_path, cache_dir):
    plan = make_run(tmp_path / "reports", cache_dir)
    fp = json.loads((plan.run_dir / "fingerprint.json").read_text())
    assert fp["libraries"]["torch"] != "-" and fp["model_files"]["load.py"]
    fp["libraries"]["torch"] = "1.0.0"  # what a run started under torch 1.0.0 recorded
    (plan.run_dir / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(ConfigError) as e:
        make_run(tmp_path / "reports", cache_dir, run_id=plan.run_dir.name)
    assert "torch 1.0.0 there" in str(e.value)


def test_a_run_id_that_does_not_exist_is_refused_listing_the_resumable_runs(tmp_path, cache_dir):
    from lib.config.params import RunParams
    from lib.sweep.plan import make_plan

    a = make_run(tmp_path / "reports", cache_dir)
    params = RunParams.from_strings(model="tiny_cnn", models_dir=str(FIXTURES), cache_dir=str(cache_dir),
                                    device="cpu")
    with pytest.raises(ConfigError) as e:  # before: a full new run under that name
        make_plan(params, tmp_path / "reports", "20990101-000000-cpu", log=Log(), strict_resume=True)
    assert "RUN_ID=20990101-000000-cpu is not a run of model 'tiny_cnn'" in str(e.value)
    assert f"runs that can be resumed: {a.run_dir.name}" in str(e.value)
    assert not (tmp_path / "reports" / "tiny_cnn" / "20990101-000000-cpu").exists()


# --- locks --------------------------------------------------------------------------------------------------
def test_a_live_run_is_refused_naming_its_process_and_not_called_interrupted(tmp_path, cache_dir):
    from lib.config.params import RunParams
    from lib.sweep.plan import make_plan

    plan = make_run(tmp_path / "reports", cache_dir)
    ready = tmp_path / "ready"
    holder = _hold(f"""
        import pathlib, time
        from lib.common.runstate import run_lock
        with run_lock({str(plan.run_dir)!r}, "make report MODEL=tiny_cnn (the first one)"):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(600)
        """, ready)
    try:
        assert lock_holder(plan.run_dir)["pid"] == holder.pid
        params = RunParams.from_strings(**{**dict(model="tiny_cnn", backends="torch,ort", precisions="fp32",
                                                  device="cpu", warmup="0.02", iters="3", duration="0.05", seed="0"),
                                           "models_dir": str(FIXTURES), "cache_dir": str(cache_dir)})
        with pytest.raises(RunBusy) as e:  # before: both measured the same points
            make_plan(params, tmp_path / "reports", plan.run_dir.name, log=Log(), strict_resume=True)
        assert f"pid {holder.pid}" in str(e.value) and "make report MODEL=tiny_cnn (the first one)" in str(e.value)
        proc = subprocess.run([PY, "-m", "lib.pipeline.cli", "locked", "--run-dir", str(plan.run_dir), "--", "true"],
                              cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and f"pid {holder.pid}" in proc.stderr, proc.stderr
        log = Log()
        make_plan(params, tmp_path / "reports", "", log=log)  # a new run: no "interrupted?" note about a live one
        assert "has no report (interrupted?)" not in log.text
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(plan.run_dir) is None  # the kernel dropped the lock with its holder: never stale
    log = Log()
    make_plan(params, tmp_path / "reports", "", log=log)
    assert "has no report (interrupted?)" in log.text


def test_measurements_on_one_device_never_overlap(tmp_path):
    """Two processes measuring on one device: the second waits for the first (and says for whom)."""
    code = """
        import sys, time
        from lib.common.runstate import device_lock
        with device_lock("cpu", sys.argv[1], log=lambda m: print(m, flush=True)):
            t0 = time.time(); time.sleep(1.0); print("window", t0, time.time(), flush=True)
        """
    env = _env(BENCHBOOK_LOCK_DIR=str(tmp_path))
    procs = [subprocess.Popen([PY, "-c", textwrap.dedent(code), f"run{i}"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    windows = sorted(tuple(map(float, ln.split()[1:])) for o in outs for ln in o.splitlines() if ln.startswith("window"))
    assert len(windows) == 2 and windows[0][1] <= windows[1][0], windows
    assert any("waiting for device cpu, busy with pid" in o for o in outs), outs


def test_the_device_lock_is_released_when_its_holder_is_killed(tmp_path):
    ready = tmp_path / "ready"
    env = _env(BENCHBOOK_LOCK_DIR=str(tmp_path))
    holder = _hold(f"""
        import pathlib, time
        from lib.common.runstate import device_lock
        with device_lock("cpu", "killed"):
            pathlib.Path({str(ready)!r}).touch(); time.sleep(600)
        """, ready, env)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    os.environ["BENCHBOOK_LOCK_DIR"] = str(tmp_path)
    try:
        t0 = time.monotonic()
        with device_lock("cpu", "next", log=Log()):
            assert time.monotonic() - t0 < 5
    finally:
        del os.environ["BENCHBOOK_LOCK_DIR"]


@pytest.mark.slow
def test_two_exports_of_one_model_at_once_export_it_once(tmp_path):
    code = """
        import sys
        from pathlib import Path
        from lib.artifacts.export import ensure_onnx
        from lib.config.models import get_model
        r = ensure_onnx(get_model("tiny_cnn", sys.argv[1]), Path(sys.argv[2]), log=lambda m: None)["fp32"]
        print("cache_hit", r.cache_hit)
        """
    procs = [subprocess.Popen([PY, "-c", textwrap.dedent(code), str(FIXTURES), str(tmp_path / "onnx")], cwd=REPO,
                              env=_env(), text=True, stdout=subprocess.PIPE) for _ in range(2)]
    outs = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert outs == ["cache_hit False", "cache_hit True"], outs  # before: both exported at once


# --- a killed backend keeps its sampler timeline -------------------------------------------------------------
def test_a_killed_backend_keeps_its_sampler_timeline(tmp_path, cache_dir):
    plan = make_run(tmp_path / "reports", cache_dir, backends="torch", duration="1.5")
    code = f"from lib.sweep.bench import run_backend; run_backend({str(plan.run_dir)!r}, 'torch', 'fp32')"
    proc = subprocess.Popen([PY, "-c", code], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL)
    points = plan.run_dir / "bench" / "torch-fp32" / "points"
    deadline = time.monotonic() + 120

    def measured() -> bool:  # the first round of some point is on disk
        try:
            return any(json.loads(p.read_text()).get("rounds") for p in points.glob("*.json"))
        except ValueError:
            return False

    while not measured():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # no clean-up runs: only what was written as it went survives
    proc.wait()
    ticks = pd.read_parquet(plan.run_dir / "bench" / "torch-fp32" / "samples.parquet")  # before: no file
    assert len(ticks) >= 10 and ticks["label"].str.contains("bs=").any()
    assert not load_run(plan.run_dir).samples.empty


# --- a full disk at the HTML step ----------------------------------------------------------------------------
def test_a_write_the_disk_refuses_at_the_html_step_is_one_line(copy_run):
    shutil.copy(REPO / "notebooks" / "20_analysis.ipynb", copy_run / "analysis.ipynb")

    def limit():  # the OS refuses writes past 64 KiB (EFBIG), as a full disk refuses them (ENOSPC)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    proc = subprocess.run([PY, "-m", "lib.pipeline.cli", "html", str(copy_run)], cwd=REPO, env=_env(), preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # before: a raw traceback, exit 1
    assert "Traceback" not in proc.stderr and f"error: {copy_run / 'report.html'}: File too large" in proc.stderr
    assert "RUN_ID" in proc.stderr and not (copy_run / "report.html").exists()
    assert not list(copy_run.glob(".report.html.*"))  # no half-written file left


# --- WEIGHTS are shown in the report ---------------------------------------------------------------------
def test_the_report_says_which_weights_were_loaded(tmp_path, cache_dir, tiny_module):
    import torch

    from lib.report import parity, summary
    from lib.common.cache import sha256_file

    weights = tmp_path / "trained.pth"
    torch.save(tiny_module.state_dict(), weights)
    plan = make_run(tmp_path / "reports", cache_dir, weights=str(weights))
    run = load_run(plan.run_dir)
    title = summary.title_markdown(run)
    assert str(weights) in title and sha256_file(weights) in title and "calibration was **skipped**" in title
    assert "random weights" not in parity.parity_note(run)
    plain = load_run(make_run(tmp_path / "reports", cache_dir).run_dir)
    assert "seeded random" in summary.title_markdown(plain) and "random weights" in parity.parity_note(plain)


# --- make report: interrupted and failed analyses, a second report of a live run, -j2 -------------------------
def _windows(run_dir: Path, combo: str, bench_pass: int) -> tuple[float, float]:
    """First start and last end (unix seconds: one clock for every process of the host) of a backend's rounds
    in one pass (each pass is one process)."""
    origin = json.loads((run_dir / "bench" / combo / "engine.json").read_text())["passes"][str(bench_pass)]
    spans = [(origin["t_origin_unix"] + r["t0"], origin["t_origin_unix"] + r["t1"])
             for p in (run_dir / "bench" / combo / "points").glob("*.json")
             for r in json.loads(p.read_text())["rounds"] if r["pass"] == bench_pass]
    return min(s for s, _ in spans), max(e for _, e in spans)


class _Make:
    """``make report`` in its own process group (as a terminal runs it), its output collected as it comes."""

    def __init__(self, args: list[str], env: dict):
        import threading

        self.proc = subprocess.Popen(["make", "--no-print-directory", "report", *args], cwd=REPO, env=env,
                                     start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in ln for ln in self.lines):
            assert self.proc.poll() is None or any(text in ln for ln in self.lines), self.out[-3000:]
            assert time.monotonic() < deadline, self.out[-3000:]
            time.sleep(0.1)

    def analysis_pid(self) -> int:
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:  # a short-lived process that ended meanwhile
                continue
            if "lib.pipeline.cli" in cmd and "analysis" in cmd:
                return child.pid
        raise AssertionError("no analysis process")

    def finish(self, timeout: float = 400) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    @property
    def out(self) -> str:
        return "".join(self.lines)


@pytest.mark.slow
def test_run_folder_pipeline(tmp_path):
    reports = tmp_path / "reports"
    args = [f"PYTHON={PY}", "MODEL=tiny_cnn", f"MODELS_DIR={FIXTURES}", f"REPORTS_DIR={reports}",
            f"CACHE_DIR={tmp_path / 'cache'}", "BACKENDS=torch,ort", "BATCH_SIZES=1,4", "ITERS=3", "DURATION=0.25",
            "WARMUP=0.02"]
    env = _env(BENCHBOOK_LOCK_DIR=str(tmp_path))

    # 1. make -j2: the backends are measured one after the other; Ctrl-C during the analysis
    first = _Make(["-j2", *args], env)
    first.wait_for("[make] analysis:")
    run_dir = next(reports.glob("tiny_cnn/*/plan.json")).parent
    spans = sorted(_windows(run_dir, c, n) for c in ("torch-fp32", "ort-fp32") for n in (1, 2))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"two backends measured at the same time: {spans}"
    # a second report of the same run while it is alive is refused, naming the live process
    second = subprocess.run(["make", "--no-print-directory", "report", *args, f"RUN_ID={run_dir.name}"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"RUN_ID={run_dir.name} is being run right now by pid" in second.stderr and "make" in second.stderr
    time.sleep(3)
    os.killpg(first.proc.pid, signal.SIGINT)
    rc = first.finish()
    assert rc in (130, -signal.SIGINT), (rc, first.out[-3000:])  # a shell shows both as 130
    assert "interrupted during the analysis notebook" in first.out
    assert not (run_dir / "analysis.ipynb").exists() and not (run_dir / "report.html").exists()

    # 2. a SIGINT that reaches only the analysis process (not make): still an interruption, exit 130 (before: 2)
    resumed = _Make([*args, f"RUN_ID={run_dir.name}"], env)
    resumed.wait_for("[make] analysis:")
    time.sleep(3)
    os.kill(resumed.analysis_pid(), signal.SIGINT)
    rc = resumed.finish()
    assert rc in (130, -signal.SIGINT), (rc, resumed.out[-3000:])
    assert not (run_dir / "analysis.ipynb").exists()  # before: the half-made notebook, taken as done next time

    # 3. an analysis that fails (a folder where summary.csv goes): no analysis.ipynb, no report
    (run_dir / "summary.csv").mkdir()
    failed = subprocess.run(["make", "--no-print-directory", "report", *args, f"RUN_ID={run_dir.name}"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=400)
    assert failed.returncode != 0 and "the analysis notebook failed" in failed.stderr, failed.stderr[-3000:]
    assert not (run_dir / "analysis.ipynb").exists() and not (run_dir / "report.html").exists()
    assert (run_dir / "analysis.failed.ipynb").exists()

    # 4. cause fixed, rerun: the whole report (before: rc 0 and a report that was the traceback)
    (run_dir / "summary.csv").rmdir()
    done = subprocess.run(["make", "--no-print-directory", "report", *args, f"RUN_ID={run_dir.name}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[make] benchmark" not in done.stderr  # every point was on disk: nothing measured again
    nb = json.loads((run_dir / "analysis.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code)
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    html = (run_dir / "report.html").read_text()
    assert "All measurements" in html and "Traceback" not in html
