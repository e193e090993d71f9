"""Which device a run uses, decided without importing torch (fast, for input checks)."""

from __future__ import annotations

import functools

from ..common.errors import ConfigError, UnavailableError
from ..common.gpu import gpu_names

__all__ = ["DEVICES", "nvml_gpus", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=1)
def nvml_gpus() -> tuple[str, ...]:
    """Names of the NVIDIA GPUs NVML sees (empty without a driver); cached: the driver does not change."""
    return gpu_names()


def resolve_device(text: str) -> str:
    """'auto' -> 'cuda' when an NVIDIA GPU is visible, else 'cpu'; 'cuda' without one is an error."""
    value = str(text).strip().lower()
    if value not in DEVICES:
        raise ConfigError(f"DEVICE={text!r} is not valid; use one of {', '.join(DEVICES)}")
    gpus = nvml_gpus()
    if value == "auto":
        return "cuda" if gpus else "cpu"
    if value == "cuda" and not gpus:
        raise UnavailableError("DEVICE=cuda, but this machine has no NVIDIA GPU that the driver (NVML) reports; "
                               "use DEVICE=cpu or DEVICE=auto")
    return value
