"""The ``ort`` backend (ONNX Runtime, CPU execution provider) on the exported tiny model, for real: life
cycle (the Engine contract: test_base.py), the provider it really runs on, and outputs that match PyTorch FP32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.backends import Artifacts, EngineSpec, make_engine
from lib.backends.ort.engine import OrtEngine
from lib.common.errors import UnavailableError
from lib.config.inputs import make_inputs
from lib.measure.parity import compare_outputs
from lib.measure.timing import CpuTimer


def _reference(module, inputs):
    with torch.no_grad():
        return {"logits": module(torch.from_numpy(inputs["image"])).numpy()}


@pytest.fixture
def spec(tiny, tiny_onnx, cache_dir):
    return EngineSpec(model=tiny, precision="fp32", device="cpu",
                      artifacts=Artifacts(onnx={p: r.path for p, r in tiny_onnx.items()}, cache_dir=cache_dir))


def test_life_cycle_and_parity(tiny, tiny_module, tiny_onnx, spec):
    engine = make_engine("ort", spec)
    assert isinstance(engine, OrtEngine) and engine.label == "ort/fp32"
    engine.load()
    assert engine.loaded and isinstance(engine.timer(), CpuTimer)
    assert engine.info["providers"][0] == "CPUExecutionProvider"
    assert engine.session.get_providers()[0] == "CPUExecutionProvider"
    assert engine.info["onnx"] == str(tiny_onnx["fp32"].path)
    inputs = make_inputs(tiny, 4, tiny.shapes[0], seed=0)
    ref = _reference(tiny_module, inputs)

    engine.bind(inputs)
    engine.run_bound()
    fetched = engine.fetch()
    assert list(fetched) == ["logits"] and fetched["logits"].shape == (4, 10)
    r = compare_outputs(fetched, ref, "fp32", "logits")
    assert r["passed"] and r["top1_agree"] == 1.0, r["problems"]

    other = make_inputs(tiny, 4, tiny.shapes[0], seed=1)
    got = engine.infer(other)
    assert compare_outputs(got, _reference(tiny_module, other), "fp32", "logits")["passed"]
    assert not np.allclose(got["logits"], fetched["logits"])

    engine.close()
    assert not engine.loaded and engine.session is None and engine.bound_inputs is None


def test_context_manager_and_dynamic_shapes(tiny, tiny_module, spec):
    with make_engine("ort", spec) as engine:
        for batch, shape in ((1, "16x16"), (16, "64x64"), (5, "20x56")):
            inputs = make_inputs(tiny, batch, tiny.parse_shape(shape), seed=4)
            engine.bind(inputs)
            engine.run_bound()
            out = engine.fetch()
            assert out["logits"].shape == (batch, 10)
            assert compare_outputs(out, _reference(tiny_module, inputs), "fp32", "logits")["passed"]
    assert not engine.loaded


def test_inputs_of_another_dtype_are_converted(tiny, tiny_module, spec):
    inputs = make_inputs(tiny, 2, tiny.shapes[0], seed=0)
    as64 = {"image": inputs["image"].astype(np.float64)}
    with make_engine("ort", spec) as engine:
        out = engine.infer(as64)
    assert compare_outputs(out, _reference(tiny_module, inputs), "fp32", "logits")["passed"]


def test_missing_onnx_for_the_precision(tiny, tiny_onnx):
    spec = EngineSpec(model=tiny, precision="fp16", device="cpu",
                      artifacts=Artifacts(onnx={"fp32": tiny_onnx["fp32"].path}))
    with pytest.raises(UnavailableError, match="no fp16 ONNX model was exported"):
        make_engine("ort", spec).load()


def test_fp16_onnx_on_the_cpu_provider(tiny, tiny_module, spec):
    """Not in the CPU sweep (slow there), but the file the GPU runs must at least run and agree."""
    spec.precision = "fp16"
    inputs = make_inputs(tiny, 2, tiny.shapes[0], seed=0)
    with make_engine("ort", spec) as engine:
        out = engine.infer(inputs)
    r = compare_outputs(out, _reference(tiny_module, inputs), "fp16", "logits")
    assert r["passed"] and r["max_abs_err"] > 0, r


def test_thread_option(tiny, spec):
    spec.options = {"ort_threads": 1}
    with make_engine("ort", spec) as engine:
        assert engine.session.get_session_options().intra_op_num_threads == 1
        out = engine.infer(make_inputs(tiny, 1, tiny.shapes[0]))
    assert np.isfinite(out["logits"]).all()


# --- what the installed onnxruntime can really run (planned from its providers and libraries) -------------

def test_cpu_only_onnxruntime_is_not_planned_for_cuda():
    from lib.backends.ort.engine import cuda_provider_reason

    assert cuda_provider_reason(["CUDAExecutionProvider", "CPUExecutionProvider"], "1.31.1") is None
    why = cuda_provider_reason(["CPUExecutionProvider"], "1.31.1")
    assert "no CUDAExecutionProvider" in why and "onnxruntime-gpu" in why


def test_tensorrt_ep_needs_the_tensorrt_major_it_links():
    """onnxruntime-gpu 1.31 links TensorRT 10; the tensorrt extra allows 11: ort-trt must not be planned then."""
    from pathlib import Path

    import onnxruntime as ort

    from lib.backends.ort.engine import linked_trt_major, trt_version_reason

    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not lib.exists():
        pytest.skip("this onnxruntime has no TensorRT EP library")
    linked = linked_trt_major(lib)
    assert isinstance(linked, int) and linked >= 8  # read from the real library: 10 for onnxruntime-gpu 1.31
    assert trt_version_reason(linked, f"{linked}.13.0", ort.__version__) is None
    why = trt_version_reason(linked, f"{linked + 1}.0.1", ort.__version__)
    assert f"links TensorRT {linked}" in why and f"TensorRT {linked + 1}.0.1 is installed" in why
    assert linked_trt_major(lib.parent / "no-such-library.so") is None


def test_node_placements_are_read_from_ort_s_own_log(tiny_onnx):
    """On the CPU EP every node lands there; the per-provider format is ONNX Runtime's (session_state.cc,
    VerifyEachNodeIsAssignedToAnEp), as it prints it when more than one provider takes nodes."""
    import onnxruntime as ort

    from lib.backends.ort.engine import node_placements, parse_node_placements

    so = ort.SessionOptions()
    placed = node_placements(ort, tiny_onnx["fp32"].path, ["CPUExecutionProvider"], so)
    assert placed["cpu_nodes"] >= 3 and list(placed["providers"]) == ["CPUExecutionProvider"], placed
    log = ("2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1578 VerifyEachNodeIsAssignedToAnEp] Node placements\n"
           "2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1581 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 40\n"
           "2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1585 VerifyEachNodeIsAssignedToAnEp]   Conv (c1)\n"
           "2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1581 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3\n"
           "2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1585 VerifyEachNodeIsAssignedToAnEp]   QLinearConv (q1)\n"
           "2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1585 VerifyEachNodeIsAssignedToAnEp]   QLinearConv (q2)\n"
           "2026-12-02 10:00:00.1 [V:onnxruntime:, session_state.cc:1585 VerifyEachNodeIsAssignedToAnEp]   Shape (s)\n"
           "2026-12-02 10:00:00.1 [I:onnxruntime:, other.cc:1 Other]   Conv (not a placement line)\n")
    got = parse_node_placements(log)
    assert got["CPUExecutionProvider"] == {"nodes": 3, "op_types": {"QLinearConv": 2, "Shape": 1}}
    assert got["CUDAExecutionProvider"] == {"nodes": 40, "op_types": {"Conv": 1}}


def test_int8_runs_on_the_cpu_provider(tiny, tiny_module, cache_dir):
    from lib.artifacts.export import ensure_onnx

    onnx = {p: r.path for p, r in ensure_onnx(tiny, cache_dir / "onnx", ("fp32", "int8"), log=lambda _m: None).items()}
    spec = EngineSpec(model=tiny, precision="int8", device="cpu", artifacts=Artifacts(onnx=onnx))
    with make_engine("ort", spec) as engine:
        assert engine.info["onnx"] == str(onnx["int8"])
        x = make_inputs(tiny, 4, tiny.parse_shape("32x32"), seed=1)
        got = engine.infer(x)
    with torch.no_grad():
        ref = tiny_module(torch.from_numpy(x["image"])).numpy()
    assert compare_outputs(got, {"logits": ref}, "int8", "logits")["passed"]
    assert np.abs(got["logits"] - ref).max() > 0
