"""Pass 2 of every backend, one after another in one process: the Makefile's second step over the backends.

Why one process. Pass 2 only measures rounds. Each backend's characterisation (the memory figures that need a
process to themselves, parity, the CUPTI kernel profile) happened in pass 1, in that backend's own kernel. A
process per backend in pass 2 would add its start, imports and CUDA context again (on an H200 host about
10 s a backend, 1.5 minutes of a 10-backend run) without changing a figure pass 2 measures. Backends run in
reverse plan order, each its own engine, closed before the next one loads (engine memory freed, torch.compile's
caches reset per engine). What the process keeps across them (CUDA context, cuDNN and cuBLAS handles, the
imported libraries) a serving process keeps too. Resource figures that describe a process (RSS) come from
pass 1 (``lib.report.stability``).

Failures. A backend whose pass 2 raises is recorded in its ``notebook.failed.json`` (pass 2), and the next one
runs. A backend that kills the process (a segfault, an abort) leaves its ``pass2.started`` mark without a
``done.json``: ``lib.runner.worker`` records it from the process's exit and faulthandler's stack, and runs
the rest in a new process.

``python -m lib.sweep.second_pass RUN_DIR BACKEND-PRECISION ...`` (what ``lib.runner.worker`` starts).
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from ..common.cache import atomic_write_json, atomic_write_text
from .bench import combo_dir, run_backend

__all__ = ["STARTED", "DONE", "run_second_pass", "main"]

STARTED = "pass2.started"  # written before a backend's pass 2 begins; with no done.json after it, it crashed
DONE = "done.json"  # lib.sweep.bench writes it when a backend's last pass ends


def run_second_pass(run_dir: Path | str, combos: list[str], log=print) -> dict[str, str]:
    """Pass 2 of each ``<backend>-<precision>`` in ``combos``, in the order given; returns {combo: "ok" | the
    error's summary}. KeyboardInterrupt stops it (what was measured is on disk)."""
    run_dir = Path(run_dir)
    outcome = {}
    for combo in combos:
        backend, _, precision = combo.rpartition("-")
        out = combo_dir(run_dir, backend, precision)
        atomic_write_text(out / STARTED, f"{time.time():.3f}\n")
        t0 = time.perf_counter()
        try:
            run_backend(run_dir, backend, precision, bench_pass=2, log=log)
            outcome[combo] = "ok"
        except Exception as e:  # recorded as a failed pass, like a notebook that raised; the next backend runs
            summary = f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]
            atomic_write_json(out / "notebook.failed.json", {
                "error": "".join(traceback.format_exception(e))[-1500:], "summary": summary,
                "exception": type(e).__name__, "notebook": None, "kernel_log": None,
                "seconds": time.perf_counter() - t0, "pass": 2})
            log(f"[{backend}/{precision}] pass 2 FAILED (recorded; the next backend runs): {summary}")
            outcome[combo] = summary
    return outcome


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m lib.sweep.second_pass RUN_DIR BACKEND-PRECISION ...", file=sys.stderr)
        return 2
    import faulthandler

    faulthandler.enable(all_threads=False)  # a crash's Python stack goes to stderr, the worker's log
    try:
        run_second_pass(args[0], args[1:], log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:  # every round measured is on disk; the step above says so
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
