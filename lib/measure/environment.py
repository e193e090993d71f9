"""What machine and software a run measured: CPU, memory, OS, library versions, GPU, driver,
CUDA, clocks and power limits where NVML gives them. Everything is best effort: a field that
cannot be read is ``None``, never a guess."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["collect_environment", "run_environment", "cpu_model", "register_libraries", "LIBRARIES"]

# Distributions recorded on every run that no backend declares (models, export, analysis, sampling). Each
# backend declares its own (lib.backends.base.Library); lib.backends hands them over with
# register_libraries when it is imported, since this earlier stage cannot import it.
LIBRARIES = ("torchvision", "onnx", "onnxscript", "onnxconverter-common", "transformers", "numpy", "pandas",
             "papermill", "nbconvert", "psutil", "nvidia-ml-py")
# module -> its distributions, where the module's own __version__ is checked too (see _versions_that_run)
_MODULES: dict[str, tuple[str, ...]] = {"onnx": ("onnx",)}
_BACKEND_MODULES: dict[str, tuple[str, ...]] = {}


def register_libraries(modules: dict[str, tuple[str, ...]]) -> None:
    """Record these {import name: distributions} too (the backends' declarations, in report order)."""
    for module, dists in modules.items():
        _BACKEND_MODULES.setdefault(module, tuple(dists))


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _gpu() -> dict | None:
    """The GPU the engines use (torch's current CUDA device, matched to NVML by UUID); None without one."""
    try:
        import pynvml

        from ..common.gpu import cuda_uuid, nvml_handle

        h = nvml_handle()
        uuid = cuda_uuid()
    except Exception:
        return None
    nv = pynvml

    def get(fn, *args):
        try:
            v = fn(*args)
            return v.decode() if isinstance(v, bytes) else v
        except Exception:
            return None

    mem = get(nv.nvmlDeviceGetMemoryInfo, h)
    cc = get(nv.nvmlDeviceGetCudaComputeCapability, h)
    cuda_drv = get(nv.nvmlSystemGetCudaDriverVersion_v2) or get(nv.nvmlSystemGetCudaDriverVersion)
    power_limit = get(nv.nvmlDeviceGetPowerManagementLimit, h)
    return {
        "name": get(nv.nvmlDeviceGetName, h),
        "uuid": uuid,
        "nvml_index": get(nv.nvmlDeviceGetIndex, h),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "count": get(nv.nvmlDeviceGetCount),
        "driver": get(nv.nvmlSystemGetDriverVersion),
        "cuda_driver": f"{cuda_drv // 1000}.{cuda_drv % 1000 // 10}" if cuda_drv else None,
        "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
        "memory_total_mib": mem.total // (1 << 20) if mem else None,
        "sm_clock_max_mhz": get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
        "mem_clock_max_mhz": get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
        "sm_clock_app_mhz": get(nv.nvmlDeviceGetApplicationsClock, h, nv.NVML_CLOCK_SM),
        "sm_clock_idle_mhz": get(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
        "power_limit_w": power_limit / 1000 if power_limit else None,
        "persistence_mode": get(nv.nvmlDeviceGetPersistenceMode, h),
        "other_processes": len(get(nv.nvmlDeviceGetComputeRunningProcesses, h) or []),
    }


def _torch() -> dict:
    try:
        import torch
    except ImportError:
        return {}
    info = {"torch_cuda": torch.version.cuda, "cudnn": None, "torch_threads": torch.get_num_threads()}
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    return info


def _versions_that_run(versions: dict) -> None:
    """A module's own __version__ is what runs; metadata can disagree when a package was unpacked beside
    another install (e.g. onnxruntime-gpu over a CPU onnxruntime)."""
    import importlib
    import importlib.util

    for module, dists in {**_BACKEND_MODULES, **_MODULES}.items():
        if module not in sys.modules and importlib.util.find_spec(module) is None:
            continue
        try:
            running = getattr(importlib.import_module(module), "__version__", None)
        except Exception:  # a broken optional install: leave the metadata as it is
            continue
        if not running:
            continue
        installed = {d: versions[d] for d in dists if d in versions}
        key = next((d for d in dists if d in installed), dists[0])
        if installed.get(key) == running.split("+")[0]:
            versions[key] = running  # the same release; keep the local tag (+cu130) that says which build
        elif installed.get(key) != running:
            note = ", ".join(f"{d} {v}" for d, v in installed.items())
            versions[key] = f"{running} (imported{'; metadata: ' + note if note else ''})"


def collect_environment() -> dict:
    """A flat-ish dict for ``environment.json`` and the report's environment table."""
    import psutil

    versions = {}
    for lib in [d for dists in _BACKEND_MODULES.values() for d in dists] + list(LIBRARIES):
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    _versions_that_run(versions)
    return {
        "collected_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "libraries": versions,
        **_torch(),
        "gpu": _gpu(),
    }


def run_environment(path: Path | str) -> dict:
    """The run's environment, collected by its first benchmark process and kept in ``path``
    (``<run_dir>/environment.json``); every later process of the run reads it. Collecting imports every
    backend's library to ask what version runs (seconds per process on a GPU host), and the processes of
    one run share the interpreter, the libraries and the machine. A file that cannot be read is collected
    again."""
    from ..common.cache import atomic_write_json, read_json

    path = Path(path)
    if path.exists():
        try:
            env = read_json(path)
            if isinstance(env, dict) and env.get("libraries") is not None:
                return env
        except (OSError, ValueError):
            pass
    env = collect_environment()
    atomic_write_json(path, env)
    return env
