"""lib.measure.reference: the FP32 reference outputs (PyTorch or ONNX Runtime's CPU EP), computed once per key
and cached, and the module-against-config check that export relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.common.errors import ConfigError
from lib.config.inputs import make_inputs
from lib.measure.reference import ReferenceOutputs, onnx_cpu_outputs, onnx_cpu_session, torch_outputs


def test_torch_and_onnx_references_agree(tiny, tiny_module, tiny_onnx):
    x = make_inputs(tiny, 2, tiny.shapes[0], seed=0)
    ref = torch_outputs(tiny_module, tiny, x)
    assert list(ref) == [o.name for o in tiny.outputs] and all(v.dtype == np.float32 for v in ref.values())
    path = tiny_onnx["fp32"].path
    got = onnx_cpu_outputs(path, x)
    assert got.keys() == ref.keys()
    assert onnx_cpu_outputs(onnx_cpu_session(path), x).keys() == ref.keys()  # a session is reused the same way
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-4)


def test_a_module_that_does_not_fit_the_config_is_named(tiny):
    x = make_inputs(tiny, 1, tiny.shapes[0], seed=0)
    with pytest.raises(ConfigError, match="outputs: lists"):
        torch_outputs(lambda *a: (torch.zeros(1), torch.zeros(1), torch.zeros(1)), tiny, x)
    with pytest.raises(ConfigError, match="forward\\(\\) does not take"):
        torch_outputs(lambda: None, tiny, x)


def test_outputs_are_cached_per_key(tiny, tmp_path):
    ref = ReferenceOutputs(tmp_path / "run", tiny, None, None)
    assert ref.source() == "PyTorch FP32 (CPU)"
    x = make_inputs(tiny, 2, tiny.shapes[0], seed=0)
    first = ref.get("bs2", x)
    assert (tmp_path / "run" / "reference" / "bs2.npz").exists()
    again = ReferenceOutputs(tmp_path / "run", tiny, None, None).get("bs2", {})  # from the file: no inputs needed
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
