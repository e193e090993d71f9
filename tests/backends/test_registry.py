"""lib.backends registry: every backend registered once, in report order; a duplicate name raises naming
both classes; an unknown name lists the valid ones; make_engine builds the registered class."""

from __future__ import annotations

import pytest

import lib.backends as engines
from lib.backends import Engine, EngineSpec, engine_class, list_backends, make_engine, register_engine
from lib.backends.ort.engine import OrtEngine
from lib.backends.torch.engine import TorchEager
from lib.common.errors import ConfigError


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so a test may register classes without leaking them."""
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))
    return engines._REGISTRY


def test_core_backends_are_registered_in_report_order():
    names = list_backends()
    assert len(names) == len(set(names))
    assert names[:6] == ["torch", "torch-cudagraph", "torch-compile", "ort", "ort-cudagraph", "ort-trt"]
    assert engine_class("torch") is TorchEager and engine_class("ort") is OrtEngine
    for name in names:
        cls = engine_class(name)
        assert issubclass(cls, Engine) and cls.backend == name


def test_duplicate_registration_raises(registry):
    class AnotherTorch(TorchEager):
        backend = "torch"

    with pytest.raises(ValueError) as e:
        register_engine(AnotherTorch)
    msg = str(e.value)
    assert "'torch' registered twice" in msg and TorchEager.__module__ in msg and __name__ in msg
    assert engine_class("torch") is TorchEager  # the first one stays


def test_register_and_make(registry, tiny):
    @register_engine
    class Dummy(TorchEager):
        backend = "dummy-test"

    assert list_backends()[-1] == "dummy-test" and engine_class("dummy-test") is Dummy
    spec = EngineSpec(model=tiny, precision="fp32", device="cpu")
    engine = make_engine("dummy-test", spec)
    assert isinstance(engine, Dummy) and engine.spec is spec and not engine.loaded
    assert engine.label == "dummy-test/fp32"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        engine_class("onnxruntime")
    msg = str(e.value)
    assert "'onnxruntime' is not a backend" in msg
    for name in list_backends():
        assert name in msg
    with pytest.raises(ConfigError, match="'tensorflow' is not a backend"):
        make_engine("tensorflow", None)


def test_cpu_capabilities():
    assert TorchEager.devices == ("cpu", "cuda") and "cpu" in TorchEager.in_auto and not TorchEager.needs_onnx
    assert TorchEager.precisions("cpu") == ("fp32", "bf16") and TorchEager.auto_precisions("cpu") == ("fp32",)
    assert OrtEngine.needs_onnx and OrtEngine.precisions("cpu") == ("fp32", "int8")  # int8: the QDQ file
    assert OrtEngine.auto_precisions("cpu") == ("fp32",) and "int8" not in OrtEngine.auto_precisions("cuda")
    # on a GPU: FP32 and FP16; a CUDA-graph variant FP16 only; bf16 by name
    assert TorchEager.auto_precisions("cuda") == ("fp32", "fp16") and OrtEngine.auto_precisions("cuda") == ("fp32", "fp16")
    graphs = [engine_class(n) for n in list_backends() if engine_class(n).cuda_graph_variant]
    assert {c.backend for c in graphs} >= {"torch-cudagraph", "ort-cudagraph", "trt-cudagraph"}
    assert all(c.auto_precisions("cuda") == ("fp16",) for c in graphs)
    assert OrtEngine.unavailable_reason("cpu") is None and TorchEager.unavailable_reason("cpu") is None
    assert engine_class("torch-compile").in_auto == ("cuda",)
    gpu_only = [n for n in list_backends() if engine_class(n).devices == ("cuda",)]
    assert {"torch-cudagraph", "ort-cudagraph", "ort-trt"} <= set(gpu_only)
    for name in gpu_only:
        assert engine_class(name).precisions("cpu") == (), name  # a GPU-only backend offers nothing on a CPU


@pytest.mark.parametrize("name", list_backends())
def test_every_backend_declares_what_it_needs(name):
    """Name, title, ONNX or not, libraries: what the plan, the environment record and the report read."""
    cls = engine_class(name)
    assert cls.backend == name and cls.summary and isinstance(cls.needs_onnx, bool)
    assert cls.libraries and all(isinstance(x, engines.Library) and x.module and x.distributions
                                 for x in cls.libraries)
    assert engines.TORCH in cls.libraries  # every engine stages its GPU work with torch
    for x in cls.libraries:
        assert engines.backend_libraries()[x.module] == x.distributions


def test_families_are_found_from_the_folder():
    """Each sub-package of lib/backends/ is a family with an ORDER; their engines list in that order."""
    from conftest import REPO

    folders = sorted(p.name for p in (REPO / "lib" / "backends").iterdir() if (p / "__init__.py").is_file())
    assert sorted(engines.families()) == folders and engines.families() == ["torch", "ort", "tensorrt"]
    libs = engines.backend_libraries()
    assert list(libs)[:2] == ["torch", "onnxruntime"] and "tensorrt" in libs


def test_the_environment_records_the_declared_libraries():
    from lib.measure.environment import collect_environment

    recorded = collect_environment()["libraries"]
    import importlib.metadata as md

    for dists in engines.backend_libraries().values():
        for d in dists:
            try:
                installed = md.version(d)
            except md.PackageNotFoundError:
                continue
            assert d in recorded and recorded[d].startswith(installed.split("+")[0]), (d, recorded.get(d))
