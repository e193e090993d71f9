"""Read a run folder into tidy pandas tables: ``run = lib.load_run("reports/<model>/<run_id>")``.

Every path is taken relative to the run folder, so a run copied from another machine loads the
same. ``run.to_parquet()`` writes the three tidy tables into the run folder as Parquet files; read
them back without benchbook with ``pandas.read_parquet("<run>/iterations.parquet")``.

Schema (one row each; times in milliseconds unless the name says otherwise):

* ``run.iterations`` / ``iterations.parquet``: one timed sample.
  backend (str), precision (str: fp32, fp16, bf16), batch (int), shape (str, e.g. "240x240" or
  "static"), mode (str: "device" = inputs and outputs stay on the device; "end_to_end" = host arrays
  in and out, copies included; "throughput" = pipelined back-to-back requests, GPU only), round (int,
  1-based per point and mode), pass (int: 1 or 2, the process that measured it), iter (int, 0-based
  within the round), ms (float: CUDA-event time on a GPU, perf_counter on a CPU; for "throughput" the
  window's time per request), wall_ms (float: host perf_counter of the same sample), t_s (float:
  seconds since that pass's engine load began), requests (int: requests per sample).
* ``run.rounds`` / ``rounds.parquet``: one round of one point and mode. backend, precision, batch,
  shape, mode, round, pass, n (samples), median_ms (the round's median), run_t_s (seconds since the
  run's first measured pass began, comparable across backends), sentinel_us (the host sentinel timed
  just before the round, ``lib.measure.timing.HostSentinel``: µs per empty kernel launch on a GPU, per fixed
  loop on a CPU), sentinel_after_us (the same, just after the round; NaN in runs before it existed),
  settle_s (seconds the sweep waited before the round for the sentinel to come within ``HOST_SLOW`` of
  its best so far, ``HostSentinel.settle``), cpu_wait_share (thread-milliseconds the process's threads spent
  waiting for a CPU in the run queue per millisecond of the round's warm-up and timed block, summed over threads,
  ``lib.measure.timing.cpu_wait_ms``; NaN where the kernel has no schedstat or in runs before it existed),
  host_slow (bool: the sentinel before or after the round above the run's best, its 5th percentile, by more
  than ``HOST_SLOW``; on a CPU also a cpu_wait_share above ``HOST_SLOW``),
  switched (bool: another point ran on the engine just before).
* ``run.samples`` / ``samples.parquet``: one resource-sampler tick (about 10 Hz).
  backend, precision, t_s (same clock as ``iterations.t_s``), label (str: "<backend>/<precision>
  bs=<batch> shape=<shape> <mode>" while a measurement runs, "" between), rss_mib (process RSS),
  cpu_percent (process CPU %, 100 = one core), resumed (True for ticks of a resumed sweep) and, on a
  GPU (absent or NaN on a CPU): gpu_util, gpu_mem_util (%), gpu_used_mib (device-wide),
  gpu_proc_mib (this process, NVML), sm_clock_mhz, mem_clock_mhz, temp_c, power_w, throttle_reasons
  (int NVML clock-event bit mask, -1 = unreadable; ``lib.measure.sampler.throttle_names`` decodes it).
* ``run.points`` / ``points.parquet``: one measured point and mode. backend, precision, device,
  batch, shape, mode, timer; n (samples over all rounds); median_ms, mean_ms, std_ms, cv, min_ms,
  max_ms over *every* raw sample (``lib.common.stats.summarize``); p90_ms, p95_ms, p99_ms (NaN where the
  sample is too small: p99 needs 100 samples, p95 20, p90 10), tail_q / tail_ms (the highest supported
  percentile and its value); items_per_s (batch × 1000 / median_ms); rounds, passes, ci_low_ms,
  ci_high_ms (95 % interval of the median from the round medians, ``lib.common.stats.round_interval``),
  ci_half (its half-width relative to the median), round_spread ((max - min) of round medians /
  median), host_slow_rounds (rounds taken while the host was slow); unstable (bool: cv above
  ``UNSTABLE_CV``), noisy (bool: round_spread above ``NOISE_SPREAD``, or at least half the rounds on a
  slow host), converged (bool: ci_half within ``CI_TARGET``); presentation-only figures after the
  outlier rule: dropped, filtered_median_ms, filtered_mean_ms, filtered_std_ms; warmup_iters (the
  point's first warm-up), requests_per_sample; res_* (resources over the rounds' steady windows:
  res_cpu_percent_mean, and on a GPU res_gpu_util_mean, res_sm_clock_mhz_mean, res_temp_c_mean,
  res_power_w_mean, res_throttle = comma-separated throttle reasons seen, ...; peaks res_rss_mib_peak,
  res_gpu_used_mib_peak, res_gpu_proc_mib_peak from the point's characterisation, when it was bound
  alone); torch_max_allocated_mib (PyTorch's caching allocator: peak bytes in tensors),
  trt_activation_mib (TensorRT: the execution context's activation scratch, fixed when the engine is
  built), nvml_process_mib (NVML: everything the process holds on the GPU); parity_passed, parity_cosine,
  parity_centred_cosine, parity_rel_err, parity_max_abs_err, parity_top1 (the worst output); compile_s,
  compile_graphs.
* ``run.parity``: a row per point and output: backend, precision, batch, shape, output, passed (the
  point's verdict), cosine, centred_cosine, rel_err, centred_rel_err, max_abs_err, top1_agree.
* ``run.kernel_points`` / ``kernel_points.parquet`` (GPU runs): one CUPTI-profiled point (the smallest
  and largest measured batch of each shape, profiled after the sweep's timing, see ``lib.measure.kernels``).
  backend, precision, batch, shape, device_median_ms (the timed, un-profiled median), busy_ms (GPU busy
  time per request: union of kernel and copy intervals), kernel_ms (sum of their durations),
  launches (GPU activities per request), busy_share (busy_ms / device_median_ms), iters, error.
* ``run.kernels`` / ``kernels.parquet``: one kernel name at one profiled point. backend, precision,
  batch, shape, kernel (full name), short (readable name), category, calls (per request), ms (per request).
* ``run.failures``: every backend/point that produced no numbers, or whose parity failed: backend,
  precision, batch, shape (None for a whole backend), status ("unavailable", "skipped",
  "export failed", "crashed", "not run", "oom", "error", "parity failed", "corrupt": a point file that
  cannot be read, named in the reason) and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.cache import read_json
from ..common.stats import (SENTINEL_BEST_PERCENTILE, OutlierRule, filtered_summary, host_slow_limit,
                            parse_outlier_rule, round_interval, round_spread, summarize)
from ..measure.energy import ENERGY_COLUMNS, energy_columns, merge_energy
from ..measure.sampler import merge_summaries

__all__ = ["Run", "load_run", "latest_run", "check_run_dir", "PARQUET_FILES"]

# Columns every table has even when empty (a run where nothing ran still loads into the same shapes).
ITERATION_COLUMNS = ["backend", "precision", "batch", "shape", "mode", "round", "pass", "iter", "ms", "wall_ms", "t_s",
                     "requests"]
ROUND_COLUMNS = ["backend", "precision", "batch", "shape", "mode", "round", "pass", "n", "median_ms", "run_t_s",
                 "sentinel_us", "sentinel_after_us", "settle_s", "cpu_wait_share", "host_slow", "switched"]
SAMPLE_COLUMNS = ["backend", "precision", "t_s", "label", "rss_mib", "cpu_percent"]
POINT_COLUMNS = ["backend", "precision", "device", "batch", "shape", "mode", "timer", "n", "median_ms",
                 "p90_ms", "p95_ms", "p99_ms", "tail_q", "tail_ms", "mean_ms", "std_ms", "cv", "min_ms", "max_ms",
                 "items_per_s", "rounds", "passes", "ci_low_ms", "ci_high_ms", "ci_half", "round_spread",
                 "host_slow_rounds", "unstable", "noisy", "converged", "dropped", "filtered_median_ms",
                 "filtered_mean_ms", "filtered_std_ms", "warmup_iters", "requests_per_sample",
                 "torch_max_allocated_mib", "trt_activation_mib", "nvml_process_mib", "parity_passed",
                 "parity_cosine", "parity_centred_cosine", "parity_rel_err", "parity_max_abs_err", "parity_top1",
                 "compile_s", "compile_graphs", *ENERGY_COLUMNS]

# Files ``Run.to_parquet`` writes, and the table each holds.
PARQUET_FILES = {"iterations": "iterations.parquet", "rounds": "rounds.parquet", "samples": "samples.parquet",
                 "points": "points.parquet",
                 "kernel_points": "kernel_points.parquet", "kernels": "kernels.parquet"}
KERNEL_POINT_COLUMNS = ["backend", "precision", "batch", "shape", "device_median_ms", "busy_ms", "kernel_ms", "launches",
                        "busy_share", "iters", "error"]
KERNEL_COLUMNS = ["backend", "precision", "batch", "shape", "kernel", "short", "category", "calls", "ms"]


PARITY_COLUMNS = ["backend", "precision", "batch", "shape", "output", "passed", "cosine", "centred_cosine",
                  "rel_err", "centred_rel_err", "max_abs_err", "top1_agree"]


@dataclass
class Run:
    path: Path
    params: dict
    plan: dict
    rule: OutlierRule
    engines: dict = field(default_factory=dict)     # "backend/precision" -> engine.json
    iterations: pd.DataFrame = field(default_factory=pd.DataFrame)
    rounds: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROUND_COLUMNS))
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    kernel_points: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KERNEL_POINT_COLUMNS))
    kernels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KERNEL_COLUMNS))
    parity: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PARITY_COLUMNS))
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

    def point_rounds(self, backend: str, precision: str, batch: int, shape: str, mode: str) -> pd.DataFrame:
        """The rounds of one point and mode (``run.rounds`` rows): their medians and passes give the
        point's interval (``lib.common.stats.round_interval`` / ``ratio_interval``)."""
        r = self.rounds
        if r.empty:
            return r
        m = ((r["backend"] == backend) & (r["precision"] == precision) & (r["batch"] == batch)
             & (r["shape"] == shape) & (r["mode"] == mode))
        return r[m]

    @property
    def host_noise(self) -> dict:
        """The host sentinel over the run: its best (5th percentile), the slow threshold, and how many
        rounds ran on a slow host."""
        r = self.rounds
        slow = float(self.params.get("host_slow", 0.10))
        if r.empty or not r["sentinel_us"].notna().any():
            return {"rounds": 0, "slow_rounds": 0, "cpu_wait_rounds": 0, "cpu_wait_median": float("nan"),
                    "best_us": float("nan"), "median_us": float("nan"),
                    "max_us": float("nan"), "threshold": slow, "waited_s": 0.0, "waited_rounds": 0}
        v = r["sentinel_us"].dropna()
        waits = r["settle_s"].fillna(0.0) if "settle_s" in r else pd.Series(dtype=float)
        wait = r["cpu_wait_share"].astype(float) if "cpu_wait_share" in r else pd.Series(np.nan, index=r.index)
        return {"rounds": int(len(r)), "slow_rounds": int(r["host_slow"].sum()),
                "cpu_wait_rounds": int((wait > slow).sum()) if self.device == "cpu" else 0,
                "cpu_wait_median": float(wait.median()) if wait.notna().any() else float("nan"), "best_us": float(np.percentile(v, SENTINEL_BEST_PERCENTILE)),
                "median_us": float(v.median()), "max_us": float(v.max()), "threshold": slow,
                "waited_s": float(waits.sum()), "waited_rounds": int((waits >= 0.05).sum())}

    def to_parquet(self, directory: Path | str | None = None) -> list[Path]:
        """Write ``iterations.parquet``, ``samples.parquet`` and ``points.parquet`` (schema: this
        module's docstring) into ``directory`` (default: the run folder); returns the paths written."""
        import io

        from ..common.cache import atomic_write_bytes

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


def _point_rows(rec: dict, iters: pd.DataFrame, rounds: pd.DataFrame, rule: OutlierRule, params: dict) -> list[dict]:
    """One row per mode of a point record: statistics over every raw sample, the interval and flags from
    its rounds, presentation-only filtered figures, resources, memory and parity."""
    rows = []
    unstable_cv = float(params.get("unstable_cv", 0.05))
    spread_max = float(params.get("noise_spread", 0.05))
    ci_target = float(params.get("ci_target", 0.01))
    parity = rec.get("parity", {})
    mem = rec.get("memory", {}) or {}
    peaks = {k: v for k, v in (rec.get("memory_window") or {}).items() if k.endswith("_peak")}
    for mode in dict.fromkeys(r["mode"] for r in rec.get("rounds", [])):
        ms = iters.loc[iters["mode"] == mode, "ms"].to_numpy()
        if not len(ms):
            continue
        entries = [r for r in rec["rounds"] if r["mode"] == mode]
        mine = rounds[rounds["mode"] == mode]
        s = summarize(ms)
        med = s["median_ms"]
        lo, hi = round_interval(mine["median_ms"], med, groups=mine["pass"])
        spread = round_spread(mine["median_ms"], med)
        slow = int(mine["host_slow"].sum())
        row = {k: rec[k] for k in ("backend", "precision", "device", "batch", "shape")}
        row.update(mode=mode, timer=entries[0]["timer"], **s)
        row["items_per_s"] = rec["batch"] * 1e3 / med if med else np.nan
        row.update(rounds=len(mine), passes=int(mine["pass"].nunique()), ci_low_ms=lo, ci_high_ms=hi,
                   ci_half=(hi - lo) / 2 / med if hi == hi else np.nan, round_spread=spread, host_slow_rounds=slow)
        row["unstable"] = bool(s["cv"] > unstable_cv)
        # Noisy from the point's own rounds only. Slow-host rounds are counted and shown, not a flag by themselves:
        # on a lent H200 most rounds of a run sat >10 % above the sentinel's best while kernel-bound points'
        # rounds agreed within 0.1 % (flagging those would flag everything and so nothing).
        row["noisy"] = bool(spread > spread_max)
        row["converged"] = bool(row["ci_half"] <= ci_target) if hi == hi else False
        row.update(filtered_summary(ms, rule))
        row["warmup_iters"] = rec.get("first_warmup_iters")
        row["requests_per_sample"] = entries[0].get("requests_per_sample", 1)
        res = merge_summaries([r.get("resources", {}) for r in entries])
        res.update(peaks)  # memory peaks from when the point was bound alone (rounds keep other points bound)
        for k, v in res.items():
            row[f"res_{k}"] = v
        row["torch_max_allocated_mib"] = mem.get("torch_max_allocated_bytes", np.nan) / (1 << 20)
        # two unlike figures, two columns: an allocator's peak is not an engine's fixed activation scratch
        row["trt_activation_mib"] = mem.get("trt_engine_device_memory_bytes", np.nan) / (1 << 20)
        row["nvml_process_mib"] = rec.get("nvml_process_mib")
        row["parity_passed"] = parity.get("passed")
        row["parity_cosine"] = parity.get("cosine")
        row["parity_centred_cosine"] = parity.get("centred_cosine")
        row["parity_rel_err"] = parity.get("rel_err")
        row["parity_max_abs_err"] = parity.get("max_abs_err")
        row["parity_top1"] = parity.get("top1_agree")
        row["compile_s"] = rec.get("compile_s")
        row["compile_graphs"] = rec.get("compile_graphs")
        row.update(energy_columns(merge_energy(rec.get("energy_by_pass"), mode), rec["device"]))  # lib/measure/energy.py
        rows.append(row)
    return rows


def _round_rows(rec: dict, origins: dict) -> list[dict]:
    """``run.rounds`` rows of one point record; ``origins`` maps a pass to its unix start time minus the
    run's first (so ``run_t_s`` is one clock across backends and passes)."""
    key = {k: rec[k] for k in ("backend", "precision", "batch", "shape")}
    return [{**key, "mode": r["mode"], "round": r["round"], "pass": r["pass"], "n": r["n"], "median_ms": r["median_ms"],
             "run_t_s": origins.get(str(r["pass"]), 0.0) + r["t0"], "sentinel_us": r.get("sentinel_us", np.nan),
             "sentinel_after_us": r.get("sentinel_after_us", np.nan), "settle_s": r.get("settle_s", 0.0),
             "cpu_wait_share": np.nan if r.get("cpu_wait_share") is None else r["cpu_wait_share"], "host_slow": False, "switched": bool(r.get("switched"))} for r in rec.get("rounds", [])]


def _kernel_rows(record: dict, backend: str, precision: str, kpoints: list, krows: list) -> None:
    from ..measure.kernels import category, short_name  # from the full name at load time: a run read later gets today's rules

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
    from ..common.errors import BenchbookError

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


def load_run(path: Path | str, outliers: str | None = None, only: tuple[str, str] | None = None) -> Run:
    """Everything measured in a run folder, as tidy tables (see the module docstring).

    ``only=(backend, precision)`` reads that combo alone (the benchmark notebook's own table: reading the
    whole run there would cost every later kernel of a long run seconds for nothing)."""
    from ..common.runstate import CorruptFile, read_point, read_run_json

    path = check_run_dir(path)
    params = read_run_json(path / "params.json")  # a corrupt one: an error naming the file
    plan = read_run_json(path / "plan.json")
    if only is not None:
        plan = {**plan, "combos": [c for c in plan.get("combos", []) if (c["backend"], c["precision"]) == tuple(only)],
                "skipped": [s for s in plan.get("skipped", []) if (s["backend"], s["precision"]) == tuple(only)]}
    rule = parse_outlier_rule(outliers or params.get("outliers", "tukey"))
    run = Run(path=path, params=params, plan=plan, rule=rule)
    iters, ticks, failures, kpoints, krows, prows = [], [], [], [], [], []
    measured = []  # (record, its samples, its rounds): point rows need the run-wide host baseline first
    for s in plan.get("skipped", []):
        failures.append({"backend": s["backend"], "precision": s["precision"], "batch": None, "shape": None,
                         "status": _skip_status(s["reason"]), "reason": s["reason"]})
    if (path / "export.failed.json").exists():
        err = read_json(path / "export.failed.json").get("error", "")
        failures.append({"backend": "(export)", "precision": None, "batch": None, "shape": None,
                         "status": "export failed", "reason": str(err)[-1500:]})
    expected = [(int(b), str(s)) for s in plan.get("shapes", []) for b in plan.get("batch_sizes", [])]
    starts = {}
    for combo in plan.get("combos", []):
        ej = path / "bench" / f"{combo['backend']}-{combo['precision']}" / "engine.json"
        for k, v in (read_json(ej).get("passes", {}) if ej.exists() else {}).items():
            starts[(combo["backend"], combo["precision"], k)] = v.get("t_origin_unix", 0.0)
    run_start = min(starts.values(), default=0.0)
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
            try:  # one corrupt file is shown as what it is; it never stops the rest of the run from loading
                rec = read_point(pj)
            except CorruptFile as e:
                failures.append({"backend": b, "precision": p, "batch": None, "shape": pj.stem, "status": "corrupt",
                                 "reason": f"{e}; rerun with the same RUN_ID to set it aside and measure the point "
                                           f"again"})
                continue
            if rec.get("status") == "ok" and not rec.get("rounds"):
                continue  # characterised, no round measured yet (an interrupted sweep): listed as not run below
            seen.add((rec.get("batch"), rec.get("shape")))
            if rec.get("status") != "ok":
                failures.append({"backend": b, "precision": p, "batch": rec.get("batch"), "shape": rec.get("shape"),
                                 "status": rec.get("status"), "reason": rec.get("error", "")})
                continue
            frame = pd.read_parquet(pj.with_suffix(".parquet"))
            frame = frame.assign(backend=b, precision=p, batch=rec["batch"], shape=rec["shape"])
            iters.append(frame)
            origins = {k: t - run_start for (bb, pp, k), t in starts.items() if (bb, pp) == (b, p)}
            measured.append((rec, frame, pd.DataFrame(_round_rows(rec, origins), columns=ROUND_COLUMNS)))
            par = rec.get("parity", {})
            for name, figures in (par.get("outputs") or {}).items():
                prows.append({"backend": b, "precision": p, "batch": rec["batch"], "shape": rec["shape"],
                              "output": name, "passed": par.get("passed"),
                              **{k: figures.get(k, np.nan) for k in PARITY_COLUMNS[6:]}})
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
    all_rounds = [r for _, _, r in measured if len(r)]
    rounds = pd.concat(all_rounds, ignore_index=True) if all_rounds else pd.DataFrame(columns=ROUND_COLUMNS)
    if len(rounds) and rounds["sentinel_us"].notna().any():
        limit = host_slow_limit(rounds["sentinel_us"], float(params.get("host_slow", 0.10)))

        waited = float(params.get("host_slow", 0.10)) if plan.get("device", "cpu") == "cpu" else np.inf

        def slow(r):  # the sentinel before the round, or the one after it (a burst that began during it); on a
            # CPU also a round whose threads waited for a CPU more than HOST_SLOW of its time (as the sweep rules)
            return ((r["sentinel_us"] > limit) | (r["sentinel_after_us"].fillna(0.0) > limit)
                    | (r["cpu_wait_share"].astype(float).fillna(0.0) > waited))

        for _, _, r in measured:
            r["host_slow"] = slow(r)
        rounds["host_slow"] = slow(rounds)
    points = [row for rec, frame, r in measured for row in _point_rows(rec, frame, r, rule, params)]
    run.rounds = rounds
    run.iterations = pd.concat(iters, ignore_index=True) if iters else pd.DataFrame(columns=ITERATION_COLUMNS)
    run.samples = pd.concat(ticks, ignore_index=True) if ticks else pd.DataFrame(columns=SAMPLE_COLUMNS)
    run.points = pd.DataFrame(points) if points else pd.DataFrame(columns=POINT_COLUMNS)
    run.failures = pd.DataFrame(failures, columns=["backend", "precision", "batch", "shape", "status", "reason"])
    run.kernel_points = pd.DataFrame(kpoints, columns=KERNEL_POINT_COLUMNS)
    run.kernels = pd.DataFrame(krows, columns=KERNEL_COLUMNS)
    run.parity = pd.DataFrame(prows, columns=PARITY_COLUMNS)
    if (path / "export.json").exists():
        run.export = read_json(path / "export.json")
    return run


def latest_run(reports_dir: Path | str = "reports", model: str | None = None) -> Path:
    """The newest run folder (by name: run ids start with a UTC timestamp)."""
    from ..common.errors import BenchbookError

    runs = sorted(Path(reports_dir).glob(f"{model or '*'}/*/plan.json"), key=lambda p: p.parent.name)
    if not runs:
        raise BenchbookError(f"no runs under {reports_dir}; run `make report MODEL=...` first")
    return runs[-1].parent
