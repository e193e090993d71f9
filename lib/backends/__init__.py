"""Backend registry. Backends register by name; a duplicate name raises.

Modules here import their optional libraries (onnxruntime, tensorrt) lazily, inside methods,
so ``import lib`` works on a machine that has none of them.
"""

from __future__ import annotations

from ..common.errors import ConfigError
from .base import Artifacts, Engine, EngineSpec

__all__ = ["Engine", "EngineSpec", "Artifacts", "register_engine", "engine_class", "list_backends", "make_engine"]

_REGISTRY: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    name = cls.backend
    if name in _REGISTRY:
        raise ValueError(f"backend {name!r} registered twice: {_REGISTRY[name].__module__} and {cls.__module__}")
    _REGISTRY[name] = cls
    return cls


def list_backends() -> list[str]:
    return list(_REGISTRY)


def engine_class(name: str) -> type[Engine]:
    if name not in _REGISTRY:
        raise ConfigError(f"BACKENDS: {name!r} is not a backend; valid: {', '.join(_REGISTRY)} or auto")
    return _REGISTRY[name]


def make_engine(backend: str, spec: EngineSpec) -> Engine:
    return engine_class(backend)(spec)


# Registration order is the report's order.
from .torch import engine as _torch_engine  # noqa: E402,F401
from .ort import engine as _ort_engine  # noqa: E402,F401
from .tensorrt import engine as _trt_engine  # noqa: E402,F401
