"""The ``Engine`` contract that ``lib/backends/base.py`` enforces for every backend, checked on the real
CPU backends (PyTorch eager and ONNX Runtime on the exported tiny model): bind before load, run before
bind, and inputs that do not match the model are errors naming what went wrong."""

from __future__ import annotations

import pytest

from lib.backends import Artifacts, EngineSpec, engine_class, list_backends, make_engine
from lib.common.errors import BenchbookError
from lib.config.inputs import make_inputs


@pytest.mark.parametrize("backend", [n for n in list_backends() if "fp32" in engine_class(n).precisions("cpu")])
def test_contract_checks(tiny, tiny_onnx, cache_dir, backend):
    reason = engine_class(backend).unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    spec = EngineSpec(model=tiny, precision="fp32", device="cpu",
                      artifacts=Artifacts(onnx={p: r.path for p, r in tiny_onnx.items()}, cache_dir=cache_dir))
    inputs = make_inputs(tiny, 2, tiny.shapes[0])
    engine = make_engine(backend, spec)
    with pytest.raises(BenchbookError, match="load"):
        engine.bind(inputs)
    engine.load()
    with pytest.raises(BenchbookError, match=r"run_bound\(\) before bind\(\)"):
        engine.run_bound()
    with pytest.raises(BenchbookError, match="do not match"):
        engine.bind({**inputs, "extra": inputs["image"]})
    with pytest.raises(BenchbookError, match=r"inputs \['input'\] do not match the model's \['image'\]"):
        engine.bind({"input": inputs["image"]})
    engine.close()
