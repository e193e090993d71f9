"""lib.config.dtypes: each library's dtype spelling maps to the config's one name, and back to a real dtype."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from lib.common.errors import ConfigError
from lib.config.dtypes import (HOST_NUMPY, ONNX_ELEM_TYPES, PRECISION_FLOATS, numpy_dtype, numpy_to_torch,
                               ort_numpy_dtype, precision_torch_dtype, torch_dtype)
from lib.config.model_config import DTYPES


def test_every_config_dtype_has_a_host_type_and_a_torch_dtype():
    assert set(HOST_NUMPY) == set(DTYPES)
    for name in DTYPES:
        assert torch_dtype(name) is getattr(torch, name)
    assert numpy_dtype("bfloat16") is np.float32  # numpy has no bfloat16: hosted as fp32
    with pytest.raises(ConfigError, match="float8.*float32"):
        numpy_dtype("float8")


def test_onnx_enum_matches_onnx():
    for value, name in ONNX_ELEM_TYPES.items():
        assert onnx.helper.tensor_dtype_to_np_dtype(value).name == name or name == "bfloat16"
    assert onnx.TensorProto.BFLOAT16 in ONNX_ELEM_TYPES


def test_ort_strings_and_numpy_to_torch():
    assert ort_numpy_dtype("tensor(float16)") is np.float16 and ort_numpy_dtype("tensor(int64)") is np.int64
    assert ort_numpy_dtype("tensor(string)") is np.float32  # unknown: the default
    assert numpy_to_torch(np.float16) is torch.float16 and numpy_to_torch(np.bool_) is torch.bool


def test_precisions():
    assert precision_torch_dtype("fp32") is torch.float32 and precision_torch_dtype("int8", "cuda") is torch.bfloat16
    assert set(PRECISION_FLOATS) >= {"fp32", "fp16", "bf16"}
    with pytest.raises(ConfigError, match="'fp64'.*fp32"):
        precision_torch_dtype("fp64")
