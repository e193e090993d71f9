"""Command line used by the Makefile: ``python -m lib.cli <command>``.

* ``plan --set model=... [--set key=value ...]``: validate and create the run folder; prints its path.
* ``notebook {export,benchmark,analysis} --run-dir DIR [...]``: execute a notebook with papermill.
  A benchmark notebook that fails (an exception, or a crashed kernel) is recorded in
  ``notebook.failed.json`` beside its results and the command still exits 0, so the sweep goes on
  and the report shows the failure.
* ``html RUN_DIR``: the executed analysis notebook -> ``report.html`` (no code, images embedded).
* ``index [REPORTS_DIR]``: ``reports/index.html`` listing every run.
* ``models``: the models found.

User errors print one line (no traceback) and exit 2.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
import traceback
from pathlib import Path

from .cache import atomic_write_json, atomic_write_text, read_json
from .errors import BenchbookError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"export": "00_export.ipynb", "benchmark": "10_benchmark.ipynb", "analysis": "20_analysis.ipynb"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BenchbookError(f"--set {pair!r}: expected key=value")
        out[key.strip().lower()] = value
    return out


def cmd_plan(args) -> int:
    from .params import RunParams
    from .plan import make_plan

    t0 = time.perf_counter()
    params = RunParams.from_strings(**_parse_sets(args.set))
    plan = make_plan(params, args.reports_dir, args.run_id or "", log=_log)
    _log(f"[plan] {params.model} on {plan.device}: batch sizes {plan.batch_sizes}, shapes {plan.shapes}; "
         f"{len(plan.combos)} backend/precision runs: "
         + ", ".join(f"{c['backend']}/{c['precision']}" for c in plan.combos))
    for s in plan.skipped:
        _log(f"[plan]   skipped {s['backend']}/{s['precision']}: {s['reason']}")
    _log(f"[plan] run folder {plan.run_dir} ({time.perf_counter() - t0:.1f} s)")
    print(plan.run_dir)
    return 0


def _run_papermill(name: str, output: Path, parameters: dict, log_output: bool = True) -> None:
    import logging

    import papermill

    # Stream what the kernel prints (progress lines) to the terminal; papermill logs it at INFO.
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(lambda r: not r.getMessage().startswith(("Executing", "Input Notebook", "Output Notebook",
                                                                    "Working directory", "Black is not", "Unable to parse",
                                                                    "Executing Cell", "Ending Cell")))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(ROOT / "notebooks" / NOTEBOOKS[name]), str(output), parameters=parameters,
                               kernel_name="python3", log_output=log_output, progress_bar=False,
                               cwd=str(ROOT / "notebooks"), request_save_on_cell_execute=True)


def _error_tail(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[-3000:]


def cmd_notebook(args) -> int:
    run_dir = Path(args.run_dir).resolve()
    params = read_json(run_dir / "params.json")
    base = {k: v for k, v in params.items() if k != "options"}
    base.update(reports_dir=str(run_dir.parent.parent), run_id=run_dir.name)
    t0 = time.perf_counter()
    if args.name == "benchmark":
        backend, _, precision = args.combo.rpartition("-")
        out_dir = run_dir / "bench" / args.combo
        out = out_dir / "benchmark.ipynb"
        _log(f"[make] benchmark {backend}/{precision}: executing notebooks/{NOTEBOOKS['benchmark']} -> {out}")
        (out_dir / "notebook.failed.json").unlink(missing_ok=True)
        try:
            _run_papermill("benchmark", out, {**base, "backend": backend, "precision": precision})
        except KeyboardInterrupt:
            raise
        except Exception as e:  # the kernel raised or died: record it, keep going
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_dir / "notebook.failed.json", {"error": _error_tail(e), "notebook": str(out),
                                                                 "seconds": time.perf_counter() - t0})
            _log(f"[make] benchmark {backend}/{precision} FAILED after {time.perf_counter() - t0:.0f} s "
                 f"(recorded; the sweep goes on): {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            return 0
        atomic_write_text(out_dir / "notebook.done", f"{time.perf_counter() - t0:.1f}\n")
        _log(f"[make] benchmark {backend}/{precision} finished in {time.perf_counter() - t0:.0f} s")
        return 0
    if args.name == "export":
        out = run_dir / "export.ipynb"
        _log(f"[make] export: executing notebooks/{NOTEBOOKS['export']} -> {out}")
        plan = read_json(run_dir / "plan.json")
        try:
            _run_papermill("export", out, {"model": base["model"], "weights": base["weights"],
                                           "precisions": ",".join(plan["onnx_precisions"]),
                                           "cache_dir": base["cache_dir"], "models_dir": base["models_dir"],
                                           "run_dir": str(run_dir)})
        except KeyboardInterrupt:
            raise
        except Exception as e:
            atomic_write_json(run_dir / "export.failed.json", {"error": _error_tail(e)})
            _log(f"[make] export FAILED (recorded; backends that need ONNX will fail): {_error_tail(e)[-400:]}")
            return 0
        if args.stamp:
            atomic_write_text(Path(args.stamp), f"{run_dir}\n")
        _log(f"[make] export finished in {time.perf_counter() - t0:.0f} s")
        return 0
    out = run_dir / "analysis.ipynb"
    _log(f"[make] analysis: executing notebooks/{NOTEBOOKS['analysis']} -> {out}")
    _run_papermill("analysis", out, {"run_dir": str(run_dir), "outliers": base["outliers"]}, log_output=False)
    _log(f"[make] analysis finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_export_record(args) -> int:
    """``export.json`` in the run folder from the cached export (no export is run here)."""
    from .export import ensure_onnx, export_summary
    from .models import get_model

    run_dir = Path(args.run_dir)
    params, plan = read_json(run_dir / "params.json"), read_json(run_dir / "plan.json")
    cfg = get_model(params["model"], params.get("models_dir") or None)
    if not (cfg.folder / "load.py").exists():
        atomic_write_json(run_dir / "export.json", {"files": [], "note": "model given as ONNX; no export"})
        return 0
    try:
        results = ensure_onnx(cfg, Path(params["cache_dir"]) / "onnx", plan["onnx_precisions"],
                              params.get("weights") or None, log=_log, build=False)
        export_summary(results, run_dir)
    except BenchbookError as e:
        failed = run_dir / "export.failed.json"
        error = read_json(failed)["error"] if failed.exists() else str(e)
        atomic_write_json(run_dir / "export.json", {"files": [], "error": error})
    return 0


def cmd_html(args) -> int:
    from .html_report import render_report

    path = render_report(Path(args.run_dir))
    _log(f"[make] report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_index(args) -> int:
    from .html_report import render_index

    path = render_index(Path(args.reports_dir))
    _log(f"[make] index: {path}")
    return 0


def cmd_models(args) -> int:
    from .models import discover

    for name, cfg in sorted(discover(args.models_dir or None).items()):
        print(f"{name:20s} {cfg.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.cli", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reports-dir", default="reports")
    p.add_argument("--run-id", default="")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("notebook")
    p.add_argument("name", choices=sorted(NOTEBOOKS))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--combo", default="", help="<backend>-<precision>, for the benchmark notebook")
    p.add_argument("--stamp", default="", help="file to write when the export succeeded")
    p.set_defaults(fn=cmd_notebook)
    p = sub.add_parser("export-record")
    p.add_argument("--run-dir", required=True)
    p.set_defaults(fn=cmd_export_record)
    p = sub.add_parser("html")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_html)
    p = sub.add_parser("index")
    p.add_argument("reports_dir", nargs="?", default="reports")
    p.set_defaults(fn=cmd_index)
    p = sub.add_parser("models")
    p.add_argument("--models-dir", default="")
    p.set_defaults(fn=cmd_models)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except BenchbookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every point measured so far is on disk; rerun with the same RUN_ID to resume",
              file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
