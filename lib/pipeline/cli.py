"""Command line used by the Makefile: ``python -m lib.pipeline.cli <command>``.

* ``plan --set MODEL=... [--set NAME=value ...]``: validate and create the run folder; prints its path. A name
  is a run parameter's make variable (lib.config.params.RUN_PARAMETERS) or its RunParams field.
* ``help [--set NAME=value ...]``: `make help`'s lines on the run parameters, with make's current values.
* ``notebook {export,benchmark,load,analysis} --run-dir DIR [...]``: execute a notebook with papermill.
  A benchmark notebook that fails (an exception, or a crashed kernel) is recorded in
  ``notebook.failed.json`` beside its results and the command still exits 0, so the sweep goes on
  and the report shows the failure.
* ``html RUN_DIR``: the executed analysis notebook -> ``report.html`` (no code, images embedded).
* ``index [REPORTS_DIR]``: ``reports/index.html`` listing every run.
* ``models``: the models found.

User errors print one line (no traceback) and exit 2; Ctrl-C or SIGTERM prints what was kept and how to
resume, and exits 130. Each notebook runs in its own kernel, whose stderr goes to a ``*kernel.log`` beside
its output; a kernel that crashes (segfault, abort, killed) is described from its exit signal, the Python
stack that ``faulthandler`` wrote into that log, and the last lines the notebook printed.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ..common.cache import atomic_write_json, atomic_write_text, read_json
from ..common.errors import BenchbookError, RunInterrupted, StepFailed
from ..runner.kernel import NOTEBOOKS, Kernel, describe_failure, run_papermill
from ..runner.terminal import SweepProgress
from . import interrupts

# A write the disk refused (full, over quota, over the file size limit): one line naming the file, no traceback.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parse_sets(pairs: list[str], fields: bool = True) -> dict:
    """``--set`` pairs as {RunParams field: text} (``fields``; a make variable is mapped to its field by the
    registry), else as {NAME: text} as given."""
    from ..config.params import field_of

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BenchbookError(f"--set {pair!r}: expected key=value")
        out[field_of(key.strip()) if fields else key.strip()] = value
    return out


def cmd_help(args) -> int:
    """The run parameters' lines of `make help` (lib.config.params.RUN_PARAMETERS), with make's values."""
    from ..config.params import help_lines

    print("\n".join(help_lines(_parse_sets(args.set, fields=False))))
    return 0


def _check_make_vars(unknown: list[str], known: list[str]) -> None:
    """Variables given to ``make report`` that it does not read (a typo would be silently ignored)."""
    if not unknown:
        return
    import difflib

    parts = []
    for name in unknown:
        close = [k for k in known if k == name.upper()] or difflib.get_close_matches(name.upper(), known, n=1)
        parts.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise BenchbookError(f"make report does not take {', '.join(parts)}; its parameters are "
                         f"{' '.join(known)} (upper case; `make help` explains them)")


def cmd_plan(args) -> int:
    from ..config.params import RunParams
    from ..sweep.plan import make_plan

    t0 = time.perf_counter()
    _check_make_vars(args.unknown_vars.split(), args.known_vars.split())
    params = RunParams.from_strings(**_parse_sets(args.set))
    plan = make_plan(params, args.reports_dir, args.run_id or "", log=_log, strict_resume=True)
    _log(f"[plan] {params.model} on {plan.device}: batch sizes {plan.batch_sizes}, shapes {plan.shapes}; "
         f"{len(plan.combos)} backend/precision runs: "
         + ", ".join(f"{c['backend']}/{c['precision']}" for c in plan.combos))
    by_reason: dict[str, list[str]] = {}  # one line per reason, not per backend (six "needs a GPU" on a CPU)
    for s in plan.skipped:
        by_reason.setdefault(s["reason"], []).append(s["backend"] if s["precision"] == "*"
                                                     else f"{s['backend']}/{s['precision']}")
    for reason, names in by_reason.items():
        _log(f"[plan]   skipped {', '.join(names)}: {reason}")
    _log(f"[plan] run folder {plan.run_dir} ({time.perf_counter() - t0:.1f} s)")
    print(plan.run_dir)
    return 0


def _remove_run_folder(run_dir: Path) -> None:
    """A run folder this run made and nothing was measured in; its model's folder too when that is now empty."""
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.parent.rmdir()
    except OSError:
        pass  # other runs of the model live there


def cmd_locked(args) -> int:
    """Take the run folder's lock, then become ``args.command`` (the make that builds the run): the lock
    is inherited, so it is held exactly as long as that make lives, and signals reach make directly."""
    from ..common.runstate import acquire_run_lock, user_command

    command = [c for c in args.command if c != "--"]
    if not command:
        raise BenchbookError("locked: no command given")
    fd = acquire_run_lock(Path(args.run_dir), user_command())
    os.set_inheritable(fd, True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], command)
    return 1  # not reached


def cmd_notebook(args) -> int:
    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "params.json").exists():
        raise BenchbookError(f"{run_dir} is not a run folder (no params.json); run the plan step first")
    step = f"the {args.name} notebook" + (f" ({args.combo})" if args.combo else "")
    try:
        return _notebook(args, run_dir)
    except KeyboardInterrupt:
        raise interrupts.interrupted(run_dir, step) from None


def _notebook(args, run_dir: Path) -> int:
    from ..common.runstate import device_lock, read_run_json

    params = read_run_json(run_dir / "params.json")
    base = {k: v for k, v in params.items() if k != "options"}
    t0 = time.perf_counter()
    if args.name == "benchmark":
        backend, _, precision = args.combo.rpartition("-")
        if not backend:
            raise BenchbookError(f"--combo {args.combo!r}: expected <backend>-<precision>, e.g. torch-fp32")
        out_dir = run_dir / "bench" / args.combo
        bench_pass = args.bench_pass
        # The Makefile runs this notebook for pass 1 only (pass 2 of every backend runs in one process,
        # cmd_second_pass); bench_pass 2 here is a pass 2 in a kernel of its own (by hand).
        out = out_dir / ("benchmark.ipynb" if bench_pass != 2 else "benchmark-pass2.ipynb")  # the report links the first
        done = out_dir / ("pass1.done" if bench_pass == 1 else "notebook.done")
        kernel = Kernel(out_dir / ("kernel.log" if bench_pass != 2 else "kernel-pass2.log"))
        if bench_pass == 2 and (out_dir / "notebook.failed.json").exists():
            _log(f"[make] benchmark {backend}/{precision} pass 2: skipped, its pass 1 crashed (recorded)")
            return 0
        what = f"pass {bench_pass}" if bench_pass else "both passes"
        stage = f"[make] benchmark {backend}/{precision} {what}{_stage_of(run_dir, backend, precision)}"
        _log(f"{stage}: notebooks/{NOTEBOOKS['benchmark']}")
        (out_dir / "notebook.failed.json").unlink(missing_ok=True)
        device = read_run_json(run_dir / "plan.json").get("device", "cpu")
        try:
            # one backend measures on a device at a time, whatever make's -j or other runs on this host
            with device_lock(device, f"{run_dir.name} {backend}/{precision}", log=_log):
                t0 = time.perf_counter()
                with SweepProgress(out_dir / "points", _pass_rounds(run_dir, bench_pass),
                                   f"{backend}/{precision} {what}") as progress:
                    kernel.tail.progress = progress
                    try:
                        # the notebook reads every run parameter from the run folder (params.json, plan.json)
                        run_papermill("benchmark", out, {"run_dir": str(run_dir), "backend": backend,
                                                          "precision": precision, "bench_pass": bench_pass}, kernel)
                    finally:
                        kernel.tail.progress = None
        except KeyboardInterrupt:
            raise
        except Exception as e:
            interrupts.reraise_if_interrupted(e)  # the kernel raised or died: record it, keep going
            summary, record = describe_failure(e, kernel)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_dir / "notebook.failed.json", {
                "error": record, "summary": summary, "exception": type(e).__name__, "notebook": str(out),
                "kernel_log": str(kernel.log_path), "seconds": time.perf_counter() - t0, "pass": bench_pass})
            _log(f"{stage} FAILED after {time.perf_counter() - t0:.0f} s "
                 f"(recorded; the sweep goes on): {summary[:400]}")
            return 0
        atomic_write_text(done, f"{time.perf_counter() - t0:.1f}\n")
        _log(f"{stage} finished in {time.perf_counter() - t0:.0f} s")
        return 0
    if args.name == "export":
        out = run_dir / "export.ipynb"
        kernel = Kernel(run_dir / "export.kernel.log")
        _log(f"[make] export: notebooks/{NOTEBOOKS['export']}")
        plan = read_json(run_dir / "plan.json")
        (run_dir / "export.failed.json").unlink(missing_ok=True)
        try:
            run_papermill("export", out, {"model": base["model"], "weights": base["weights"],
                                           "precisions": ",".join(plan["onnx_precisions"]),
                                           "cache_dir": base["cache_dir"], "models_dir": base["models_dir"],
                                           "calib": base.get("calib") or "", "run_dir": str(run_dir)}, kernel)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            interrupts.reraise_if_interrupted(e)
            summary, record = describe_failure(e, kernel)
            atomic_write_json(run_dir / "export.failed.json", {"error": record, "summary": summary})
            if getattr(e, "ename", None) in ("ModelError", "WeightsError", "ConfigError"):
                # the model itself cannot be built (its load.py raised): no backend could run; stop here,
                # and leave no run folder behind that holds nothing measured (the error says all it knew)
                if not plan.get("resumed") and not any(run_dir.glob("bench/*/points/*.json")):
                    _remove_run_folder(run_dir)
                raise BenchbookError(" ".join(str(e.evalue).split())) from None
            _log(f"[make] export FAILED (recorded; backends that need ONNX will fail): {summary[:400]}")
            return 0
        if args.stamp:
            atomic_write_text(Path(args.stamp), f"{run_dir}\n")
        _log(f"[make] export finished in {time.perf_counter() - t0:.0f} s")
        return 0
    if args.name == "load":
        return _load_notebook(run_dir, base)
    out = run_dir / "analysis.ipynb"
    # papermill writes its output cell by cell (and once more after a failure or an interrupt): it goes to a
    # temporary name, renamed to analysis.ipynb only when every cell ran, so make never takes a half-made or
    # failed analysis as done.
    partial, failed = run_dir / ".analysis.partial.ipynb", run_dir / "analysis.failed.ipynb"
    kernel = Kernel(run_dir / "analysis.kernel.log")
    _log(f"[make] analysis: notebooks/{NOTEBOOKS['analysis']}")
    out.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    try:
        run_papermill("analysis", partial, {"run_dir": str(run_dir), "outliers": base["outliers"]}, kernel)
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        raise
    except Exception as e:
        if partial.exists():
            partial.replace(failed)  # kept to read the traceback; never the make target
        interrupts.reraise_if_interrupted(e)
        summary, _ = describe_failure(e, kernel)
        raise StepFailed(f"the analysis notebook failed ({summary[:300]}); see {failed}; the measurements in "
                         f"{run_dir} are kept") from None
    partial.replace(out)
    _log(f"[make] analysis finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_second_pass(args) -> int:
    """Pass 2 of every backend whose pass 1 finished, in reverse plan order, in one worker process
    (lib/sweep/second_pass.py says why; lib/runner/worker.py survives a backend that crashes it)."""
    from ..common.runstate import device_lock, read_run_json
    from ..runner.terminal import KernelEcho
    from ..runner.worker import run_second_pass_worker, second_pass_combos

    run_dir = Path(args.run_dir).resolve()
    plan = read_run_json(run_dir / "plan.json")
    combos = [f"{c['backend']}-{c['precision']}" for c in plan.get("combos", [])][::-1]
    todo = second_pass_combos(run_dir, combos)
    t0 = time.perf_counter()
    try:
        if todo:
            names = ", ".join("{0}/{2}".format(*c.rpartition("-")) for c in todo)
            _log(f"[make] benchmark pass 2, one process, reverse order: {names}")
            with device_lock(plan.get("device", "cpu"), f"{run_dir.name} pass 2", log=_log):
                with SweepProgress([run_dir / "bench" / c / "points" for c in todo],
                                   _pass_rounds(run_dir, 2) * len(todo), "pass 2") as progress:
                    echo = KernelEcho()
                    echo.progress = progress
                    run_second_pass_worker(run_dir, todo, echo, _log)
            _log(f"[make] benchmark pass 2 finished in {time.perf_counter() - t0:.0f} s")
        atomic_write_text(run_dir / "bench" / "pass2.done", f"{time.perf_counter() - t0:.1f}\n")
    except KeyboardInterrupt:
        raise interrupts.interrupted(run_dir, "the second benchmark pass") from None
    return 0


def _pass_rounds(run_dir: Path, bench_pass: int) -> int:
    """Rounds a backend's point files hold at least when this pass ends (points x modes x the pass's target):
    the progress bar's total; 0 where the run's files do not say."""
    from ..config.params import measured_modes, pass_targets

    try:
        plan, params = read_json(run_dir / "plan.json"), read_json(run_dir / "params.json")
        points = len(plan["batch_sizes"]) * len(plan["shapes"])
        return points * len(measured_modes(plan["device"] == "cuda")) * pass_targets(int(params["rounds"]), bench_pass)[0]
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _load_notebook(run_dir: Path, base: dict) -> int:
    """The load stage (lib/sweep/load_stage.py) in its own kernel, holding the device's lock like a benchmark. Its
    target is load/load.json, which the notebook writes last; a notebook that fails writes it here instead,
    saying why, so the analysis runs and the report says why its load section is empty."""
    from ..common.runstate import device_lock, read_run_json

    t0 = time.perf_counter()
    out_dir = run_dir / "load"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "load.json").unlink(missing_ok=True)
    kernel = Kernel(out_dir / "kernel.log")
    _log(f"[make] load (LOAD={base.get('load', 'auto')}): notebooks/{NOTEBOOKS['load']}")
    device = read_run_json(run_dir / "plan.json").get("device", "cpu")
    try:
        with device_lock(device, f"{run_dir.name} load", log=_log):
            run_papermill("load", out_dir / "load.ipynb", {"run_dir": str(run_dir)}, kernel)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        interrupts.reraise_if_interrupted(e)
        summary, record = describe_failure(e, kernel)
        atomic_write_json(out_dir / "load.json", {"status": "failed", "reason": summary[:400], "error": record,
                                                  "configurations": []})
        _log(f"[make] load FAILED after {time.perf_counter() - t0:.0f} s (recorded; the report says so): "
             f"{summary[:400]}")
        return 0
    if not (out_dir / "load.json").exists():
        raise StepFailed(f"the load notebook ran but wrote no {out_dir / 'load.json'}")
    _log(f"[make] load finished in {time.perf_counter() - t0:.0f} s")
    return 0


def _stage_of(run_dir: Path, backend: str, precision: str) -> str:
    """" (2/10)": where this backend/precision stands in the run's sweep, as the plan ordered it."""
    try:
        combos = [(c["backend"], c["precision"]) for c in read_json(run_dir / "plan.json")["combos"]]
        return f" ({combos.index((backend, precision)) + 1}/{len(combos)})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def cmd_export_record(args) -> int:
    """``export.json`` in the run folder from the cached export (no export is run here)."""
    from ..artifacts.export import ensure_onnx, export_summary
    from ..config.models import get_model

    run_dir = Path(args.run_dir)
    params, plan = read_json(run_dir / "params.json"), read_json(run_dir / "plan.json")
    cfg = get_model(params["model"], params.get("models_dir") or None)
    record = run_dir / "export.json"
    if record.exists() and not (run_dir / "export.failed.json").exists():
        try:
            if read_json(record).get("files"):
                return 0  # written by this run's export notebook: it knows what it built (cache hit or not)
        except (OSError, ValueError, AttributeError):
            pass
    try:  # a model given as ONNX: its own file (checked against the config) and its FP16 conversion
        results = ensure_onnx(cfg, Path(params["cache_dir"]) / "onnx", plan["onnx_precisions"],
                              params.get("weights") or None, log=_log, build=False, calib=params.get("calib") or None)
        export_summary(results, run_dir)
    except BenchbookError as e:
        failed = run_dir / "export.failed.json"
        error = read_json(failed)["error"] if failed.exists() else str(e)
        atomic_write_json(run_dir / "export.json", {"files": [], "error": error})
    return 0


def cmd_html(args) -> int:
    from ..report.render import render_report

    path = render_report(Path(args.run_dir))
    _log(f"[make] {path.name} rendered ({path.stat().st_size / 1e6:.1f} MB)")  # the summary prints its path
    return 0


def cmd_summary(args) -> int:
    """The end of ``make report``: refresh the index, then two or three lines on the run."""
    from ..report.render import render_index
    from ..runner.terminal import run_summary

    render_index(Path(args.reports_dir))
    for line in run_summary(Path(args.run_dir)):
        _log(line)
    return 0


def cmd_index(args) -> int:
    from ..report.render import render_index

    path = render_index(Path(args.reports_dir))
    _log(f"[make] index: {path}")
    return 0


def cmd_clean_cache(args) -> int:
    from ..common.cache import clean_cache

    clean_cache(args.cache_dir, log=_log)
    return 0


def cmd_models(args) -> int:
    from ..config.models import discover

    broken: dict[str, Exception] = {}
    for name, cfg in sorted(discover(args.models_dir or None, broken).items()):
        print(f"{name:20s} {cfg.description}")
    for folder, error in sorted(broken.items()):  # listed apart, with the reason: it cannot be run as it is
        print(f"{folder:20s} NOT USABLE: {' '.join(str(error).split())}")
    return 0


def _timed(args) -> int:
    """Run the command; a stage (export, a benchmark pass, load, analysis, render) appends its wall time and
    outcome to its run folder's ``stages.jsonl`` (lib.results.stages)."""
    from ..results.stages import timed_stage

    stage = ({"second-pass": "benchmark pass 2", "html": "render"}.get(args.cmd) if args.cmd != "notebook" else
             f"benchmark pass {args.bench_pass or '1+2'} {args.combo}" if args.name == "benchmark" else args.name)
    run_dir = Path(getattr(args, "run_dir", "") or ".")
    if stage is None or not (run_dir / "params.json").is_file():
        return args.fn(args)
    with timed_stage(run_dir, stage) as outcome:
        outcome["rc"] = args.fn(args)
    return outcome["rc"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.pipeline.cli", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reports-dir", default="reports")
    p.add_argument("--run-id", default="")
    p.add_argument("--unknown-vars", default="", help="variables given to make that it does not read")
    p.add_argument("--known-vars", default="", help="the parameters make reads")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("help")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a make variable's value now")
    p.set_defaults(fn=cmd_help)
    p = sub.add_parser("notebook")
    p.add_argument("name", choices=["analysis", "benchmark", "export", "load"])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--combo", default="", help="<backend>-<precision>, for the benchmark notebook")
    p.add_argument("--pass", dest="bench_pass", type=int, choices=(0, 1, 2), default=0,
                   help="benchmark pass: 1 = characterise + first half of the rounds (make report runs it per "
                        "backend), 2 = the rest (make report runs every backend's in one process: second-pass); "
                        "0 = both here")
    p.add_argument("--stamp", default="", help="file to write when the export succeeded")
    p.set_defaults(fn=cmd_notebook)
    p = sub.add_parser("second-pass", help="pass 2 of every backend in one process (make report runs it)")
    p.add_argument("--run-dir", required=True)
    p.set_defaults(fn=cmd_second_pass)
    p = sub.add_parser("locked")
    p.add_argument("--run-dir", required=True)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- <command>: run holding the run folder's lock")
    p.set_defaults(fn=cmd_locked)
    p = sub.add_parser("export-record")
    p.add_argument("--run-dir", required=True)
    p.set_defaults(fn=cmd_export_record)
    p = sub.add_parser("html")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_html)
    p = sub.add_parser("summary")
    p.add_argument("run_dir")
    p.add_argument("--reports-dir", default="reports")
    p.set_defaults(fn=cmd_summary)
    p = sub.add_parser("index")
    p.add_argument("reports_dir", nargs="?", default="reports")
    p.set_defaults(fn=cmd_index)
    p = sub.add_parser("clean-cache")
    p.add_argument("--cache-dir", default="")
    p.set_defaults(fn=cmd_clean_cache)
    p = sub.add_parser("models")
    p.add_argument("--models-dir", default="")
    p.set_defaults(fn=cmd_models)
    args = ap.parse_args(argv)
    previous = previous_int = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, interrupts.terminate)  # `kill` as Ctrl-C: clean up, say so
        previous_int = signal.signal(signal.SIGINT, interrupts.terminate)
    try:
        return _timed(args)
    except RunInterrupted as e:
        interrupts.quiet_abandoned_tasks()
        print(f"\n{e}", file=sys.stderr)
        interrupts.interrupt_makes()
        return e.exit_code
    except BenchbookError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        interrupts.quiet_abandoned_tasks()
        what = "no run was started" if args.cmd == "plan" else "nothing measured is lost"
        print(f"\ninterrupted ({args.cmd}): {what}", file=sys.stderr)
        interrupts.interrupt_makes()
        return 130
    except OSError as e:
        if args.cmd != "plan" and e.errno not in _DISK_FULL:
            raise
        hint = ("; free some space there (or give another REPORTS_DIR / CACHE_DIR) and rerun with the same RUN_ID: "
                "every point measured is kept" if e.errno in _DISK_FULL else "")
        print(f"error: {e.filename or ''}: {e.strerror or e}".replace("error: : ", "error: ") + hint, file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


if __name__ == "__main__":
    sys.exit(main())
