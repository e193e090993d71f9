"""TensorRT backends (engine) and the engine build (build)."""
