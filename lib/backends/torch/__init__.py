"""PyTorch backends: eager, CUDA graph, torch.compile (engine)."""

ORDER = 10  # the report's order of backend families: PyTorch first (the baseline), then ONNX Runtime, TensorRT

from . import engine  # noqa: E402,F401  (registers the engines)
