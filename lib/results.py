"""Read a run folder into tidy pandas tables: ``run = lib.load_run("reports/<model>/<run_id>")``.

Every path is taken relative to the run folder, so a run copied from another machine loads the
same. ``run.to_parquet()`` writes the three tidy tables into the run folder as Parquet files; read
them back without benchbook with ``pandas.read_parquet("<run>/iterations.parquet")``.

Schema (one row each; times in milliseconds unless the name says otherwise):

* ``run.iterations`` / ``iterations.parquet``: one timed sample.
  backend (str), precision (str: fp32, fp16, bf16), batch (int), shape (str, e.g. "240x240" or
  "static"), mode (str: "device" = inputs and outputs stay on the device; "end_to_end" = host arrays
  in and out, copies included; "throughput" = pipelined back-to-back requests, GPU only), iter (int,
  0-based within the point and mode), ms (float: CUDA-event time on a GPU, perf_counter on a CPU;
  for "throughput" the window's time per request), wall_ms (float: host perf_counter of the same
  sample), t_s (float: seconds since the backend's sweep began; restarts at 0 in a resumed sweep),
  requests (int: requests per sample).
* ``run.samples`` / ``samples.parquet``: one resource-sampler tick (about 10 Hz).
  backend, precision, t_s (same clock as ``iterations.t_s``), label (str: "<backend>/<precision>
  bs=<batch> shape=<shape> <mode>" while a measurement runs, "" between), rss_mib (process RSS),
  cpu_percent (process CPU %, 100 = one core), resumed (True for ticks of a resumed sweep) and, on a
  GPU (absent or NaN on a CPU): gpu_util, gpu_mem_util (%), gpu_used_mib (device-wide),
  gpu_proc_mib (this process, NVML), sm_clock_mhz, mem_clock_mhz, temp_c, power_w, throttle_reasons
  (int NVML clock-event bit mask, -1 = unreadable; ``lib.sampler.throttle_names`` decodes it).
* ``run.points`` / ``points.parquet``: one measured point and mode. backend, precision, device,
  batch, shape, mode, timer; n (samples), dropped (outliers dropped for presentation); median_ms,
  p90_ms, p95_ms, p99_ms, mean_ms, std_ms, cv, min_ms, max_ms (over the kept samples, see
  ``lib.stats.summarize``), p99_raw_ms, max_raw_ms (over every sample); items_per_s (batch × 1000 /
  median_ms); unstable (cv above the run's unstable_cv); warmup_iters, requests_per_sample;
  res_* (resources over the steady window: res_cpu_percent_mean, res_rss_mib_peak, and on a GPU
  res_gpu_util_mean, res_sm_clock_mhz_mean, res_temp_c_mean, res_power_w_mean, res_gpu_used_mib_peak,
  res_throttle = comma-separated throttle reasons seen, ...); torch_max_allocated_mib,
  framework_mem_mib, nvml_process_mib; parity_passed, parity_cosine, parity_rel_err,
  parity_max_abs_err, parity_top1; compile_s.
* ``run.kernel_points`` / ``kernel_points.parquet`` (GPU runs): one CUPTI-profiled point (the smallest
  and largest measured batch of each shape, profiled after the sweep's timing, see ``lib.kernels``).
  backend, precision, batch, shape, device_median_ms (the timed, un-profiled median), busy_ms (GPU busy
  time per request: union of kernel and copy intervals), kernel_ms (sum of their durations),
  launches (GPU activities per request), busy_share (busy_ms / device_median_ms), iters, error.
* ``run.kernels`` / ``kernels.parquet``: one kernel name at one profiled point. backend, precision,
  batch, shape, kernel (full name), short (readable name), category, calls (per request), ms (per request).
* ``run.failures``: every backend/point that produced no numbers, or whose parity failed: backend,
  precision, batch, shape (None for a whole backend), status ("unavailable", "skipped",
  "export failed", "crashed", "not run", "oom", "error", "parity failed") and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import read_json
from .energy import ENERGY_COLUMNS, energy_columns
from .stats import OutlierRule, parse_outlier_rule, summarize

__all__ = ["Run", "load_run", "latest_run", "check_run_dir", "PARQUET_FILES"]

# Columns every table has even when empty (a run where nothing ran still loads into the same shapes).
ITERATION_COLUMNS = ["backend", "precision", "batch", "shape", "mode", "iter", "ms", "wall_ms", "t_s", "requests"]
SAMPLE_COLUMNS = ["backend", "precision", "t_s", "label", "rss_mib", "cpu_percent"]
POINT_COLUMNS = ["backend", "precision", "device", "batch", "shape", "mode", "timer", "n", "dropped", "median_ms",
                 "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "cv", "min_ms", "max_ms", "p99_raw_ms",
                 "max_raw_ms", "items_per_s", "unstable", "warmup_iters", "requests_per_sample",
                 "torch_max_allocated_mib", "framework_mem_mib", "nvml_process_mib", "parity_passed", "parity_cosine",
                 "parity_rel_err", "parity_max_abs_err", "parity_top1", "compile_s", *ENERGY_COLUMNS]

# Files ``Run.to_parquet`` writes, and the table each holds.
PARQUET_FILES = {"iterations": "iterations.parquet", "samples": "samples.parquet", "points": "points.parquet",
                 "kernel_points": "kernel_points.parquet", "kernels": "kernels.parquet"}
KERNEL_POINT_COLUMNS = ["backend", "precision", "batch", "shape", "device_median_ms", "busy_ms", "kernel_ms", "launches",
                        "busy_share", "iters", "error"]
KERNEL_COLUMNS = ["backend", "precision", "batch", "shape", "kernel", "short", "category", "calls", "ms"]


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
    kernel_points: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KERNEL_POINT_COLUMNS))
    kernels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KERNEL_COLUMNS))
    export: dict = field(default_factory=dict)

    @property
    def environment(self) -> dict:
        for e in self.engines.values():
            return e.get("environment", {})
        return {}

    @property
    def device(self) -> str:
        return self.plan.get("device", "cpu")

    @property
    def gpu_name(self) -> str | None:
        return (self.environment.get("gpu") or {}).get("name")

    @property
    def has_gpu_samples(self) -> bool:
        """True when the sampler recorded NVML readings (a GPU run with a working driver)."""
        s = self.samples
        return not s.empty and any(c in s and s[c].notna().any() for c in ("sm_clock_mhz", "gpu_util"))

    def raw_ms(self, backend: str, precision: str, batch: int, shape: str, mode: str):
        """Every timed sample (ms) of one point and mode, as a numpy array (empty when absent)."""
        it = self.iterations
        if it.empty:
            return np.array([], dtype=float)
        m = ((it["backend"] == backend) & (it["precision"] == precision) & (it["batch"] == batch)
             & (it["shape"] == shape) & (it["mode"] == mode))
        return it.loc[m, "ms"].to_numpy(dtype=float)

    def to_parquet(self, directory: Path | str | None = None) -> list[Path]:
        """Write ``iterations.parquet``, ``samples.parquet`` and ``points.parquet`` (schema: this
        module's docstring) into ``directory`` (default: the run folder); returns the paths written."""
        import io

        from .cache import atomic_write_bytes

        out = Path(directory) if directory is not None else self.path
        written = []
        for attr, name in PARQUET_FILES.items():
            frame = getattr(self, attr)
            if frame is None or frame.empty:
                continue
            frame = frame.copy()
            for c in frame.columns:  # mixed None/number object columns -> float, so every reader agrees
                if frame[c].dtype == object and frame[c].map(lambda v: v is None or isinstance(v, (int, float))).all():
                    frame[c] = pd.to_numeric(frame[c], errors="coerce")
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            atomic_write_bytes(out / name, buf.getvalue())
            written.append(out / name)
        return written


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
        row.update(energy_columns(meta.get("energy"), rec["device"]))  # energy and power: lib/energy.py
        rows.append(row)
    return rows


def _kernel_rows(record: dict, backend: str, precision: str, kpoints: list, krows: list) -> None:
    from .kernels import category, short_name  # from the full name at load time: a run read later gets today's rules

    for e in record.get("points", []):
        key = {"backend": backend, "precision": precision, "batch": e.get("batch"), "shape": e.get("shape")}
        median, busy = e.get("device_median_ms"), e.get("busy_ms")
        kpoints.append({**key, "device_median_ms": median, "busy_ms": busy, "kernel_ms": e.get("kernel_ms"),
                        "launches": e.get("launches"), "iters": e.get("iters"), "error": e.get("error"),
                        "busy_share": busy / median if busy is not None and median else None})
        krows.extend({**key, "kernel": k["name"], "short": short_name(k["name"]), "category": category(k["name"]),
                      "calls": k["calls"], "ms": k["ms"]} for k in e.get("kernels", []))


def check_run_dir(path: Path | str, what: str = "run folder") -> Path:
    """``path`` as a Path when it is a run folder (params.json and plan.json), else a BenchbookError
    naming the value and what is missing."""
    from .errors import BenchbookError

    p = Path(path)
    if not p.exists():
        raise BenchbookError(f"{what} {str(path)!r} does not exist")
    if not p.is_dir():
        raise BenchbookError(f"{what} {str(path)!r} is not a folder")
    missing = [f for f in ("params.json", "plan.json") if not (p / f).is_file()]
    if missing:
        raise BenchbookError(f"{what} {str(path)!r} is not a benchbook run (no {' or '.join(missing)}); "
                             f"give a folder like reports/<model>/<run-id>")
    return p


def _skip_status(reason: str) -> str:
    return "skipped" if "not in BACKENDS=auto" in reason else "unavailable"


def load_run(path: Path | str, outliers: str | None = None) -> Run:
    """Everything measured in a run folder, as tidy tables (see the module docstring)."""
    path = check_run_dir(path)
    params = read_json(path / "params.json")
    plan = read_json(path / "plan.json")
    rule = parse_outlier_rule(outliers or params.get("outliers", "tukey"))
    unstable_cv = float(params.get("unstable_cv", 0.05))
    run = Run(path=path, params=params, plan=plan, rule=rule)
    iters, ticks, points, failures, kpoints, krows = [], [], [], [], [], []
    for s in plan.get("skipped", []):
        failures.append({"backend": s["backend"], "precision": s["precision"], "batch": None, "shape": None,
                         "status": _skip_status(s["reason"]), "reason": s["reason"]})
    if (path / "export.failed.json").exists():
        err = read_json(path / "export.failed.json").get("error", "")
        failures.append({"backend": "(export)", "precision": None, "batch": None, "shape": None,
                         "status": "export failed", "reason": str(err)[-1500:]})
    expected = [(int(b), str(s)) for s in plan.get("shapes", []) for b in plan.get("batch_sizes", [])]
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
        seen = set()
        for pj in sorted((d / "points").glob("*.json")) if d.exists() else []:
            rec = read_json(pj)
            seen.add((rec.get("batch"), rec.get("shape")))
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
        if d.exists() and not failed.exists() and not (d / "done.json").exists():
            for batch, shape in expected:
                if (batch, shape) not in seen:
                    failures.append({"backend": b, "precision": p, "batch": batch, "shape": shape, "status": "not run",
                                     "reason": "no result: the sweep stopped before this point (interrupted?); "
                                               "rerun with the same RUN_ID to resume"})
        if (d / "samples.parquet").exists():
            ticks.append(pd.read_parquet(d / "samples.parquet").assign(backend=b, precision=p))
        if (d / "kernels.json").exists():
            _kernel_rows(read_json(d / "kernels.json"), b, p, kpoints, krows)
    run.iterations = pd.concat(iters, ignore_index=True) if iters else pd.DataFrame(columns=ITERATION_COLUMNS)
    run.samples = pd.concat(ticks, ignore_index=True) if ticks else pd.DataFrame(columns=SAMPLE_COLUMNS)
    run.points = pd.DataFrame(points) if points else pd.DataFrame(columns=POINT_COLUMNS)
    run.failures = pd.DataFrame(failures, columns=["backend", "precision", "batch", "shape", "status", "reason"])
    run.kernel_points = pd.DataFrame(kpoints, columns=KERNEL_POINT_COLUMNS)
    run.kernels = pd.DataFrame(krows, columns=KERNEL_COLUMNS)
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
