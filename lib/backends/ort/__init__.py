"""ONNX Runtime backends: CPU/CUDA EPs, CUDA graph, TensorRT EP (engine)."""

ORDER = 20  # after PyTorch, before TensorRT (lib.backends.torch says why the order)

from . import engine  # noqa: E402,F401  (registers the engines)
