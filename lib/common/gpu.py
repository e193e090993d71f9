"""The NVML handle of the GPU that the engines use, found by UUID.

NVML numbers every GPU of the machine in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA numbers
only the visible devices, fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. NVML's index 0 is therefore
not necessarily CUDA's device 0 (on a shared host it is often another user's card). A GPU's UUID is the same
for both: torch reports it for a CUDA device, and NVML looks the handle up by it. Every place that opens
NVML for a device (the sampler, the environment record, the per-point process memory) goes through here.
"""

from __future__ import annotations

import os

from .errors import BenchbookError

__all__ = ["GpuError", "cuda_uuid", "nvml_handle"]


class GpuError(BenchbookError):
    """The CUDA device cannot be matched to an NVML device (no driver, no CUDA in torch, unknown UUID)."""


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
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        raise GpuError(f"NVML cannot start ({type(e).__name__}: {e})") from e
    uuid = cuda_uuid(cuda_index)
    tried = [uuid] if uuid.startswith("MIG-") else [uuid, "MIG-" + uuid[len("GPU-"):]]  # torch drops the prefix
    for u in tried:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(u)
        except Exception:  # noqa: BLE001 - the next spelling, then the error below
            continue
    raise GpuError(f"NVML knows no GPU with the UUID {uuid} of CUDA device {cuda_index or 0} "
                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
