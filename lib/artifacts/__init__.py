"""From a model to artifacts: the ONNX export (FP32/FP16) and the INT8 ONNX (quantize)."""
