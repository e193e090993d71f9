"""Benchmark one backend at one precision over the run's points (batch size x shape), in rounds.

Called by the benchmark notebook, one kernel per backend/precision and pass (a crash takes down only
that kernel). How a point is measured, and why:

* **Rounds, interleaved.** Every point and mode (device-resident, end-to-end, pipelined throughput)
  is measured in several short rounds; each round visits every unfinished point and mode once, in
  a seeded random order, so a slow minute of the host lands on many points a little instead of on
  one point entirely (Google Benchmark's random interleaving). A point keeps its binding (device
  buffers, CUDA graph) across rounds; a switch costs a short same-shape warm-up.
* **Two passes, backends apart in time.** The Makefile runs every backend's pass 1 (characterisation and
  the first half of the minimum rounds, a kernel per backend) in order, then every backend's pass 2 in
  reverse order, all in one process (``lib.sweep.second_pass``: a process start per backend would cost
  more than the rounds); the second load is cheap (engine, ONNX and compile caches). A backend is thus
  measured at two moments of the run, and the rounds of its two processes show whether they agree.
  ``bench_pass=0`` does both halves in one process (a notebook run by hand).
* **Adaptive stopping.** After the minimum rounds (pass 2), a point and mode gets more rounds while
  its 95 % interval (from its round medians, ``lib.common.stats.round_interval``) is wider than
  ``CI_TARGET`` of its median, until ``POINT_CAP`` timed seconds: quiet points stop early, noisy
  ones get more rounds.
* **Host sentinel.** Before every round of every point and mode, ``lib.measure.timing.HostSentinel`` times a
  fixed tiny workload; its value is stored with the round, so the analysis can mark rounds taken
  while the host was slow.
* **Characterisation, once per point** (first pass): with no other binding kept, the point is
  bound, warmed up for ``WARMUP`` seconds, checked for parity against the reference, and its
  memory read (framework allocator and NVML per-process), so those figures are the point's own.

A point's JSON and Parquet are rewritten atomically after every round, so an interrupted run keeps
every round it measured and a rerun of the same run adds only the missing rounds. A point that fails
(out of memory, an engine error) is recorded with its reason and the sweep goes on.

Files, under ``<run_dir>/bench/<backend>-<precision>/``:
``engine.json`` (load/build info per pass, environment), ``points/<point>.json`` (status, parity,
memory, one entry per round with its median, sentinel and resources), ``points/<point>.parquet``
(every timed sample, with its round and pass), ``samples.parquet`` (every sampler tick), on a GPU
``kernels.json`` (where the GPU time of a request goes, see ``lib.measure.kernels``) and ``done.json`` when
the last pass finished.
"""

from __future__ import annotations

import time
import traceback
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..backends import Artifacts, EngineSpec, make_engine
from ..common.cache import (atomic_write_bytes, atomic_write_json, read_json, remove_partial_writes,
                            signals_deferred)
from ..common.errors import BenchbookError
from ..common.runstate import read_prior_ticks, valid_points
from ..common.stats import host_slow_limit, round_interval
from ..config.inputs import make_inputs
from ..config.model_config import ModelConfig, Shape
from ..config.models import get_model
from ..config.params import MAX_ROUNDS, measured_modes, pass_targets
from ..measure.energy import EnergyMeter
from ..measure.environment import run_environment
from ..measure.flops import record_flops
from ..measure.parity import check_parity
from ..measure.reference import ReferenceOutputs
from ..measure.sampler import Sampler
from ..measure.timing import (HostSentinel, TimingPolicy, cpu_wait_ms, measure_latency, measure_throughput,
                              throughput_window, warm_up)
from .plan import load_plan, planned_points, run_onnx

__all__ = ["run_backend", "combo_dir", "point_key", "is_oom", "SWITCH_WARMUP_S"]

_OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "cublas_status_alloc_failed",
                "outofmemory", "bad_alloc", "can't allocate memory", "cannot allocate memory", "unable to allocate",
                "is smaller than requested bytes")


# Warm-up after switching to a point that is already bound (same shape as before: clocks, caches and
# allocator come back to it in a few iterations; the first warm-up of a point uses WARMUP).
SWITCH_WARMUP_S = 0.03


def combo_dir(run_dir: Path, backend: str, precision: str) -> Path:
    return Path(run_dir) / "bench" / f"{backend}-{precision}"


def point_key(batch: int, shape: Shape) -> str:
    return f"bs{batch}_{shape.label}"


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(m in text for m in _OOM_MARKERS)


def _to_parquet(path: Path, frame: pd.DataFrame) -> None:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def _nvml_process_mib() -> float:
    """This process's GPU memory now, from NVML's compute-process list (NaN where hidden)."""
    try:
        import os

        import pynvml

        from ..common.gpu import nvml_handle

        h = nvml_handle()  # the engines' GPU by UUID, not NVML's index 0
        used = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return sum(used) / (1 << 20) if used else float("nan")
    except Exception:
        return float("nan")


def _profile_kernels(engine, points: list, shapes: list[Shape], out: Path, label: str, log) -> None:
    """``kernels.json``: a CUPTI profile of the smallest and the largest measured batch of each shape
    (the launch-bound and the kernel-bound ends of the sweep), beside their timed device medians.
    A profile that fails is recorded with its reason; it never fails the sweep."""
    from ..measure.kernels import profile_requests

    entries = []
    for shape in shapes:
        recs = sorted((p for p in points if p.ok and p.shape.label == shape.label and p.frames), key=lambda p: p.batch)
        for point in {id(p): p for p in recs[:1] + recs[-1:]}.values():
            frame = pd.concat(point.frames)
            entry = {"batch": point.batch, "shape": shape.label,
                     "device_median_ms": float(np.median(frame.loc[frame["mode"] == "device", "ms"]))}
            try:
                # the point's kept binding: the very session, graph or buffers that were timed, and no new
                # ORT session (whose cuDNN search cost 6 s a shape on an H200) or capture
                try:
                    engine.bind(point.inputs, key=point.key)
                except Exception as e:
                    if not is_oom(e):
                        raise
                    engine.release_bindings()  # the other points' kept bindings hold the memory: this one alone
                    _free_gpu(True)
                    engine.bind(point.inputs, key=point.key)
                prof = profile_requests(engine.run_bound)
                entry.update(prof.to_dict())
                top = prof.kernels[0] if prof.kernels else {"short": "-", "ms": 0.0}
                log(f"[{label}] kernels at batch {point.batch}, shape {shape.label}: GPU busy {prof.busy_ms:.3f} ms "
                    f"per request over {prof.launches:.0f} launches; slowest: {top['short']} {top['ms']:.3f} ms")
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"[:1000]
                log(f"[{label}] kernel profile at batch {point.batch} not taken: {entry['error'][:300]}")
                if is_oom(e):
                    _free_gpu(True)
            entries.append(entry)
    atomic_write_json(out / "kernels.json", {"points": entries})


class _Point:
    """One point's state in a sweep: its record (the JSON), its samples and its inputs."""

    def __init__(self, out: Path, cfg: ModelConfig, batch: int, shape: Shape, seed: int, record: dict,
                 frames: list[pd.DataFrame]):
        self.out, self.cfg, self.batch, self.shape, self.seed = out, cfg, batch, shape, seed
        self.key = point_key(batch, shape)
        self.record = record
        self.frames = frames
        self.measured_here: list[dict] = []  # rounds this process measured (its energy meter saw them)
        self._inputs = None

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        if self._inputs is None:
            self._inputs = make_inputs(self.cfg, self.batch, self.shape, self.seed)
        return self._inputs

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

    def rounds(self, mode: str) -> list[dict]:
        return [r for r in self.record.get("rounds", []) if r["mode"] == mode]

    def clean_rounds(self, mode: str, slow_limit: float, wait_limit: float = float("inf")) -> int:
        """Rounds of ``mode``, less those this process measured while its sentinel (before or after the round)
        was above ``slow_limit`` (µs) or while its threads waited for a CPU more than ``wait_limit`` of the
        round (``cpu_wait_share``). Rounds of earlier processes count as they are: each process replaces
        its own slow rounds, so a rerun of a finished pass measures nothing."""
        def slow(r):
            return ((slow_limit == slow_limit and (r["sentinel_us"] > slow_limit
                                                   or (r.get("sentinel_after_us") or 0.0) > slow_limit))
                    or (r.get("cpu_wait_share") or 0.0) > wait_limit)

        return len(self.rounds(mode)) - sum(1 for r in self.measured_here if r["mode"] == mode and slow(r))

    def timed_s(self, mode: str) -> float:
        return sum(r["t1"] - r["t0"] for r in self.rounds(mode))

    def converged(self, mode: str, target: float) -> bool:
        rs = self.rounds(mode)
        med = float(np.median(np.concatenate([f.loc[f["mode"] == mode, "ms"].to_numpy() for f in self.frames])))
        lo, hi = round_interval([r["median_ms"] for r in rs], med, groups=[r["pass"] for r in rs])
        return hi == hi and (hi - lo) / 2 <= target * med

    def save(self) -> None:
        # Samples first, the record last: a record never lists a round whose samples are not on disk. An
        # interrupt waits for both (the loader copes with a kill between them: it reads only listed rounds).
        with signals_deferred():
            if self.frames:
                _to_parquet(self.out / "points" / f"{self.key}.parquet", pd.concat(self.frames, ignore_index=True))
            atomic_write_json(self.out / "points" / f"{self.key}.json", self.record)


def _load_points(out: Path, cfg: ModelConfig, points: list[tuple[int, Shape]], seed: int, base: dict) -> list[_Point]:
    loaded = []
    for batch, shape in points:
        key = point_key(batch, shape)
        pj = out / "points" / f"{key}.json"
        record = read_json(pj) if pj.exists() else {**base, "batch": batch, "shape": shape.label, "point": key}
        pq = pj.with_suffix(".parquet")
        frames = []
        if record.get("status") == "ok" and pq.exists() and record.get("rounds"):
            frame = pd.read_parquet(pq)  # only the rounds the record lists (it is written after the samples)
            listed = {(r["mode"], r["round"]) for r in record["rounds"]}
            frames = [frame[[(m, r) in listed for m, r in zip(frame["mode"], frame["round"])]]]
        loaded.append(_Point(out, cfg, batch, shape, seed, record, frames))
    return loaded


def _free_gpu(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _fail(point: _Point, e: BaseException, label: str, log, gpu: bool) -> None:
    oom = is_oom(e)
    point.record.update(status="oom" if oom else "error", error=f"{type(e).__name__}: {e}"[:2000],
                        traceback="".join(traceback.format_exception(e))[-4000:])
    log(f"[{label}] batch {point.batch}, shape {point.shape.label}: {'OUT OF MEMORY' if oom else 'FAILED'}: "
        f"{type(e).__name__}: {str(e)[:300]}")
    point.frames = []
    point.save()
    _free_gpu(gpu)


def _characterise(engine, point: _Point, policy: TimingPolicy, reference, precision: str, sampler: Sampler,
                  gpu: bool, label: str, log) -> None:
    """First visit of a point: bound alone (no other binding kept, so memory figures are its own), warmed
    up for WARMUP seconds (cuDNN autotuning, compilation and lazy initialisation happen here, untimed),
    parity checked, memory read. Raises on failure (the caller records it)."""
    engine.release_bindings()
    _free_gpu(gpu)
    engine.reset_memory_stats()
    t0 = time.perf_counter()
    sampler.mark(f"{label} bs={point.batch} shape={point.shape.label} characterise")
    engine.bind(point.inputs, key=point.key)
    bind_s = time.perf_counter() - t0
    compile_s = engine.info.get("compile_s") if engine.backend == "torch-compile" else None
    n, secs = warm_up(engine.run_bound, engine.timer(), policy.warmup_s)
    memory, nvml_mib = engine.memory_stats(), (_nvml_process_mib() if gpu else None)  # before parity binds more
    t1 = time.perf_counter()
    window = Sampler.summarize_window(sampler.window(t0, t1))
    parity = check_parity(engine, point.cfg, point.batch, point.shape, point.seed, precision, reference, point.key)
    sampler.mark("")
    point.record.update(
        status="ok", parity=parity, memory=memory, nvml_process_mib=nvml_mib, compile_s=compile_s,
        compile_graphs=engine.info.get("compile_graphs"), bind_s=bind_s,
        est_ms=secs * 1e3 / n, first_warmup_iters=n, first_warmup_s=secs,
        memory_window=window, rounds=[])


def _measure_round(engine, point: _Point, mode: str, policy: TimingPolicy, sentinel: HostSentinel,
                   sampler: Sampler, round_no: int, bench_pass: int, t_origin: float, label: str,
                   host_slow: float) -> dict:
    """One round of one point and mode: sentinel (waiting for a quiet host, ``HostSentinel.settle``), switch,
    short warm-up, timed block, sentinel again; returns the round."""
    sentinel_us, settle_s = sentinel.settle(host_slow)
    switched = engine.bound_key != point.key
    engine.bind(point.inputs, key=point.key)  # a pointer swap when the binding is kept
    timer = engine.timer()
    quick = replace(policy, warmup_s=min(policy.warmup_s, SWITCH_WARMUP_S))
    sampler.mark(f"{label} bs={point.batch} shape={point.shape.label} {mode}")
    wait0, span0 = cpu_wait_ms(), time.perf_counter()  # the round's warm-up and timed block
    if mode == "device":
        t = measure_latency(engine.run_bound, timer, quick, "device")
    elif mode == "end_to_end":
        inputs = point.inputs
        t = measure_latency(lambda: engine.infer(inputs), timer, quick, "end_to_end")
    else:
        window = point.record.setdefault("throughput_window", throughput_window(policy, point.record["est_ms"]))
        t = measure_throughput(engine.run_bound, timer, quick, point.record["est_ms"], window=window)
    wait_share = max(cpu_wait_ms() - wait0, 0.0) / ((time.perf_counter() - span0) * 1e3)
    wait_share = None if wait_share != wait_share else round(wait_share, 5)  # NaN: no schedstat here
    sampler.mark("")
    sentinel_after_us = sentinel.measure()  # a burst that began during the block shows here
    t0, t1 = t.window
    entry = {"mode": mode, "round": round_no, "pass": bench_pass, "timer": t.timer, "n": len(t.ms),
             "median_ms": float(np.median(t.ms)), "t0": t0 - t_origin, "t1": t1 - t_origin,
             "sentinel_us": sentinel_us, "sentinel_after_us": sentinel_after_us, "settle_s": settle_s,
             "cpu_wait_share": wait_share, "switched": switched, "warmup_iters": t.warmup_iters,
             "warmup_s": t.warmup_s, "requests_per_sample": t.requests_per_sample,
             "resources": Sampler.summarize_window(sampler.window(t0, t1))}
    point.record["rounds"].append(entry)
    point.measured_here.append(entry)
    point.frames.append(pd.DataFrame({
        "mode": mode, "round": round_no, "pass": bench_pass, "iter": np.arange(len(t.ms)), "ms": t.ms,
        "wall_ms": t.wall_ms, "t_s": t.t_start - t_origin, "requests": t.requests_per_sample}))
    return entry


def _record_energy(points: list[_Point], modes: list[str], meter, t_origin: float, pass_no: int) -> None:
    """Each point's energy per mode over the rounds this process measured (``lib.measure.energy``: the rounds are
    short, so their windows are pooled), kept in the record under ``energy_by_pass``."""
    for point in points:
        if not point.ok or not point.measured_here:
            continue
        per_mode = {}
        for mode in modes:
            rs = [r for r in point.measured_here if r["mode"] == mode]
            if rs:
                spans = [(t_origin + r["t0"], t_origin + r["t1"]) for r in rs]
                items = sum(r["n"] * r["requests_per_sample"] for r in rs) * point.batch
                per_mode[mode] = meter.windows(spans, items)
        point.record.setdefault("energy_by_pass", {})[str(pass_no)] = per_mode
        point.save()


def _record_phases(engine_json: Path, pass_no: int, phases: dict) -> None:
    """Seconds of this pass's load, characterisation, rounds and kernel profile, beside its ``load_s``."""
    if engine_json.exists():
        rec = read_json(engine_json)
        rec.setdefault("passes", {}).setdefault(str(pass_no), {}).update(phases)
        atomic_write_json(engine_json, rec)


def _point_line(point: _Point, modes: list[str], target: float) -> str:
    parts = []
    for mode in modes:
        rs = point.rounds(mode)
        if not rs:
            continue
        ms = np.concatenate([f.loc[f["mode"] == mode, "ms"].to_numpy() for f in point.frames])
        med = float(np.median(ms))
        lo, hi = round_interval([r["median_ms"] for r in rs], med, groups=[r["pass"] for r in rs])
        rel = (hi - lo) / 2 / med if hi == hi else float("nan")
        half = "" if rel != rel else f" ±{rel:.1%}" if rel < 1 else " ±>100% (noisy)"
        parts.append(f"{ {'device': 'device', 'end_to_end': 'end-to-end', 'throughput': 'pipelined'}[mode]} "
                     f"{med:.4g} ms{half} ({len(rs)} rounds)")
    return "; ".join(parts)


def run_backend(run_dir: Path | str, backend: str, precision: str, bench_pass: int = 0, log=print) -> dict:
    """Measure every point of the run for one backend/precision in rounds (see the module docstring).

    ``bench_pass``: 1 = characterise every point, measure the first half of the minimum rounds, then (GPU)
    the kernel profile; 2 = the remaining rounds, then adaptive ones, and ``done.json``; 0 = all of it in this
    process. Returns the combo's status counts."""
    if bench_pass not in (0, 1, 2):
        raise BenchbookError(f"bench_pass={bench_pass!r} is not valid; expected 0 (both passes), 1 or 2")
    run_dir = Path(run_dir)
    params, plan = load_plan(run_dir)  # what the plan step resolved: nothing is planned again here
    cfg = get_model(params.model, params.models_path)
    device = plan["device"]
    gpu = device == "cuda"
    batches, shapes = planned_points(cfg, plan)
    policy = TimingPolicy(warmup_s=params.warmup, min_iters=params.iters, min_duration_s=params.duration)
    out = combo_dir(run_dir, backend, precision)
    (out / "points").mkdir(parents=True, exist_ok=True)
    label = f"{backend}/{precision}"
    modes = measured_modes(gpu)
    base = {"backend": backend, "precision": precision, "device": device}
    for partial in remove_partial_writes(out):  # a killed writer's temporary files (this run's lock is ours)
        log(f"[{backend}/{precision}] removed {partial.name}, a file a killed process had not finished writing")
    valid_points(out / "points", log)  # a corrupt point file is named, set aside and measured again
    points = _load_points(out, cfg, [(b, s) for s in shapes for b in batches], params.seed, base)
    target, adaptive, own = pass_targets(params.rounds, bench_pass)
    pass_no = bench_pass or 1
    env = run_environment(run_dir / "environment.json")  # collected once per run
    from ..backends import engine_class

    onnx = {}
    if engine_class(backend).needs_onnx:  # exported from load.py, or the model's own model.onnx (+ its FP16)
        onnx = run_onnx(cfg, params, plan, log)
    reference = ReferenceOutputs(run_dir, cfg, params.weights, onnx.get("fp32") or cfg.folder / "model.onnx",
                           cache_dir=Path(params.cache_dir))
    spec = EngineSpec(model=cfg, precision=precision, device=device,
                      artifacts=Artifacts(onnx=onnx, cache_dir=Path(params.cache_dir), weights=params.weights or None,
                                          models_dir=params.models_path),
                      options={**params.engine_options(), "log": log, "min_batch": min(batches)})
    record_flops(run_dir, cfg, shapes, onnx.get("fp32") or cfg.folder / "model.onnx", log=log)  # analysis reads it
    ticks_path = out / "samples.parquet"
    prior_ticks = read_prior_ticks(ticks_path, log)  # another pass, or a resumed one, appends to these
    with Sampler(gpu=gpu) as sampler, EnergyMeter(device) as meter:  # energy: lib/measure/energy.py
        baseline = dict(sampler.baseline)
        t_origin = time.perf_counter()
        t_origin_unix = time.time()  # the same instant on the host's clock: rounds of several processes line up

        def save_ticks():  # after every measurement: a killed backend keeps its timeline up to its last one
            ticks = pd.DataFrame(sampler.ticks())
            if len(ticks):
                ticks["t_s"] = ticks.pop("t") - t_origin
                ticks["pass"] = pass_no
                if prior_ticks is not None:
                    ticks = pd.concat([prior_ticks, ticks])
                _to_parquet(ticks_path, ticks)

        log(f"[{label}] pass {bench_pass or '1+2'}: loading on {device} ...")
        engine = make_engine(backend, spec)
        engine.load()
        load_s = time.perf_counter() - t_origin
        phases = {"load_s": load_s}  # where this pass's wall time went (the terminal's last line; engine.json)
        after_load = sampler.rebaseline()
        sentinel = HostSentinel(gpu)
        # The settle gate's "best so far" starts from this backend's earlier rounds (pass 1, a resumed pass)
        sentinel.seen.extend(r["sentinel_us"] for p in points for r in p.record.get("rounds") or []
                             if r.get("sentinel_us") == r.get("sentinel_us") and r.get("sentinel_us") is not None)
        prev = read_json(out / "engine.json") if (out / "engine.json").exists() else {}
        passes = {**prev.get("passes", {}), str(pass_no): {"load_s": load_s, "t_origin_unix": t_origin_unix}}
        atomic_write_json(out / "engine.json", {
            **prev, "backend": backend, "precision": precision, "device": device, "summary": engine.summary,
            "load_s": prev.get("load_s", load_s), "info": {**prev.get("info", {}), **engine.info},
            "baseline": prev.get("baseline", baseline), "after_load": prev.get("after_load", after_load),
            "timer": engine.timer().name, "reference": reference.source(), "environment": prev.get("environment", env),
            "sentinel": sentinel.kind, "passes": passes, "sampler_gpu_error": sampler.gpu_error,
            "sampler_power_kind": sampler.power_kind,
            "energy": meter.describe()})
        try:
            # A resume of this pass (an earlier process of it was interrupted), not pass 2 finding pass 1's rounds
            per_point = [sum(1 for r in p.record.get("rounds") or [] if r["pass"] == pass_no) for p in points]
            on_disk = sum(per_point)
            if on_disk:
                holding = sum(1 for n in per_point if n)
                log(f"[{label}] resuming pass {pass_no}: {on_disk} rounds of {holding} of {len(points)} points "
                    f"already on disk (kept; only missing rounds are measured)")
            new = [p for p in points if "status" not in p.record]
            if new:
                log(f"[{label}] loaded in {load_s:.1f} s; characterising {len(new)} point(s) "
                    f"(warm-up {policy.warmup_s:g} s, parity, memory)")
            t_phase = time.perf_counter()
            for point in new:
                try:
                    _characterise(engine, point, policy, reference, precision, sampler, gpu, label, log)
                    par = point.record["parity"]
                    if not par["passed"]:
                        log(f"[{label}] batch {point.batch}, shape {point.shape.label}: parity FAILED: {par['problems']}")
                    point.save()
                    save_ticks()
                except Exception as e:  # recorded, and the sweep goes on
                    _fail(point, e, label, log, gpu)
            engine.release_bindings()
            _free_gpu(gpu)
            phases["characterise_s"] = time.perf_counter() - t_phase
            t_phase = time.perf_counter()
            rng = np.random.default_rng(zlib.crc32(f"{params.seed}|{label}|{pass_no}".encode()))
            sentinel.prime()  # the settle gate's first "best so far" (topped up from earlier passes' rounds)
            for r_idx in range(MAX_ROUNDS):
                todo = []
                # On a CPU a round whose sentinel (before or after it) says the host was slow, or during which
                # the model's threads waited for a CPU more than HOST_SLOW of the time (cpu_wait_ms), does not
                # count towards the minimum: another process took cores from the model itself, so the point gets a
                # replacement round (within POINT_CAP) and the slow one is kept with the rest. On a GPU the
                # sentinel follows the host's launch path, which moves launch-bound points only; there every
                # round counts and the analysis marks the slow ones (a lent host is slow for minutes: replacing
                # its rounds would only lengthen the run).
                slow_limit = None if gpu else host_slow_limit(sentinel.seen, params.host_slow)
                for point in points:
                    if not point.ok:
                        continue
                    for mode in modes:
                        have = len(point.rounds(mode))
                        if have >= MAX_ROUNDS:
                            continue
                        clean = have if slow_limit is None else point.clean_rounds(mode, slow_limit, params.host_slow)
                        mine = sum(1 for r in point.rounds(mode) if r["pass"] == pass_no)
                        room = point.timed_s(mode) < params.point_cap
                        if have < target or mine < own:
                            why = "minimum"
                        elif clean < target and room:
                            why = "replacing slow-host rounds"
                        elif adaptive and room and not point.converged(mode, params.ci_target):
                            why = f"points not yet within ±{params.ci_target:.0%}"
                        else:
                            continue
                        todo.append((point, mode, why))
                if not todo:
                    break
                reasons = sorted({why for _, _, why in todo if why != "minimum"})
                note = f" (more rounds: {'; '.join(reasons)})" if reasons and all(w != "minimum" for *_, w in todo) else ""
                todo = [(p, m) for p, m, _ in todo]
                order = rng.permutation(len(todo))
                t_round = time.perf_counter()
                sent, waited = [], 0.0
                for i in order:
                    point, mode = todo[i]
                    if not point.ok:
                        continue
                    for attempt in (1, 2):
                        try:
                            entry = _measure_round(engine, point, mode, policy, sentinel, sampler,
                                                   len(point.rounds(mode)) + 1, pass_no, t_origin, label,
                                                   params.host_slow)
                            sent.append(entry["sentinel_us"])
                            waited += entry["settle_s"]
                            point.save()
                            save_ticks()
                            break
                        except Exception as e:
                            engine.release_bindings()  # kept bindings hold memory: free them before judging
                            if attempt == 1 and is_oom(e):
                                _free_gpu(gpu)
                                log(f"[{label}] batch {point.batch}: out of memory with other points' buffers "
                                    f"kept; retrying with this point alone")
                                continue
                            _fail(point, e, label, log, gpu)
                log(f"[{label}] pass {pass_no} round {r_idx + 1}{note}: "
                    f"{len(todo)} measurements in {time.perf_counter() - t_round:.1f} s; host sentinel "
                    f"{np.median(sent) if sent else float('nan'):.3g} µs"
                    + (f" (waited {waited:.1f} s for a quiet host)" if waited >= 0.05 else ""))
            phases["rounds_s"] = time.perf_counter() - t_phase
            _record_energy(points, modes, meter, t_origin, pass_no)
            for point in points:
                if point.ok and point.record.get("rounds"):
                    log(f"[{label}] batch {point.batch}, shape {point.shape.label}: {_point_line(point, modes, params.ci_target)}")
            if bench_pass != 2:  # in the backend's own process (pass 2 shares one with the other backends)
                if params.data:  # labelled images: top-1/top-5 of this very engine -> accuracy.json (never raises)
                    from ..measure.accuracy import record as record_accuracy

                    engine.release_bindings()  # its largest batch of images needs the memory the points hold
                    _free_gpu(gpu)

                    record_accuracy(engine, cfg, params.data, batch=max(batches), combo_dir=out, log=log)
                if gpu:  # last: CUPTI adds host overhead per launch, so nothing is timed after it in this process
                    t_phase = time.perf_counter()
                    _profile_kernels(engine, points, shapes, out, label, log)  # on the points' kept bindings
                    phases["kernel_profile_s"] = time.perf_counter() - t_phase
            engine.release_bindings()
        finally:
            engine.close()
            save_ticks()
            _record_phases(out / "engine.json", pass_no, phases)
    statuses = [p.record.get("status") for p in points]
    done = {"points": len(points), "ok": statuses.count("ok"), "oom": statuses.count("oom"),
            "error": statuses.count("error")}
    if bench_pass != 1:
        atomic_write_json(out / "done.json", done)
    took = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}" for k, v in phases.items())
    log(f"[{label}] pass {bench_pass or '1+2'} done: {done['ok']} of {done['points']} points measured"
        + (f", {done['oom']} out of memory" if done["oom"] else "") + (f", {done['error']} failed" if done["error"] else "")
        + f" (seconds: {took})")
    return done
