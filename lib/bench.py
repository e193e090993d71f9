"""Benchmark one backend at one precision over the run's points (batch size x shape).

Called by the benchmark notebook, one kernel per backend/precision (a crash takes down only that
kernel). Each point is written to disk atomically as soon as it is measured, so an interrupted
run keeps what it measured and a rerun of the same run resumes after it. A point that fails (out
of memory, an engine error) is recorded with its reason and the sweep goes on.

Files, under ``<run_dir>/bench/<backend>-<precision>/``:
``engine.json`` (load/build info, environment), ``points/<point>.json`` (status, timing metadata,
memory, utilisation, parity), ``points/<point>.parquet`` (every timed sample), ``samples.parquet``
(every sampler tick), on a GPU ``kernels.json`` (where the GPU time of a request goes, see
``lib.kernels``) and ``done.json`` when the sweep finished.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_bytes, atomic_write_json, read_json
from .energy import EnergyMeter
from .engines import Artifacts, EngineSpec, make_engine
from .environment import collect_environment
from .export import ensure_onnx
from .inputs import make_inputs
from .model_config import ModelConfig, Shape
from .models import build_model, get_model
from .parity import compare_outputs
from .plan import load_plan, resolve_points
from .sampler import Sampler
from .stats import summarize
from .timing import TimingPolicy, measure_latency, measure_throughput

__all__ = ["run_backend", "combo_dir", "point_key", "is_oom"]

_OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "cublas_status_alloc_failed",
                "outofmemory", "bad_alloc", "can't allocate memory", "cannot allocate memory", "unable to allocate",
                "is smaller than requested bytes")


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


class _Reference:
    """PyTorch FP32 outputs on CPU for a point's seeded inputs, computed once per run and cached in
    ``<run_dir>/reference``. Models without ``load.py`` use ONNX Runtime's CPU EP on the FP32 ONNX."""

    def __init__(self, run_dir: Path, cfg: ModelConfig, weights: str | None, onnx_fp32: Path | None):
        self.dir = Path(run_dir) / "reference"
        self.cfg, self.weights, self.onnx = cfg, weights, onnx_fp32
        self._model = None

    def source(self) -> str:
        return "PyTorch FP32 (CPU)" if (self.cfg.folder / "load.py").exists() else "ONNX Runtime FP32 (CPU EP)"

    def get(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        path = self.dir / f"{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        outs = self._compute(inputs)
        import io

        buf = io.BytesIO()
        np.savez(buf, **outs)
        atomic_write_bytes(path, buf.getvalue())
        return outs

    def _compute(self, inputs):
        if (self.cfg.folder / "load.py").exists():
            import torch

            from .engines.torch_engine import as_output_list

            if self._model is None:
                self._model = build_model(self.cfg, self.weights or None).float()
            with torch.inference_mode():
                outs = as_output_list(self._model(*[torch.from_numpy(inputs[s.name]) for s in self.cfg.inputs]))
            return {o.name: t.float().numpy() for o, t in zip(self.cfg.outputs, outs)}
        import onnxruntime as ort

        sess = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, inputs)))


def _nvml_process_mib() -> float:
    """This process's GPU memory now, from NVML's compute-process list (NaN where hidden)."""
    try:
        import os

        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return sum(used) / (1 << 20) if used else float("nan")
    except Exception:
        return float("nan")


def _measure_point(engine, inputs, policy: TimingPolicy, sampler: Sampler, tag: str, gpu: bool):
    """Device-resident latency, end-to-end latency and (GPU) pipelined throughput of one point."""
    engine.bind(inputs)
    timer = engine.timer()
    runs = {}
    sampler.mark(f"{tag} device")
    runs["device"] = measure_latency(engine.run_bound, timer, policy, "device")
    sampler.mark(f"{tag} end_to_end")
    runs["end_to_end"] = measure_latency(lambda: engine.infer(inputs), timer, policy, "end_to_end")
    if gpu:
        sampler.mark(f"{tag} throughput")
        est = float(np.median(runs["device"].ms))
        runs["throughput"] = measure_throughput(engine.run_bound, timer, policy, est)
    sampler.mark("")
    return runs


def _profile_kernels(engine, cfg: ModelConfig, shapes: list[Shape], seed: int, out: Path, label: str, log) -> None:
    """``kernels.json``: a CUPTI profile of the smallest and the largest measured batch of each shape
    (the launch-bound and the kernel-bound ends of the sweep), beside their timed device medians.
    A profile that fails is recorded with its reason; it never fails the sweep."""
    from .kernels import profile_requests

    ok = [r for r in (read_json(p) for p in sorted((out / "points").glob("*.json"))) if r.get("status") == "ok"]
    entries = []
    for shape in shapes:
        recs = sorted((r for r in ok if r["shape"] == shape.label), key=lambda r: r["batch"])
        for rec in {id(r): r for r in recs[:1] + recs[-1:]}.values():
            entry = {"batch": rec["batch"], "shape": rec["shape"],
                     "device_median_ms": rec.get("modes", {}).get("device", {}).get("median_ms")}
            try:
                engine.bind(make_inputs(cfg, rec["batch"], shape, seed))
                prof = profile_requests(engine.run_bound)
                entry.update(prof.to_dict())
                top = prof.kernels[0] if prof.kernels else {"short": "-", "ms": 0.0}
                log(f"[{label}] kernels at batch {rec['batch']}, shape {shape.label}: GPU busy {prof.busy_ms:.3f} ms "
                    f"per request over {prof.launches:.0f} launches; slowest: {top['short']} {top['ms']:.3f} ms")
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"[:1000]
                log(f"[{label}] kernel profile at batch {rec['batch']} not taken: {entry['error'][:300]}")
                if is_oom(e):
                    import torch

                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            entries.append(entry)
    atomic_write_json(out / "kernels.json", {"points": entries})


def run_backend(run_dir: Path | str, backend: str, precision: str, log=print) -> dict:
    """Measure every point of the run for one backend/precision; returns the combo's status."""
    run_dir = Path(run_dir)
    params, plan = load_plan(run_dir)
    cfg = get_model(params.model, params.models_path)
    device = plan["device"]
    gpu = device == "cuda"
    batches, shapes = resolve_points(cfg, params, device)
    policy = TimingPolicy(warmup_s=params.warmup, min_iters=params.iters, min_duration_s=params.duration)
    out = combo_dir(run_dir, backend, precision)
    (out / "points").mkdir(parents=True, exist_ok=True)
    label = f"{backend}/{precision}"
    points = [(b, s) for s in shapes for b in batches]
    todo = [(b, s) for b, s in points if not (out / "points" / f"{point_key(b, s)}.json").exists()]
    if len(todo) < len(points):
        log(f"[{label}] resuming: {len(points) - len(todo)} of {len(points)} points already on disk")
    env = collect_environment()
    from .engines import engine_class

    onnx = {}
    if engine_class(backend).needs_onnx:  # exported from load.py, or the model's own model.onnx (+ its FP16)
        onnx = {p: r.path for p, r in ensure_onnx(cfg, Path(params.cache_dir) / "onnx",
                                                  precisions=plan["onnx_precisions"], weights=params.weights or None,
                                                  log=log).items()}
    reference = _Reference(run_dir, cfg, params.weights, onnx.get("fp32") or cfg.folder / "model.onnx")
    spec = EngineSpec(model=cfg, precision=precision, device=device,
                      artifacts=Artifacts(onnx=onnx, cache_dir=Path(params.cache_dir), weights=params.weights or None,
                                          models_dir=params.models_path),
                      options={**params.engine_options(), "log": log})
    with Sampler(gpu=gpu) as sampler, EnergyMeter(device) as meter:  # energy: lib/energy.py
        baseline = dict(sampler.baseline)
        t0 = time.perf_counter()
        log(f"[{label}] loading on {device} ...")
        engine = make_engine(backend, spec)
        engine.load()
        load_s = time.perf_counter() - t0
        after_load = sampler.rebaseline()
        log(f"[{label}] loaded in {load_s:.1f} s; {len(todo)} points to measure")
        atomic_write_json(out / "engine.json", {
            "backend": backend, "precision": precision, "device": device, "summary": engine.summary,
            "load_s": load_s, "info": engine.info, "baseline": baseline, "after_load": after_load,
            "timer": engine.timer().name, "reference": reference.source(), "environment": env,
            "energy": meter.describe()})
        try:
            for i, (batch, shape) in enumerate(todo, 1):
                key = point_key(batch, shape)
                tag = f"{label} bs={batch} shape={shape.label}"
                log(f"[{label}] point {i}/{len(todo)}: batch {batch}, shape {shape.label} ...")
                record = {"backend": backend, "precision": precision, "device": device, "batch": batch,
                          "shape": shape.label, "point": key}
                try:
                    inputs = make_inputs(cfg, batch, shape, params.seed)
                    engine.reset_memory_stats()
                    runs = _measure_point(engine, inputs, policy, sampler, tag, gpu)
                    parity = compare_outputs(engine.infer(inputs), reference.get(key, inputs), precision,
                                             cfg.top_k_output)
                    record.update(status="ok", parity=parity, memory=engine.memory_stats(),
                                  nvml_process_mib=_nvml_process_mib() if gpu else None,
                                  compile_s=engine.info.get("compile_s"),
                                  modes={m: {"timer": r.timer, "n": len(r.ms), "warmup_iters": r.warmup_iters,
                                             "warmup_s": r.warmup_s, "requests_per_sample": r.requests_per_sample,
                                             "window": r.window, "median_ms": float(np.median(r.ms)),
                                             "resources": Sampler.summarize_window(sampler.window(*r.window)),
                                             "energy": meter.window(*r.window, len(r.ms) * r.requests_per_sample * batch)}
                                         for m, r in runs.items()})
                    rows = pd.concat([pd.DataFrame({
                        "mode": m, "iter": np.arange(len(r.ms)), "ms": r.ms, "wall_ms": r.wall_ms,
                        "t_s": r.t_start - t0, "requests": r.requests_per_sample}) for m, r in runs.items()])
                    _to_parquet(out / "points" / f"{key}.parquet", rows)
                    s = summarize(runs["device"].ms)
                    log(f"[{label}] point {i}/{len(todo)}: batch {batch}: device median {s['median_ms']:.3f} ms, "
                        f"end-to-end {np.median(runs['end_to_end'].ms):.3f} ms, parity "
                        f"{'ok' if parity['passed'] else 'FAILED: ' + parity['problems']}")
                except Exception as e:  # recorded, and the sweep goes on
                    oom = is_oom(e)
                    record.update(status="oom" if oom else "error", error=f"{type(e).__name__}: {e}"[:2000],
                                  traceback="".join(traceback.format_exception(e))[-4000:])
                    log(f"[{label}] point {i}/{len(todo)}: batch {batch}: {'OUT OF MEMORY' if oom else 'FAILED'}: "
                        f"{type(e).__name__}: {str(e)[:300]}")
                    if gpu:
                        import torch

                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                atomic_write_json(out / "points" / f"{key}.json", record)
            if params.data:  # labelled images: top-1/top-5 of this very engine -> accuracy.json (never raises)
                from .accuracy import record as record_accuracy

                record_accuracy(engine, cfg, params.data, batch=max(batches), combo_dir=out, log=log)
            if gpu:  # last: CUPTI adds host overhead per launch, so nothing is timed after it
                _profile_kernels(engine, cfg, shapes, params.seed, out, label, log)
        finally:
            engine.close()
            ticks = pd.DataFrame(sampler.ticks())
            if len(ticks):
                ticks["t_s"] = ticks.pop("t") - t0
                prev = out / "samples.parquet"
                if prev.exists():  # a resumed sweep appends to the ticks of the interrupted one
                    ticks = pd.concat([pd.read_parquet(prev), ticks.assign(resumed=True)])
                _to_parquet(prev, ticks)
    statuses = [read_json(p).get("status") for p in sorted((out / "points").glob("*.json"))]
    done = {"points": len(points), "ok": statuses.count("ok"), "oom": statuses.count("oom"),
            "error": statuses.count("error")}
    atomic_write_json(out / "done.json", done)
    log(f"[{label}] done: {done}")
    return done
