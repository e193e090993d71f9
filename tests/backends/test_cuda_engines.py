"""Every CUDA backend against the PyTorch FP32 reference, through the Engine interface and the
timing module. Needs a CUDA GPU (skipped elsewhere, with that reason)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.artifacts.export import ensure_onnx
from lib.backends import Artifacts, EngineSpec, engine_class, make_engine
from lib.config.inputs import make_inputs
from lib.config.models import build_model, get_model
from lib.measure.parity import compare_outputs
from lib.measure.timing import TimingPolicy, measure_latency, measure_throughput

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]

CUDA_BACKENDS = [("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16"), ("torch-cudagraph", "fp32"),
                 ("torch-cudagraph", "fp16"), ("torch-compile", "fp16"), ("ort", "fp32"), ("ort", "fp16"),
                 ("ort-cudagraph", "fp32"), ("ort-cudagraph", "fp16")]


@pytest.fixture(scope="module")
def effnet(tmp_path_factory):
    cfg = get_model("efficientnet_b1")
    cache = tmp_path_factory.mktemp("cache")
    onnx = {p: r.path for p, r in ensure_onnx(cfg, cache / "onnx", precisions=("fp32", "fp16")).items()}
    return cfg, Artifacts(onnx=onnx, cache_dir=cache)


def _reference(cfg, inputs):
    model = build_model(cfg)
    with torch.inference_mode():
        return {"logits": model(torch.from_numpy(inputs["input"])).numpy()}


@pytest.mark.parametrize("backend,precision", CUDA_BACKENDS)
def test_backend_matches_reference_and_times(effnet, backend, precision):
    cfg, artifacts = effnet
    reason = engine_class(backend).unavailable_reason("cuda")
    if reason:
        pytest.skip(reason)
    policy = TimingPolicy(warmup_s=0.05, min_iters=10, min_duration_s=0.05)
    with make_engine(backend, EngineSpec(model=cfg, precision=precision, device="cuda", artifacts=artifacts)) as eng:
        for batch in (1, 8):  # a second bind checks re-binding (new graph / new binding) too
            inputs = make_inputs(cfg, batch, cfg.shapes[0], seed=3)
            eng.bind(inputs, key=f"b{batch}")
            timer = eng.timer()
            assert timer.name == "cuda_event"
            dev, e2e = [], []
            for _ in range(4):  # interleaved rounds: a host that slows down for a while moves both alike
                d = measure_latency(eng.run_bound, timer, policy, "device")
                e = measure_latency(lambda: eng.infer(inputs), timer, policy, "end_to_end")
                assert len(d.ms) >= 10 and np.all(d.ms > 0)
                dev.append(float(np.median(d.ms)))
                e2e.append(float(np.median(e.ms)))
            thr = measure_throughput(eng.run_bound, timer, policy, min(dev))
            # host copies can only add time: end-to-end must not beat device-resident (each at its best round)
            assert min(e2e) >= 0.9 * min(dev), (dev, e2e)
            assert np.all(thr.ms > 0)
            result = compare_outputs(eng.infer(inputs), _reference(cfg, inputs), precision, "logits")
            assert result["passed"], result["problems"]
            fetched = eng.fetch()
            assert fetched["logits"].shape == (batch, 1000)
        # back to the batch-1 binding (kept, or bound afresh where a backend does not keep bindings): the
        # device path and the end-to-end path still give batch 1's outputs
        inputs = make_inputs(cfg, 1, cfg.shapes[0], seed=3)
        eng.bind(inputs, key="b1")
        ref = _reference(cfg, inputs)
        eng.run_bound()
        for outputs in (eng.fetch(), eng.infer(inputs)):
            assert outputs["logits"].shape == (1, 1000)
            result = compare_outputs(outputs, ref, precision, "logits")
            assert result["passed"], result["problems"]


class _CpuReference:
    """lib.sweep.bench's reference, in memory: PyTorch FP32 on the CPU."""

    def __init__(self, cfg):
        self.model = build_model(cfg)

    def get(self, key, inputs):
        with torch.inference_mode():
            return {"logits": self.model(torch.from_numpy(inputs["input"])).numpy()}


@pytest.mark.parametrize("backend,precision", CUDA_BACKENDS)
def test_backend_passes_parity_on_the_input_dependent_part(effnet, backend, precision):
    """lib.measure.parity.check_parity as the sweep runs it: fresh input, device and end-to-end paths, centred
    thresholds. Checks that CENTRED_THRESHOLDS (set from CPU BF16 figures) hold for real GPU backends."""
    from lib.measure.parity import check_parity

    cfg, artifacts = effnet
    reason = engine_class(backend).unavailable_reason("cuda")
    if reason:
        pytest.skip(reason)
    ref = _CpuReference(cfg)
    with make_engine(backend, EngineSpec(model=cfg, precision=precision, device="cuda", artifacts=artifacts)) as eng:
        for batch in (1, 8):
            eng.bind(make_inputs(cfg, batch, cfg.shapes[0], seed=3))
            r = check_parity(eng, cfg, batch, cfg.shapes[0], 3, precision, ref, f"bs{batch}")
            print(backend, precision, batch, r["cosine"], r["centred_cosine"], r["centred_rel_err"], r["paths"])
            assert r["passed"], r["problems"]
