"""TensorRT backends (engine) and the engine build (build)."""

ORDER = 30  # last: after PyTorch and ONNX Runtime

from . import engine  # noqa: E402,F401  (registers the engines)
