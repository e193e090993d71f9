"""Every dtype map of the project, keyed by one spelling: the config's names (``float32``, ``float16``,
``bfloat16``, ``int64``, ``int32``, ``bool``, as ``lib.config.model_config.DTYPES`` lists them; torch and
numpy name their dtypes the same way).

Each library's own spelling maps to that name here: ONNX's element-type enum, ONNX Runtime's type strings,
TensorRT's ``DataType`` members, the run's precision keys. torch and tensorrt are imported lazily (inside the
functions), so ``import lib`` works without them.
"""

from __future__ import annotations

import numpy as np

from ..common.errors import ConfigError

__all__ = ["HOST_NUMPY", "ONNX_ELEM_TYPES", "ORT_TYPES", "TRT_TYPES", "PRECISION_FLOATS", "numpy_dtype",
           "ort_numpy_dtype", "torch_dtype", "numpy_to_torch", "precision_torch_dtype", "trt_torch_dtypes"]

# Host (numpy) arrays per config dtype. numpy has no bfloat16: a bf16 input is hosted as fp32 and the
# engine casts it on the device.
HOST_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32, "int64": np.int64,
              "int32": np.int32, "bool": np.bool_}

# onnx.TensorProto.DataType values (fixed by the ONNX spec, so no onnx import is needed to read them).
ONNX_ELEM_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool", 11: "float64"}

# onnxruntime's NodeArg.type strings.
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64"}

# tensorrt.DataType member names (trt.nptype has no BF16/FP8, hence a table of our own).
TRT_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
             "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn"}

# A float precision key (the run's PRECISIONS, the peak table's keys) -> the dtype its matmuls run in;
# tf32 is float32 storage with TF32 tensor-core math allowed.
PRECISION_FLOATS = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def numpy_dtype(name: str):
    """The host numpy dtype of a config dtype name (bfloat16 hosts as float32)."""
    if name not in HOST_NUMPY:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(HOST_NUMPY)}")
    return HOST_NUMPY[name]


def ort_numpy_dtype(ort_type: str, default=np.float32):
    """The numpy dtype of an ONNX Runtime type string (``tensor(float16)`` -> float16); ``default`` for one
    without a numpy host type here. bfloat16 hosts as float32, as for the config's inputs."""
    name = ORT_TYPES.get(ort_type)
    if name is None:
        return default
    return np.float32 if name == "bfloat16" else np.dtype(name).type


def torch_dtype(name: str):
    """``torch.<name>`` (torch spells its dtypes as numpy and the config do)."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype {name!r} is not a torch dtype")
    return dtype


def numpy_to_torch(dtype):
    """The torch dtype of a numpy dtype (or scalar type)."""
    return torch_dtype(np.dtype(dtype).name)


def precision_torch_dtype(precision: str, device: str = "cpu"):
    """The module's float dtype at ``precision``; for torchao's quantized precisions, the activations' dtype
    (int8 keeps float32 activations on the CPU, where bfloat16 matmuls are slow; fp8 needs bfloat16)."""
    if precision == "int8":
        return torch_dtype("bfloat16" if device == "cuda" else "float32")
    if precision == "fp8":
        return torch_dtype("bfloat16")
    if precision not in PRECISION_FLOATS or precision == "tf32":
        raise ConfigError(f"precision {precision!r} has no torch dtype; valid: fp32, fp16, bf16, int8, fp8")
    return torch_dtype(PRECISION_FLOATS[precision])


def trt_torch_dtypes(trt) -> dict:
    """trt.DataType -> torch dtype, for the members this TensorRT (and this torch) has."""
    import torch

    return {getattr(trt.DataType, n): getattr(torch, name) for n, name in TRT_TYPES.items()
            if hasattr(trt.DataType, n) and hasattr(torch, name)}
