"""Background resource sampling: process RSS and CPU% (psutil), GPU utilisation, memory, clocks,
temperature, power and throttle reasons (NVML), at about 10 Hz in a daemon thread.

Every tick is kept (a row per tick, with ``perf_counter`` time ``t`` so it lines up with the
timing module's samples). Figures for a measurement are taken over its *steady window*: the
timed window minus its first ``STEADY_SKIP_S`` seconds, because NVML's utilisation is an average
over the previous 1/6..1 s and the first ticks still see the idle time before the window.

Memory: ``gpu_proc_mib`` is this process's own use from NVML's compute-process list (0 where the
driver hides it, e.g. in some containers: then ``gpu_used_mib`` minus the idle baseline stands
in, said so in the report); ``gpu_used_mib`` is device-wide. Baselines (before the engine loads)
are recorded so the report can subtract and show them.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

__all__ = ["Sampler", "STEADY_SKIP_S", "merge_summaries"]

STEADY_SKIP_S = 0.25
MIB = 1 << 20


class _Nvml:
    """NVML reads for one device; every call tolerates what the driver does not support."""

    def __init__(self, cuda_index: int | None = None):
        import pynvml

        from ..common.gpu import nvml_handle, power_reader

        self.h = nvml_handle(cuda_index)  # the engines' GPU, by UUID (NVML's index 0 may be another card)
        self.nv = pynvml
        self.pid = os.getpid()
        try:  # instantaneous power where the driver has it (the plain reading is a 1 s average on recent GPUs)
            self._power, self.power_kind = power_reader(self.h)
        except Exception:  # noqa: BLE001 - no power reading: the column stays NaN
            self._power, self.power_kind = None, "not read"

    def _try(self, fn, *args):
        try:
            return fn(self.h, *args)
        except Exception:
            return None

    def read(self) -> dict:
        nv = self.nv
        row = {}
        util = self._try(nv.nvmlDeviceGetUtilizationRates)
        row["gpu_util"] = util.gpu if util else np.nan
        row["gpu_mem_util"] = util.memory if util else np.nan
        mem = self._try(nv.nvmlDeviceGetMemoryInfo)
        row["gpu_used_mib"] = mem.used / MIB if mem else np.nan
        procs = self._try(nv.nvmlDeviceGetComputeRunningProcesses) or []
        own = [p.usedGpuMemory for p in procs if p.pid == self.pid and p.usedGpuMemory is not None]
        row["gpu_proc_mib"] = sum(own) / MIB if own else np.nan
        row["sm_clock_mhz"] = self._try(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM) or np.nan
        row["mem_clock_mhz"] = self._try(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM) or np.nan
        row["temp_c"] = self._try(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU) or np.nan
        try:
            row["power_w"] = self._power() if self._power else np.nan
        except Exception:  # noqa: BLE001 - a tick the driver did not answer
            row["power_w"] = np.nan
        reasons = self._try(nv.nvmlDeviceGetCurrentClocksEventReasons) if hasattr(
            nv, "nvmlDeviceGetCurrentClocksEventReasons") else self._try(nv.nvmlDeviceGetCurrentClocksThrottleReasons)
        row["throttle_reasons"] = int(reasons) if reasons is not None else -1
        return row


# NVML clock-event reason bits -> names (idle and applications-clocks settings are not throttling).
THROTTLE_BITS = {0x1: "gpu_idle", 0x2: "app_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal",
                 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clocks"}


def throttle_names(mask: int) -> list[str]:
    if mask is None or mask < 0:
        return []
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit]


class Sampler:
    """``with Sampler(gpu=True) as s: ...``; ``s.ticks()`` -> list of dict rows; ``s.mark(label)``."""

    def __init__(self, interval_s: float = 0.1, gpu: bool = False):
        import psutil

        self.interval_s = interval_s
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # first call primes the counter
        self.nvml = None
        self.gpu_error = None
        if gpu:
            try:
                self.nvml = _Nvml()
            except Exception as e:  # no driver: sampled as CPU only, and the report says why
                self.gpu_error = f"{type(e).__name__}: {e}"
        # what power_w reads: "instant", "1 s average" (NVML's plain reading on recent GPUs) or "not read"
        self.power_kind = self.nvml.power_kind if self.nvml else None
        self._rows: list[dict] = []
        self._label = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="benchbook-sampler", daemon=True)
        self.baseline = self._read()

    def _read(self) -> dict:
        mem = self.proc.memory_info()
        row = {"t": time.perf_counter(), "label": self._label, "rss_mib": mem.rss / MIB,
               "cpu_percent": self.proc.cpu_percent(None)}
        if self.nvml:
            row.update(self.nvml.read())
        return row

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._rows.append(self._read())

    def mark(self, label: str) -> None:
        """Label the ticks that follow (the point and mode being measured)."""
        self._label = label

    def rebaseline(self) -> dict:
        self.baseline = self._read()
        return self.baseline

    def ticks(self) -> list[dict]:
        return list(self._rows)

    def window(self, t0: float, t1: float) -> list[dict]:
        """Ticks inside the steady part of [t0, t1]."""
        start = min(t0 + STEADY_SKIP_S, t0 + (t1 - t0) / 2)
        return [r for r in self._rows if start <= r["t"] <= t1]

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @staticmethod
    def summarize_window(rows: list[dict]) -> dict:
        """Means over the steady window (peaks for memory); NaN when no tick fell inside it."""
        out = {"ticks": len(rows)}
        if not rows:
            return out
        def col(k):
            return np.array([r.get(k, np.nan) for r in rows], dtype=float)
        for k in ("cpu_percent", "gpu_util", "gpu_mem_util", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "power_w"):
            if any(k in r for r in rows):
                v = col(k)
                out[f"{k}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        for k in ("rss_mib", "gpu_used_mib", "gpu_proc_mib"):
            if any(k in r for r in rows):
                v = col(k)
                out[f"{k}_peak"] = float(np.nanmax(v)) if np.isfinite(v).any() else np.nan
        masks = [r.get("throttle_reasons", -1) for r in rows]
        seen = sorted({n for m in masks for n in throttle_names(m)} - {"gpu_idle", "app_clocks"})
        out["throttle"] = ",".join(seen)
        return out


def merge_summaries(parts: list[dict]) -> dict:
    """One summary from several windows' ``Sampler.summarize_window`` (a point's rounds): means weighted
    by each window's ticks, peaks as the largest, throttle reasons as their union."""
    parts = [p for p in parts if p and p.get("ticks")]
    out = {"ticks": int(sum(p["ticks"] for p in parts))}
    if not parts:
        return out
    keys = dict.fromkeys(k for p in parts for k in p if k not in ("ticks", "throttle"))
    for k in keys:
        vals = np.array([p.get(k, np.nan) for p in parts], dtype=float)
        w = np.array([p["ticks"] for p in parts], dtype=float)
        ok = np.isfinite(vals)
        if not ok.any():
            out[k] = np.nan
        elif k.endswith("_peak"):
            out[k] = float(vals[ok].max())
        else:
            out[k] = float(np.average(vals[ok], weights=w[ok]))
    out["throttle"] = ",".join(sorted({n for p in parts for n in str(p.get("throttle", "")).split(",") if n}))
    return out
