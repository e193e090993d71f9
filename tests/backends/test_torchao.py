"""torchao INT8 on ``torch-compile``, for real on the CPU (``quantize_`` with
Int8DynamicActivationInt8WeightConfig, then inductor): which layers were quantized and which stayed in
higher precision, outputs within the INT8 parity thresholds of PyTorch FP32; and the plan step's checks
(torchao missing, FP8 on a GPU older than compute capability 8.9), which need no torchao.
Skipped where torchao is not installed (``pip install -e .[torchao]``)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lib.backends import EngineSpec, engine_class, make_engine
from lib.backends.torch.engine import FP8_MIN_CC, torchao_reason
from lib.config.dtypes import precision_torch_dtype as torch_dtype
from lib.config.inputs import make_inputs
from lib.measure.parity import calibration_centre, compare_outputs

HAVE_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(not HAVE_TORCHAO, reason="torchao is not installed (pip install -e .[torchao])")


class _Ref:
    def __init__(self, module):
        self.module = module

    def get(self, key, inputs):
        with torch.no_grad():
            return {"logits": self.module(torch.from_numpy(inputs["image"])).numpy()}


def test_precisions_and_auto():
    cls = engine_class("torch-compile")
    assert "int8" in cls.precisions("cpu") and "fp8" not in cls.precisions("cpu")
    assert {"int8", "fp8"} <= set(cls.precisions("cuda"))
    assert not {"int8", "fp8"} & set(cls.auto_precisions("cuda"))  # quantized only by name
    assert "int8" not in engine_class("torch").precisions("cpu")  # eager: see lib.backends.torch.engine
    assert torch_dtype("int8", "cpu") is torch.float32 and torch_dtype("fp8", "cuda") is torch.bfloat16


def test_plan_reason_without_torchao():
    reason = engine_class("torch-compile").precision_unavailable_reason("cpu", "int8")
    if HAVE_TORCHAO:
        assert reason is None and torchao_reason() is None
    else:
        assert "torchao is not installed" in reason and "pip install" in reason


@needs_torchao
def test_int8_tiny_on_cpu(tiny, tiny_module):
    spec = EngineSpec(model=tiny, precision="int8", device="cpu", options={"compile_mode": "default"})
    with make_engine("torch-compile", spec) as engine:
        ao = engine.info["torchao"]
        assert ao["config"] == "Int8DynamicActivationInt8WeightConfig"
        assert ao["quantized"] == {"Linear": 1}  # torchao quantizes nn.Linear only
        assert ao["kept_in_higher_precision"] == {"Conv2d": 2, "BatchNorm2d": 1}
        shape = tiny.parse_shape("32x32")
        x = make_inputs(tiny, 4, shape, seed=2)
        engine.bind(x)
        engine.run_bound()
        got = engine.fetch()
        ref = _Ref(tiny_module)
        centre, _ = calibration_centre(tiny, shape, 2, ref)
        r = compare_outputs(got, ref.get("", x), "int8", "logits", centre)
        assert r["passed"], r["problems"]
        assert np.abs(got["logits"] - ref.get("", x)["logits"]).max() > 0  # really quantized
        assert engine.info["compile_graphs"] >= 1


@needs_torchao
def test_int8_leaves_linears_with_few_rows_in_higher_precision():
    """torch._int_mm on CUDA refuses 16 rows or fewer (bert_base's pooler at batch 1 failed so on an H200): the
    Linear layers that see that few rows stay unquantized, by name, with the reason; the rest are quantized.
    Rows are counted by a real forward pass (here on the CPU)."""
    from lib.backends.torch.engine import INT8_MIN_ROWS, linear_rows, torchao_quantize

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = torch.nn.Linear(32, 32)  # sees batch x 20 rows
            self.pooler = torch.nn.Linear(32, 8)  # sees one row per item

        def forward(self, x):
            return self.pooler(self.tokens(x)[:, 0])

    net = Net().eval()
    rows = linear_rows(net, [torch.randn(1, 20, 32)])
    assert rows == {"tokens": 20, "pooler": 1} and INT8_MIN_ROWS == 17
    info = torchao_quantize(net, "int8", rows)
    assert info["quantized"] == {"Linear": 1} and info["kept_in_higher_precision"] == {"Linear": 1}
    assert info["kept_few_rows"] == {"pooler": 1} and "torch._int_mm" in info["kept_few_rows_why"]
    assert type(net.pooler.weight) is torch.nn.Parameter and type(net.tokens.weight) is not torch.nn.Parameter


def test_fp8_needs_compute_capability_8_9(monkeypatch):
    import lib.backends.torch.engine as te

    monkeypatch.setattr(te, "torchao_reason", lambda: None)
    monkeypatch.setattr(te, "gpu_compute_capability", lambda: (8, 0))
    reason = engine_class("torch-compile").precision_unavailable_reason("cuda", "fp8")
    assert f"{FP8_MIN_CC[0]}.{FP8_MIN_CC[1]} or newer" in reason and "8.0" in reason
    monkeypatch.setattr(te, "gpu_compute_capability", lambda: (9, 0))
    assert engine_class("torch-compile").precision_unavailable_reason("cuda", "fp8") is None
