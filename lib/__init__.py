"""benchbook: benchmark a model on PyTorch, ONNX Runtime and TensorRT; one self-contained HTML report.

The public names below are imported lazily, so ``import lib`` stays fast and works on a machine
without torch's GPU stack, ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RunParams": "params", "make_plan": "plan", "run_backend": "bench", "load_run": "results",
    "get_model": "models", "list_models": "models", "build_model": "models", "ensure_onnx": "export",
    "make_engine": "engines", "list_backends": "engines", "collect_environment": "environment",
    "TimingPolicy": "timing", "measure_latency": "timing", "measure_throughput": "timing",
    "report": None, "BenchbookError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)
