"""ONNX Runtime backends: CPU/CUDA EPs, CUDA graph, TensorRT EP."""
