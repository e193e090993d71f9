"""benchbook: benchmark a model on PyTorch, ONNX Runtime and TensorRT; one self-contained HTML report.

The public names below are imported lazily, so ``import lib`` stays fast and works on a machine
without torch's GPU stack, ONNX Runtime or TensorRT. The code is laid out by pipeline stage, one sub-package
each (README "How it is built"); tests/test_layout.py states the order in which imports may run between them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RunParams": "config.params", "make_plan": "sweep.plan", "run_backend": "sweep.bench", "load_run": "results.run",
    "get_model": "config.models", "list_models": "config.models", "build_model": "config.models",
    "ensure_onnx": "artifacts.export", "make_engine": "backends", "list_backends": "backends",
    "collect_environment": "measure.environment", "TimingPolicy": "measure.timing",
    "measure_latency": "measure.timing", "measure_throughput": "measure.timing",
    "report": None, "BenchbookError": "common.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)
