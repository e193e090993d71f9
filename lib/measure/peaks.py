"""Peak compute of the device a run measured, for "share of peak" figures.

Known GPUs come from a table of datasheet figures, matched by the NVML name recorded in the run's
environment. Every figure is a *dense* peak in TFLOP/s (vendors print tensor-core peaks "with
sparsity", twice the dense figure; those are halved here) at the boost clock, so a sustained rate
under power or thermal limits sits below it. ``fp32`` is the CUDA-core (non tensor-core) FP32 rate,
``tf32``/``fp16``/``bf16`` are tensor-core rates with FP32 accumulation where the datasheet
distinguishes. A GPU without a TF32 or BF16 path has no entry for it.

A device not in the table (and every CPU) gets a *measured* peak: the best rate of a timed large
matrix multiply with torch on that device, measured once and cached in the run folder
(``peaks.json``), and labelled "measured" wherever it is shown. It is only measured where the
analysis runs on the machine that ran the benchmark (same host name and CPU / GPU model); a run
copied from elsewhere without a cached figure gets NaN and a note.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..common.cache import atomic_write_json, read_json
from ..config.dtypes import PRECISION_FLOATS, torch_dtype

__all__ = ["GPU_PEAKS", "GpuPeak", "match_gpu", "peak_key", "measure_matmul_peak", "ensure_peaks", "Peak"]

NAN = float("nan")


@dataclass(frozen=True)
class GpuPeak:
    pattern: str     # regex on the lower-cased NVML name
    label: str
    tflops: dict     # precision key -> dense TFLOP/s
    source: str


# Datasheet figures (dense; "*" figures in datasheets are with 2:4 sparsity and are halved here).
# Most specific patterns first: the first match wins.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    # NVIDIA H200 datasheet (H200 NVL column): FP32 60, TF32 TC 835*, BF16 TC 1,671*, FP16 TC 1,671* TFLOPS.
    GpuPeak(r"\bh200\b.*\bnvl\b", "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
            "NVIDIA H200 datasheet, H200 NVL"),
    # NVIDIA H200 datasheet (H200 SXM column): FP32 67, TF32 TC 989*, BF16 TC 1,979*, FP16 TC 1,979* TFLOPS.
    GpuPeak(r"\bh200\b", "H200 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
            "NVIDIA H200 datasheet, H200 SXM"),
    # NVIDIA GH200 datasheet: the Hopper GPU of GH200 has the H100 SXM figures (FP32 67, TF32 989*, BF16 1,979*).
    GpuPeak(r"\bgh200\b", "GH200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
            "NVIDIA GH200 Grace Hopper Superchip datasheet"),
    # NVIDIA H100 datasheet (H100 NVL column): FP32 60, TF32 TC 835*, BF16 TC 1,671*, FP16 TC 1,671* TFLOPS.
    GpuPeak(r"\bh100\b.*\bnvl\b", "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
            "NVIDIA H100 datasheet, H100 NVL"),
    # NVIDIA H100 datasheet (H100 PCIe column): FP32 51, TF32 TC 756*, BF16 TC 1,513*, FP16 TC 1,513* TFLOPS.
    GpuPeak(r"\bh100\b.*\bpcie\b", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
            "NVIDIA H100 datasheet, H100 PCIe"),
    # NVIDIA H100 datasheet (H100 SXM column): FP32 67, TF32 TC 989*, BF16 TC 1,979*, FP16 TC 1,979* TFLOPS.
    # NVML names it e.g. "NVIDIA H100 80GB HBM3".
    GpuPeak(r"\bh100\b", "H100 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
            "NVIDIA H100 datasheet, H100 SXM"),
    # NVIDIA A100 datasheet (SXM and PCIe alike): FP32 19.5, TF32 TC 156, BF16 TC 312, FP16 TC 312 TFLOPS (dense).
    GpuPeak(r"\ba100\b", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
            "NVIDIA A100 datasheet"),
    # NVIDIA L40S datasheet: FP32 91.6, TF32 TC 183, BF16 TC 362.05, FP16 TC 362.05 TFLOPS (dense).
    GpuPeak(r"\bl40s\b", "L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05},
            "NVIDIA L40S datasheet"),
    # NVIDIA L40 datasheet: FP32 90.5, TF32 TC 90.5, BF16 TC 181.05, FP16 TC 181.05 TFLOPS (dense).
    GpuPeak(r"\bl40\b", "L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05},
            "NVIDIA L40 datasheet"),
    # NVIDIA L4 datasheet: FP32 30.3, TF32 TC 120*, BF16 TC 242*, FP16 TC 242* TFLOPS.
    GpuPeak(r"\bl4\b", "L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
            "NVIDIA L4 datasheet"),
    # NVIDIA A10 datasheet: FP32 31.2, TF32 TC 62.5, BF16 TC 125, FP16 TC 125 TFLOPS (dense). Not A10G, not A100.
    GpuPeak(r"\ba10\b", "A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
            "NVIDIA A10 datasheet"),
    # NVIDIA A30 datasheet: FP32 10.3, TF32 TC 82, BF16 TC 165, FP16 TC 165 TFLOPS (dense).
    GpuPeak(r"\ba30\b", "A30", {"fp32": 10.3, "tf32": 82.0, "bf16": 165.0, "fp16": 165.0},
            "NVIDIA A30 datasheet"),
    # NVIDIA A40 datasheet: FP32 37.4, TF32 TC 74.8, BF16 TC 149.7, FP16 TC 149.7 TFLOPS (dense).
    GpuPeak(r"\ba40\b", "A40", {"fp32": 37.4, "tf32": 74.8, "bf16": 149.7, "fp16": 149.7},
            "NVIDIA A40 datasheet"),
    # NVIDIA T4 datasheet: FP32 8.1, mixed-precision (FP16/FP32) tensor 65 TFLOPS; Turing has no TF32 or BF16.
    GpuPeak(r"\bt4\b", "T4", {"fp32": 8.1, "fp16": 65.0}, "NVIDIA T4 datasheet"),
    # NVIDIA V100 datasheet (PCIe column): FP32 14, tensor (FP16) 112 TFLOPS; Volta has no TF32 or BF16.
    GpuPeak(r"\bv100\b.*\bpcie\b", "V100 PCIe", {"fp32": 14.0, "fp16": 112.0}, "NVIDIA V100 datasheet, PCIe"),
    # NVIDIA V100 datasheet (SXM2 column): FP32 15.7, tensor (FP16) 125 TFLOPS.
    GpuPeak(r"\bv100\b", "V100 SXM2", {"fp32": 15.7, "fp16": 125.0}, "NVIDIA V100 datasheet, SXM2"),
    # NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090: FP32 82.6; tensor with FP32 accumulate:
    # FP16 165.2, BF16 165.2, TF32 82.6 TFLOPS (dense).
    GpuPeak(r"\brtx 4090\b", "GeForce RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
            "NVIDIA Ada GPU architecture whitepaper, RTX 4090"),
    # NVIDIA Ampere GA102 GPU architecture whitepaper, GeForce RTX 3090: FP32 35.6; tensor with FP32
    # accumulate: FP16 71, BF16 71, TF32 35.6 TFLOPS (dense). (The 3090 Ti is faster and not matched.)
    GpuPeak(r"\brtx 3090\b(?! ti)", "GeForce RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0},
            "NVIDIA Ampere GA102 GPU architecture whitepaper, RTX 3090"),
)


def match_gpu(name: str | None) -> GpuPeak | None:
    """The table entry for an NVML GPU name (e.g. 'NVIDIA H100 80GB HBM3'), or None when unknown."""
    if not name:
        return None
    low = re.sub(r"[\s_-]+", " ", name.lower())
    for entry in GPU_PEAKS:
        if re.search(entry.pattern, low):
            return entry
    return None


def peak_key(precision: str, device: str, tf32: bool) -> str:
    """Which peak a precision is measured against: FP32 with TF32 enabled on a GPU uses the TF32 peak."""
    if precision == "fp32" and device == "cuda" and tf32:
        return "tf32"
    return precision


@dataclass(frozen=True)
class Peak:
    tflops: float
    label: str    # e.g. "H100 SXM TF32 tensor (datasheet, dense)" or "measured: ..."
    source: str   # "datasheet" or "measured" or "none"

    def to_dict(self) -> dict:
        return {"tflops": self.tflops, "label": self.label, "source": self.source}


def measure_matmul_peak(device: str = "cpu", key: str = "fp32", n: int | None = None, min_s: float = 2.0) -> dict:
    """Best rate of an n x n matrix multiply (2 n^3 FLOP each) with torch on ``device``, in TFLOP/s.

    ``key`` is fp32, tf32 (float32 with TF32 allowed), fp16 or bf16. Repeats for at least ``min_s``
    seconds and keeps the fastest repetition (the least disturbed by other work on the machine)."""
    import torch

    dtype = torch_dtype(PRECISION_FLOATS[key])
    n = n or (8192 if device == "cuda" else 2048)
    prev = torch.backends.cuda.matmul.allow_tf32
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = key == "tf32"
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        torch.matmul(a, b)  # warm-up
        sync()
        best, reps, t_end = float("inf"), 0, time.perf_counter() + min_s
        while reps < 5 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.matmul(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
            reps += 1
            if reps >= 200:
                break
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return {"tflops": 2 * n ** 3 / best / 1e12, "n": n, "reps": reps, "threads": torch.get_num_threads(),
            "dtype": str(dtype).replace("torch.", ""), "device": device}


def _this_machine_matches(env: dict, device: str) -> tuple[bool, str]:
    from .environment import cpu_model

    if env.get("hostname") and env["hostname"] != socket.gethostname():
        return False, f"the run was measured on host {env['hostname']!r}, not this one ({socket.gethostname()!r})"
    if device == "cpu":
        if env.get("cpu") and env["cpu"] != cpu_model():
            return False, f"the run's CPU ({env['cpu']}) is not this machine's ({cpu_model()})"
        return True, ""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU visible to this analysis"
        here = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001
        return False, f"cannot query the GPU here ({type(e).__name__})"
    want = (env.get("gpu") or {}).get("name") or ""
    if want and want.lower().replace("nvidia ", "") not in here.lower():
        return False, f"the run's GPU ({want}) is not this machine's ({here})"
    return True, ""


def ensure_peaks(run, keys: list[str] | None = None, cache_name: str = "peaks.json", log=None) -> dict[str, Peak]:
    """Peak TFLOP/s per precision key for ``run``'s device: datasheet for known GPUs, else measured
    (cached in ``<run>/peaks.json``). ``keys`` default to what the run's points need."""
    device = run.plan.get("device", "cpu")
    tf32 = bool(run.params.get("tf32", True))
    if keys is None:
        precs = sorted(set(run.points["precision"])) if not run.points.empty else []
        keys = sorted({peak_key(p, device, tf32) for p in precs})
    env = run.environment
    gpu_name = (env.get("gpu") or {}).get("name")
    out: dict[str, Peak] = {}
    known = match_gpu(gpu_name) if device == "cuda" else None
    cache_path = Path(run.path) / cache_name
    cache = read_json(cache_path) if cache_path.exists() else {}
    changed = False
    for key in keys:
        if known is not None:
            k = key if key in known.tflops else ("fp32" if key == "tf32" else None)
            if k is not None:
                what = {"tf32": "TF32 tensor", "fp16": "FP16 tensor", "bf16": "BF16 tensor", "fp32": "FP32 (CUDA cores)"}[k]
                note = " (no TF32 on this GPU)" if key == "tf32" and k == "fp32" else ""
                out[key] = Peak(known.tflops[k], f"{known.label} {what}, datasheet, dense{note}", "datasheet")
                continue
            if key in ("bf16", "tf32") and key not in known.tflops:
                out[key] = Peak(NAN, f"{known.label} has no {key.upper()} tensor path", "none")
                continue
        ck = f"{device}:{key}"
        if ck in cache:
            c = cache[ck]
            out[key] = Peak(c["tflops"], c["label"], "measured")
            continue
        ok, why = _this_machine_matches(env, device)
        if not ok:
            out[key] = Peak(NAN, f"no peak: {why}, and no measured peak is cached in {cache_name}", "none")
            continue
        try:
            m = measure_matmul_peak(device, key)
        except Exception as e:  # noqa: BLE001 - an unsupported dtype on this device
            out[key] = Peak(NAN, f"no peak: measuring {key} failed ({type(e).__name__}: {str(e)[:120]})", "none")
            continue
        where = gpu_name if device == "cuda" else f"{env.get('cpu') or 'CPU'}, {m['threads']} threads"
        label = (f"measured: best torch.matmul {m['n']}×{m['n']} {m['dtype']}"
                 f"{' (TF32 allowed)' if key == 'tf32' else ''} on {where}")
        cache[ck] = {**m, "label": label, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        changed = True
        out[key] = Peak(m["tflops"], label, "measured")
        if log:
            log(f"[peaks] {label}: {m['tflops']:.3f} TFLOP/s")
    if changed:
        atomic_write_json(cache_path, cache)
    return out
