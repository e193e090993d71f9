"""Read a run folder into tidy pandas tables: ``run = lib.load_run("reports/<model>/<run_id>")``.

Schema (one row each):

* ``run.iterations``: a timed sample. backend, precision, batch, shape, mode ("device",
  "end_to_end", "throughput"), iter, ms (CUDA-event time on a GPU, perf_counter on a CPU; for
  "throughput" the window's time per request), wall_ms (host perf_counter of the same sample),
  t_s (seconds since the backend's sweep began), requests (requests per sample).
* ``run.samples``: a sampler tick (about 10 Hz). backend, precision, t_s, label, rss_mib,
  cpu_percent and, on a GPU, gpu_util, gpu_mem_util, gpu_used_mib, gpu_proc_mib, sm_clock_mhz,
  mem_clock_mhz, temp_c, power_w, throttle_reasons (NVML bit mask).
* ``run.points``: a measured point and mode, with statistics under the outlier rule (see
  ``lib.stats.summarize``), items_per_s, resource figures over the steady window, parity.
* ``run.failures``: every backend/point that produced no numbers, or whose parity failed, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import read_json
from .stats import OutlierRule, parse_outlier_rule, summarize

__all__ = ["Run", "load_run", "latest_run"]


@dataclass
class Run:
    path: Path
    params: dict
    plan: dict
    rule: OutlierRule
    engines: dict = field(default_factory=dict)     # "backend/precision" -> engine.json
    iterations: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    export: dict = field(default_factory=dict)

    @property
    def environment(self) -> dict:
        for e in self.engines.values():
            return e.get("environment", {})
        return {}


def _point_rows(rec: dict, iters: pd.DataFrame, rule: OutlierRule, unstable_cv: float) -> list[dict]:
    rows = []
    for mode, meta in rec.get("modes", {}).items():
        ms = iters.loc[iters["mode"] == mode, "ms"].to_numpy()
        s = summarize(ms, rule)
        res = meta.get("resources", {})
        parity = rec.get("parity", {})
        mem = rec.get("memory", {}) or {}
        row = {k: rec[k] for k in ("backend", "precision", "device", "batch", "shape")}
        row.update(mode=mode, timer=meta["timer"], **s)
        row["items_per_s"] = rec["batch"] * 1e3 / s["median_ms"] if s.get("median_ms") else np.nan
        row["unstable"] = bool(s.get("cv", 0) > unstable_cv)
        row["warmup_iters"] = meta.get("warmup_iters")
        row["requests_per_sample"] = meta.get("requests_per_sample", 1)
        for k, v in res.items():
            row[f"res_{k}"] = v
        row["torch_max_allocated_mib"] = mem.get("torch_max_allocated_bytes", np.nan) / (1 << 20)
        row["framework_mem_mib"] = next((v / (1 << 20) for k, v in mem.items() if k.endswith("_bytes")), np.nan)
        row["nvml_process_mib"] = rec.get("nvml_process_mib")
        row["parity_passed"] = parity.get("passed")
        row["parity_cosine"] = parity.get("cosine")
        row["parity_rel_err"] = parity.get("rel_err")
        row["parity_max_abs_err"] = parity.get("max_abs_err")
        row["parity_top1"] = parity.get("top1_agree")
        row["compile_s"] = rec.get("compile_s")
        rows.append(row)
    return rows


def load_run(path: Path | str, outliers: str | None = None) -> Run:
    """Everything measured in a run folder, as tidy tables (see the module docstring)."""
    path = Path(path)
    params = read_json(path / "params.json")
    plan = read_json(path / "plan.json")
    rule = parse_outlier_rule(outliers or params.get("outliers", "tukey"))
    unstable_cv = float(params.get("unstable_cv", 0.05))
    run = Run(path=path, params=params, plan=plan, rule=rule)
    iters, ticks, points, failures = [], [], [], []
    for s in plan.get("skipped", []):
        failures.append({"backend": s["backend"], "precision": s["precision"], "batch": None, "shape": None,
                         "status": "skipped", "reason": s["reason"]})
    for combo in plan.get("combos", []):
        b, p = combo["backend"], combo["precision"]
        d = path / "bench" / f"{b}-{p}"
        if (d / "engine.json").exists():
            run.engines[f"{b}/{p}"] = read_json(d / "engine.json")
        failed = d / "notebook.failed.json"
        if failed.exists():
            info = read_json(failed)
            failures.append({"backend": b, "precision": p, "batch": None, "shape": None, "status": "crashed",
                             "reason": info.get("error", "")[-1500:]})
        elif not d.exists():
            failures.append({"backend": b, "precision": p, "batch": None, "shape": None, "status": "not run",
                             "reason": "no results (run interrupted before this backend?)"})
        for pj in sorted((d / "points").glob("*.json")) if d.exists() else []:
            rec = read_json(pj)
            if rec.get("status") != "ok":
                failures.append({"backend": b, "precision": p, "batch": rec.get("batch"), "shape": rec.get("shape"),
                                 "status": rec.get("status"), "reason": rec.get("error", "")})
                continue
            frame = pd.read_parquet(pj.with_suffix(".parquet"))
            frame = frame.assign(backend=b, precision=p, batch=rec["batch"], shape=rec["shape"])
            iters.append(frame)
            points.extend(_point_rows(rec, frame, rule, unstable_cv))
            par = rec.get("parity", {})
            if par and not par.get("passed", True):
                failures.append({"backend": b, "precision": p, "batch": rec["batch"], "shape": rec["shape"],
                                 "status": "parity failed", "reason": par.get("problems", "")})
        if (d / "samples.parquet").exists():
            ticks.append(pd.read_parquet(d / "samples.parquet").assign(backend=b, precision=p))
    if iters:
        run.iterations = pd.concat(iters, ignore_index=True)
    if ticks:
        run.samples = pd.concat(ticks, ignore_index=True)
    run.points = pd.DataFrame(points)
    run.failures = pd.DataFrame(failures, columns=["backend", "precision", "batch", "shape", "status", "reason"])
    if (path / "export.json").exists():
        run.export = read_json(path / "export.json")
    return run


def latest_run(reports_dir: Path | str = "reports", model: str | None = None) -> Path:
    """The newest run folder (by name: run ids start with a UTC timestamp)."""
    from .errors import BenchbookError

    runs = sorted(Path(reports_dir).glob(f"{model or '*'}/*/plan.json"), key=lambda p: p.parent.name)
    if not runs:
        raise BenchbookError(f"no runs under {reports_dir}; run `make report MODEL=...` first")
    return runs[-1].parent
