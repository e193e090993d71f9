"""The ``trt`` / ``trt-cudagraph`` backends: registration, availability reasons, and (on a CUDA GPU
that the installed TensorRT supports) load + infer + parity against PyTorch, for real."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib.backends import Artifacts, EngineSpec, engine_class, list_backends, make_engine
from lib.backends.tensorrt.engine import (TrtCudaGraph, TrtEngine, tensorrt_install_hint, tensorrt_unavailable_reason)
from lib.common.cache import read_json, write_manifest
from lib.common.errors import ConfigError
from lib.config.dtypes import trt_torch_dtypes
from lib.config.inputs import make_inputs
from lib.config.models import build_model, discover, get_model
from lib.measure.parity import compare_outputs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
REPO = Path(__file__).resolve().parents[2]
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_trt = pytest.mark.skipif(not (HAVE_TRT or HAVE_RTX), reason="neither tensorrt nor tensorrt_rtx is installed")


def _gpu_skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False here)"
    reason = TrtEngine.unavailable_reason("cuda")
    return f"needs a TensorRT that supports this GPU: {reason}" if reason else None


GPU_SKIP = _gpu_skip_reason()
requires_gpu_trt = pytest.mark.skipif(GPU_SKIP is not None, reason=str(GPU_SKIP))


# --- registration and availability (no GPU needed) -----------------------------------------------------
def test_backends_registered():
    assert {"trt", "trt-cudagraph"} <= set(list_backends())
    for name, cls in (("trt", TrtEngine), ("trt-cudagraph", TrtCudaGraph)):
        assert engine_class(name) is cls and cls.needs_onnx and cls.devices == ("cuda",)
        assert cls.precisions("cuda") == ("fp32", "fp16", "int8") and cls.precisions("cpu") == ()
        assert cls.onnx_variant("int8") == "int8_trt" and cls.onnx_variant("fp16") == "fp16"  # TensorRT's Q/DQ file
        # INT8 only by name; the CUDA-graph variant at FP16 only (lib.backends.base.Engine.auto_precisions)
        assert cls.auto_precisions("cuda") == (("fp16",) if cls.cuda_graph_variant else ("fp32", "fp16"))
    assert issubclass(TrtCudaGraph, TrtEngine)


def test_unavailable_on_cpu():
    assert "NVIDIA GPUs only" in TrtEngine.unavailable_reason("cpu")


@pytest.mark.skipif(GPU_SKIP is None, reason="this machine can run TensorRT")
def test_unavailable_reason_explains():
    reason = TrtEngine.unavailable_reason("cuda")
    assert reason and any(w in reason for w in ("GPU", "not installed", "compute capability"))


@pytest.mark.parametrize("cuda, wheel", [("13.0", "tensorrt-cu13"), ("12.8", "tensorrt-cu12"), (None, "tensorrt-cu13")])
def test_install_hint_follows_torch_cuda(cuda, wheel):
    assert f"pip install {wheel}" in tensorrt_install_hint(cuda)


def test_tensorrt_unavailable_reason():
    full = tensorrt_unavailable_reason(rtx_ok=False)  # ORT's TensorRT EP: needs libnvinfer itself
    assert (full is None) == HAVE_TRT
    if not HAVE_TRT:
        assert "pip install tensorrt-cu" in full
        assert ("TensorRT-RTX is installed" in full) == HAVE_RTX
    assert (tensorrt_unavailable_reason() is None) == (HAVE_TRT or HAVE_RTX)


def test_import_lib_without_tensorrt():
    code = ("import sys; sys.modules['tensorrt'] = sys.modules['tensorrt_rtx'] = None\n"
            "import lib.backends as e; from lib.backends.tensorrt.engine import tensorrt_unavailable_reason as r\n"
            "assert 'trt' in e.list_backends(); print(r())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TensorRT is not installed" in out.stdout


@needs_trt
def test_dtype_map():
    import torch

    from lib.backends.tensorrt.build import import_trt

    trt, _ = import_trt()
    m = trt_torch_dtypes(trt)
    assert m[trt.DataType.FLOAT] is torch.float32 and m[trt.DataType.HALF] is torch.float16
    assert m[trt.DataType.BF16] is torch.bfloat16 and m[trt.DataType.INT64] is torch.int64


@pytest.mark.skipif(not HAVE_RTX, reason="TensorRT-RTX-specific message (tensorrt_rtx is not installed)")
def test_rtx_names_hopper_as_unsupported():
    from lib.backends.tensorrt.build import import_trt, rtx_unsupported_gpu_reason, supported_rtx_targets

    trt, _ = import_trt("tensorrt_rtx")
    assert "9.0" not in supported_rtx_targets(trt) and "8.9" in supported_rtx_targets(trt)
    msg = rtx_unsupported_gpu_reason(trt, "NVIDIA H100 80GB HBM3", "9.0")
    assert "H100" in msg and "compute capability 9.0" in msg and "pip install tensorrt-cu" in msg


# --- execution on a GPU ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "onnx-cache"  # shared with test_trt_build.py: one export each


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trt-engines")


def _spec(cfg, precision, onnx_root, cache, **options):
    from lib.artifacts.export import ensure_onnx

    files = {p: r.path for p, r in ensure_onnx(cfg, onnx_root, precisions=("fp32", "fp16"), log=lambda _m: None).items()}
    return EngineSpec(model=cfg, precision=precision, device="cuda",
                      artifacts=Artifacts(onnx=files, cache_dir=cache), options=options)


def _reference(cfg, inputs):
    import torch

    from lib.config.models import as_output_list

    with torch.inference_mode():
        outs = as_output_list(build_model(cfg)(*[torch.from_numpy(inputs[s.name]) for s in cfg.inputs]))
    return {o.name: t.float().numpy() for o, t in zip(cfg.outputs, outs)}


MODELS = {"tiny_cnn": lambda: discover(FIXTURES)["tiny_cnn"], "efficientnet_b1": lambda: get_model("efficientnet_b1")}


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires_gpu_trt
@pytest.mark.parametrize("backend", ["trt", "trt-cudagraph"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", list(MODELS))
def test_infer_matches_torch(model, precision, backend, onnx_root, engine_cache):
    cfg = MODELS[model]()
    shape = cfg.shapes[0]
    with make_engine(backend, _spec(cfg, precision, onnx_root, engine_cache, log=lambda _m: None)) as eng:
        assert eng.info["flavour"] in ("tensorrt", "tensorrt_rtx") and eng.info["engine_key"]
        assert eng.memory_stats()["trt_engine_device_memory_bytes"] >= 0
        for batch in (2, 4):  # a second bind: new shapes, new buffers (and a new graph)
            inputs = make_inputs(cfg, batch, shape, seed=7)
            eng.bind(inputs)
            got = eng.infer(inputs)
            result = compare_outputs(got, _reference(cfg, inputs), precision, cfg.top_k_output)
            assert result["passed"], result["problems"]
            eng.run_bound()
            fetched = eng.fetch()
            for name in got:  # same engine, inputs and shapes: equal up to kernel nondeterminism
                np.testing.assert_allclose(fetched[name], got[name], rtol=1e-3, atol=1e-3)
        assert eng.memory_stats()["trt_io_buffer_bytes"] > 0


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires_gpu_trt
def test_bind_outside_profile_is_named(onnx_root, engine_cache):
    cfg = discover(FIXTURES)["tiny_cnn"]
    with make_engine("trt", _spec(cfg, "fp32", onnx_root, engine_cache, log=lambda _m: None)) as eng:
        big = {"image": np.zeros((32, 3, 32, 32), np.float32)}  # batch 32 > profile max 16
        with pytest.raises(ConfigError, match=r"\[32, 3, 32, 32\] is outside the engine's profile"):
            eng.bind(big)


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires_gpu_trt
def test_cached_plan_that_does_not_load_is_rebuilt(onnx_root, tmp_path):
    cfg = discover(FIXTURES)["tiny_cnn"]
    spec = _spec(cfg, "fp32", onnx_root, tmp_path, log=lambda _m: None)
    with make_engine("trt", spec) as eng:
        plan = Path(eng.info["engine_path"])
    manifest = read_json(plan.parent / "manifest.json")
    plan.write_bytes(b"\0" * 4096)  # garbage whose hash the manifest then vouches for
    write_manifest(plan.parent, plan.name, **{k: v for k, v in manifest.items()
                                              if k not in ("artifact", "sha256", "bytes")})
    lines = []
    spec.options["log"] = lines.append
    with make_engine("trt", spec) as eng:
        inputs = make_inputs(cfg, 2, cfg.shapes[0], seed=1)
        eng.bind(inputs)
        assert compare_outputs(eng.infer(inputs), _reference(cfg, inputs), "fp32", "logits")["passed"]
        assert not eng.info["cache_hit"]
    assert any("warning" in m and ("invalid" in m or "does not deserialize" in m) for m in lines)
