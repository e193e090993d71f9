"""Run pass 2 of every backend in one worker process (``lib.sweep.second_pass`` says why one), and survive its
crashes: a backend that kills the worker (segfault, abort, the OOM killer) is recorded from the worker's exit
signal and the Python stack faulthandler wrote into its log, and the backends after it run in a new worker.

The worker's printed lines reach the terminal as a kernel's do (``KernelEcho``); its stderr goes to
``<run_dir>/bench/second-pass.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..common.cache import atomic_write_json, read_json
from ..common.errors import StepFailed
from ..sweep.bench import combo_dir
from ..sweep.second_pass import DONE, STARTED
from .kernel import ROOT, Kernel, describe_crash

__all__ = ["second_pass_combos", "run_second_pass_worker", "WORKER_LOG"]

WORKER_LOG = "second-pass.log"  # under <run_dir>/bench/
_STOP_GRACE_S = 10.0


def _finished(out: Path) -> bool:
    """The backend's last pass ended (done.json), or it failed in pass 2 (its failure is recorded)."""
    if (out / DONE).exists():
        return True
    failed = out / "notebook.failed.json"
    try:
        return failed.exists() and read_json(failed).get("pass") == 2
    except (OSError, ValueError):
        return False


def second_pass_combos(run_dir: Path, combos: list[str]) -> list[str]:
    """Of ``combos`` (``<backend>-<precision>``, in pass-2 order), those still to run: pass 1 finished
    (``pass1.done``), pass 2 neither finished nor recorded as failed. A backend whose pass 1 crashed is left
    out (its failure is already recorded)."""
    todo = []
    for combo in combos:
        out = Path(run_dir) / "bench" / combo
        if (out / "pass1.done").exists() and not (out / "notebook.failed.json").exists() and not _finished(out):
            todo.append(combo)
    return todo


def run_second_pass_worker(run_dir: Path, combos: list[str], echo, log) -> list[str]:
    """Pass 2 of ``combos`` in a worker process, started again after the backend that crashed it; returns
    the combos that crashed it (each recorded in its ``notebook.failed.json``). ``echo``: a ``KernelEcho``
    (the worker's lines); ``log``: the step's own lines. KeyboardInterrupt (Ctrl-C, kill) stops the worker
    with SIGINT, so it ends as a kernel does (every round on disk), and is raised again."""
    run_dir = Path(run_dir)
    log_path = run_dir / "bench" / WORKER_LOG
    crashed: list[str] = []
    remaining = list(combos)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["PYTHONUNBUFFERED"] = "1"
    while remaining:
        kernel = Kernel(log_path)  # describe_crash reads its log, process and last lines
        kernel.tail = echo
        started = time.time()
        with open(log_path, "ab") as err:
            err.write(f"[benchbook] second pass of {' '.join(remaining)}\n".encode())
            err.flush()
            proc = subprocess.Popen([sys.executable, "-m", "lib.sweep.second_pass", str(run_dir), *remaining],
                                    stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(ROOT), text=True,
                                    bufsize=1)
        kernel.process = proc
        try:
            for line in proc.stdout:
                echo.write(line)
            status = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            echo.flush()
        if _interrupted_status(status):
            raise KeyboardInterrupt
        if status == 0:  # every backend finished or was recorded as failed (lib.sweep.second_pass)
            return crashed
        left = [c for c in remaining if not _finished(combo_dir_of(run_dir, c))]
        culprit = next((c for c in left if _started_since(combo_dir_of(run_dir, c), started)), None)
        if culprit is None:  # died before any backend began (an import failed): nothing to skip past
            summary, _ = describe_crash(kernel, "the second-pass worker")
            raise StepFailed(f"the second-pass worker exited ({summary}) before measuring anything; see {log_path}; "
                             f"every round measured so far is kept (rerun with the same RUN_ID)")
        summary, record = describe_crash(kernel, "the second-pass worker")
        atomic_write_json(combo_dir_of(run_dir, culprit) / "notebook.failed.json", {
            "error": record, "summary": summary, "exception": "WorkerCrashed", "notebook": None,
            "kernel_log": str(log_path), "seconds": time.time() - started, "pass": 2})
        log(f"[make] benchmark {_label(culprit)} pass 2 crashed the worker "
            f"(recorded; the backends after it run in a new one): {summary[:300]}")
        crashed.append(culprit)
        remaining = [c for c in left if c != culprit]
    return crashed


def combo_dir_of(run_dir: Path, combo: str) -> Path:
    backend, _, precision = combo.rpartition("-")
    return combo_dir(run_dir, backend, precision)


def _label(combo: str) -> str:
    backend, _, precision = combo.rpartition("-")
    return f"{backend}/{precision}"


def _started_since(out: Path, t: float) -> bool:
    try:
        return (out / STARTED).stat().st_mtime >= t - 1.0
    except OSError:
        return False


def _interrupted_status(status: int) -> bool:
    return status in (-signal.SIGINT, 130)


def _stop(proc: subprocess.Popen) -> None:
    """End the worker as Ctrl-C ends a kernel. A terminal's Ctrl-C reached it too (one process group): give it a
    moment to finish on its own; otherwise (``kill`` of this process alone) SIGINT it (its KeyboardInterrupt keeps
    every round), then kill it."""
    try:
        proc.wait(timeout=2.0)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
