"""The NVML handle of the GPU that the engines use, found by UUID.

NVML numbers every GPU of the machine in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA numbers
only the visible devices, fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. NVML's index 0 is therefore
not necessarily CUDA's device 0 (on a shared host it is often another user's card). A GPU's UUID is the same
for both: torch reports it for a CUDA device, and NVML looks the handle up by it. Every place that opens
NVML (the sampler, the energy meter, the environment record, the per-point process memory, the device check,
the build target) goes through here; pynvml is imported lazily, so ``import lib`` works without it.
"""

from __future__ import annotations

import os

from .errors import BenchbookError

__all__ = ["GpuError", "nvml", "cuda_uuid", "nvml_handle", "first_gpu_handle", "gpu_names", "text", "power_reader"]


class GpuError(BenchbookError):
    """The CUDA device cannot be matched to an NVML device (no driver, no CUDA in torch, unknown UUID)."""


def nvml():
    """The pynvml module, initialised (``nvmlInit`` may be called any number of times); ``GpuError`` saying
    why not (pynvml missing, no driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        raise GpuError(f"NVML cannot start ({type(e).__name__}: {e})") from e
    return pynvml


def text(value):
    """NVML strings are bytes in older pynvml releases and str in newer ones."""
    return value.decode() if isinstance(value, bytes) else value


def gpu_names() -> tuple[str, ...]:
    """Names of every NVIDIA GPU NVML sees (all of the machine's, whatever CUDA_VISIBLE_DEVICES says); empty
    without a driver."""
    try:
        nv = nvml()
        return tuple(text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)))
                     for i in range(nv.nvmlDeviceGetCount()))
    except Exception:
        return ()


def cuda_uuid(cuda_index: int | None = None) -> str:
    """The UUID of CUDA device ``cuda_index`` (torch's numbering; default: the current device), as NVML spells
    it (``GPU-xxxxxxxx-...``)."""
    try:
        import torch
    except ImportError as e:
        raise GpuError("torch is not installed: the CUDA device cannot be identified") from e
    if not torch.cuda.is_available():
        raise GpuError(f"torch {torch.__version__} sees no CUDA device: NVML cannot be matched to one")
    index = torch.cuda.current_device() if cuda_index is None else int(cuda_index)
    text = str(torch.cuda.get_device_properties(index).uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def nvml_handle(cuda_index: int | None = None):
    """The NVML handle of CUDA device ``cuda_index`` (default: the current one), matched by UUID; ``GpuError``
    saying why not. NVML is initialised here (``nvmlInit`` may be called any number of times)."""
    pynvml = nvml()
    uuid = cuda_uuid(cuda_index)
    tried = [uuid] if uuid.startswith("MIG-") else [uuid, "MIG-" + uuid[len("GPU-"):]]  # torch drops the prefix
    for u in tried:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(u)
        except Exception:  # noqa: BLE001 - the next spelling, then the error below
            continue
    raise GpuError(f"NVML knows no GPU with the UUID {uuid} of CUDA device {cuda_index or 0} "
                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")


def first_gpu_handle():
    """The NVML handle of the GPU CUDA would list first, found without importing torch (the plan step, and
    builds where torch has no CUDA): the first entry of ``CUDA_VISIBLE_DEVICES`` (a UUID or an index), else
    NVML's index 0. An index is NVML's PCI order, which is CUDA's only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``:
    good enough for a capability check on a host of one GPU model; measurements use ``nvml_handle``."""
    nv = nvml()
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    try:
        if first.startswith(("GPU-", "MIG-")):
            return nv.nvmlDeviceGetHandleByUUID(first)
        return nv.nvmlDeviceGetHandleByIndex(int(first) if first.isdecimal() else 0)
    except Exception as e:
        raise GpuError(f"NVML has no GPU for CUDA_VISIBLE_DEVICES={first or '(unset)'} "
                       f"({type(e).__name__}: {e})") from e


def power_reader(handle):
    """``(read, kind)``: a function returning the board's power in watts, and what it reads.

    ``nvmlDeviceGetPowerUsage`` is, on Ampere (except GA100) and newer GPUs, the power *averaged over the last
    second* (NVML's documentation); the H200's bench windows last a quarter of a second, so that reading
    still holds the previous point's power (seen on an H200: counter-implied 166 W at batch 1 and 538 W at
    batch 128, the averaged reading 345 W and 347 W over the same windows). The instantaneous field
    (``NVML_FI_DEV_POWER_INSTANT``, via ``nvmlDeviceGetFieldValues``) is read where the driver has it
    (``kind`` ``"instant"``); else the averaged reading (``kind`` ``"1 s average"`` on recent GPUs,
    instantaneous on older ones: NVML does not say which, hence the label). ``GpuError`` when neither reads."""
    nv = nvml()
    field = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)

    def instant() -> float:
        value = nv.nvmlDeviceGetFieldValues(handle, [field])[0]
        if value.nvmlReturn != nv.NVML_SUCCESS:
            raise GpuError(f"NVML_FI_DEV_POWER_INSTANT: {value.nvmlReturn}")
        return value.value.uiVal / 1e3  # mW -> W

    def averaged() -> float:
        return nv.nvmlDeviceGetPowerUsage(handle) / 1e3  # mW -> W

    if field is not None:
        try:
            if instant() > 0:
                return instant, "instant"
        except Exception:  # noqa: BLE001 - older driver or pynvml: the averaged reading below
            pass
    try:
        averaged()
    except Exception as e:
        raise GpuError(f"NVML reads no power on this GPU ({type(e).__name__}: {e})") from e
    return averaged, "1 s average"
