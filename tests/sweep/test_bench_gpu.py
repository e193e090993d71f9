"""A real out-of-memory in the middle of a GPU sweep: recorded as OOM, the sweep goes on, the
points before and after are measured. Needs a CUDA GPU (skipped elsewhere, with that reason)."""

from __future__ import annotations

import json

import pytest

from lib.config.params import RunParams
from lib.measure.kernels import category
from lib.sweep.bench import combo_dir, run_backend
from lib.sweep.plan import make_plan

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_oom_is_recorded_and_sweep_goes_on(tmp_path, backend):
    params = RunParams.from_strings(model="efficientnet_b1", backends=backend, precisions="fp32",
                                    batch_sizes="1,128,8", device="cuda", iters=3, duration=0.05, warmup=0.01, rounds=2,
                                    cache_dir=str(tmp_path / "cache"))
    plan = make_plan(params, tmp_path / "reports")
    torch.cuda.init()
    free, _ = torch.cuda.mem_get_info()
    # Leave about 1.2 GiB: batch 1 and 8 fit (under 1 GiB each), batch 128 needs about 3 GiB.
    hog = torch.empty(max(free - int(1.2 * (1 << 30)), 0), dtype=torch.uint8, device="cuda")
    try:
        status = run_backend(plan.run_dir, backend, "fp32", log=print)
    finally:
        del hog
        torch.cuda.empty_cache()
    points = {json.loads(p.read_text())["batch"]: json.loads(p.read_text())
              for p in (combo_dir(plan.run_dir, backend, "fp32") / "points").glob("*.json")}
    assert points[128]["status"] == "oom", points[128].get("error")
    assert points[1]["status"] == "ok" and points[8]["status"] == "ok"
    assert status == {"points": 3, "ok": 2, "oom": 1, "error": 0}


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_kernel_profile_explains_the_timed_median(tmp_path, backend):
    """After the sweep, CUPTI profiles of the smallest and largest batch: GPU busy time per request is
    positive, never (much) above the timed median, and grows with the batch. (Busy time is the GPU's own
    work, which a slow host cannot change; the busy *share* of the timed median can, so it is not asserted.)"""
    params = RunParams.from_strings(model="efficientnet_b1", backends=backend, precisions="fp32",
                                    batch_sizes="1,32", device="cuda", iters=10, duration=0.1, warmup=0.05, rounds=2,
                                    cache_dir=str(tmp_path / "cache"))
    plan = make_plan(params, tmp_path / "reports")
    assert run_backend(plan.run_dir, backend, "fp32", log=print)["ok"] == 2
    prof = json.loads((combo_dir(plan.run_dir, backend, "fp32") / "kernels.json").read_text())["points"]
    by_batch = {p["batch"]: p for p in prof}
    assert sorted(by_batch) == [1, 32], prof
    for p in prof:
        assert "error" not in p, p.get("error")
        assert p["launches"] > 50  # efficientnet_b1: hundreds of kernels per request
        assert 0 < p["busy_ms"] <= p["device_median_ms"] * 1.1, p
        assert p["kernel_ms"] >= p["busy_ms"] * 0.999
        cats = {category(k["name"]) for k in p["kernels"]}
        assert "convolution / matmul" in cats, cats
    assert by_batch[32]["busy_ms"] > 4 * by_batch[1]["busy_ms"], prof  # 32x the images: several times the work
