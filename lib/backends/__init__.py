"""Backend registry. Each sub-package of ``lib/backends/`` is a backend family: its ``__init__`` declares the
family's place in the report (``ORDER``) and imports its engine module, whose classes register by name with
``@register_engine`` (a duplicate name raises). The families are found here by listing the folder, so adding
one is its folder plus its tests (docs/adding-a-backend.md); nothing here names a backend.

What a backend declares (class attributes of its ``Engine``, lib.backends.base): ``backend`` (its name),
``summary`` (a short title for the report), ``needs_onnx`` (it runs the exported ONNX file rather than the
torch module), ``libraries`` (the ``Library`` entries it needs: import name and the distributions whose
versions the environment table records). Modules here import their optional libraries (onnxruntime,
tensorrt) lazily, inside methods, so ``import lib`` works on a machine that has none of them.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from ..common.errors import ConfigError
from ..measure.environment import register_libraries
from .base import TORCH, Artifacts, Engine, EngineSpec, Library

__all__ = ["Engine", "EngineSpec", "Artifacts", "Library", "TORCH", "register_engine", "engine_class",
           "list_backends", "make_engine", "backend_libraries", "families"]

_REGISTRY: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    name = cls.backend
    if name in _REGISTRY:
        raise ValueError(f"backend {name!r} registered twice: {_REGISTRY[name].__module__} and {cls.__module__}")
    _REGISTRY[name] = cls
    return cls


def _family_order(cls: type[Engine]) -> float:
    """The ``ORDER`` of the family (``lib.backends.<family>``) that defines ``cls``; a class defined elsewhere
    (a test's) sorts last."""
    prefix = __name__ + "."
    if not cls.__module__.startswith(prefix):
        return float("inf")
    family = sys.modules.get(prefix + cls.__module__[len(prefix):].split(".")[0])
    return float(getattr(family, "ORDER", float("inf")))


def list_backends() -> list[str]:
    """Every registered backend, in report order: by family ``ORDER``, then as each family registers them."""
    index = {name: i for i, name in enumerate(_REGISTRY)}
    return sorted(_REGISTRY, key=lambda n: (_family_order(_REGISTRY[n]), index[n]))


def engine_class(name: str) -> type[Engine]:
    if name not in _REGISTRY:
        raise ConfigError(f"BACKENDS: {name!r} is not a backend; valid: {', '.join(list_backends())} or auto")
    return _REGISTRY[name]


def make_engine(backend: str, spec: EngineSpec) -> Engine:
    return engine_class(backend)(spec)


def backend_libraries() -> dict[str, tuple[str, ...]]:
    """{import name: its distributions} over every registered backend, in report order (torch first)."""
    out: dict[str, tuple[str, ...]] = {}
    for name in list_backends():
        for lib in engine_class(name).libraries:
            out.setdefault(lib.module, lib.distributions)
    return out


def families() -> list[str]:
    """The backend families (sub-packages of lib/backends/), in report order."""
    return sorted((m.name for m in pkgutil.iter_modules(__path__) if m.ispkg),
                  key=lambda n: getattr(sys.modules[f"{__name__}.{n}"], "ORDER", float("inf")))


# Import every family (each registers its engines); then tell the environment record which libraries to
# version (lib.measure.environment cannot import this later stage, so the list is handed down to it).
for _family in pkgutil.iter_modules(__path__):
    if _family.ispkg:
        importlib.import_module(f"{__name__}.{_family.name}")
register_libraries(backend_libraries())
