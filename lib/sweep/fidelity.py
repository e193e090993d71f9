"""Checks of the harness itself, printed as figures (``make fidelity``; needs a CUDA GPU).

1. The harness's PyTorch CUDA median at batch 32 against ``torch.utils.benchmark``'s
   ``blocked_autorange`` on the same module and input, in one process, in short paired rounds
   (A B, then B A, ...): each round's ratio compares two measurements taken seconds apart, so a
   host whose speed wanders over tens of seconds moves both alike, and the figure is the median of
   the paired ratios (with their range), not a ratio of medians taken at different moments. The
   latency mode syncs per request, ``blocked_autorange`` pipelines a block of calls and syncs
   once; the harness's pipelined throughput mode is the like-for-like figure and both are shown.
2. The sampler thread's cost: the same measurement with and without the background sampler, in
   the same paired rounds, median of the ratios.
3. What the harness's device-resident median holds beyond the GPU's own work, per backend (PyTorch
   eager and, where installed, ONNX Runtime's CUDA EP, FP32): the timed median against the GPU busy
   time per request that CUPTI records (``lib.measure.kernels``), and the kernels that take it. At a
   kernel-bound batch the two agree; a gap is host time (launches, framework overhead).

Usage: ``python -m lib.sweep.fidelity [--model efficientnet_b1] [--batch 32] [--rounds 10] [--duration 0.5] [--cache build]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace

import numpy as np

from ..backends import EngineSpec, make_engine
from ..config.inputs import make_inputs
from ..config.models import get_model
from ..measure.sampler import Sampler
from ..measure.timing import TimingPolicy, measure_latency, measure_throughput


def _harness(engine, policy):
    lat = measure_latency(engine.run_bound, engine.timer(), policy, "device")
    thr = measure_throughput(engine.run_bound, engine.timer(), policy, float(np.median(lat.ms)))
    return float(np.median(lat.ms)), float(np.median(thr.ms))


def _autorange(engine, min_run_time: float) -> float:
    import torch.utils.benchmark as tb

    m = tb.Timer(stmt="engine.run_bound()", globals={"engine": engine}).blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.sweep.fidelity")
    ap.add_argument("--model", default="efficientnet_b1")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10, help="paired rounds per check")
    ap.add_argument("--duration", type=float, default=0.5, help="seconds per measurement in a round")
    ap.add_argument("--cache", default="build", help="cache folder for the exported ONNX (check 3, ONNX Runtime)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("fidelity checks need a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    cfg = get_model(args.model)
    shape = cfg.shapes[0]
    policy = TimingPolicy(warmup_s=0.1, min_iters=20, min_duration_s=args.duration)
    inputs = make_inputs(cfg, args.batch, shape, seed=0)
    print(f"model {cfg.name}, batch {args.batch}, shape {shape.label}, GPU {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}; {args.rounds} paired rounds of {args.duration:g} s")
    with make_engine("torch", EngineSpec(model=cfg, precision="fp32", device="cuda")) as engine:
        engine.bind(inputs)
        _harness(engine, replace(policy, warmup_s=1.0))  # first warm-up: cuDNN autotuning, clocks
        lat, thr, ref = [], [], []
        for i in range(args.rounds):
            if i % 2:  # B A in odd rounds: a steady drift cancels in the median of the ratios
                ref.append(_autorange(engine, args.duration))
                a, b = _harness(engine, policy)
            else:
                a, b = _harness(engine, policy)
                ref.append(_autorange(engine, args.duration))
            lat.append(a)
            thr.append(b)
        r_lat = [a / b for a, b in zip(lat, ref)]
        r_thr = [a / b for a, b in zip(thr, ref)]
        print("1. per round, harness latency / pipelined / blocked_autorange medians (ms):")
        for a, b, c in zip(lat, thr, ref):
            print(f"      {a:8.3f} {b:8.3f} {c:8.3f}")
        print(f"   paired ratio latency/autorange   {statistics.median(r_lat):.4f} (range {min(r_lat):.4f}-{max(r_lat):.4f})")
        print(f"   paired ratio pipelined/autorange {statistics.median(r_thr):.4f} (range {min(r_thr):.4f}-{max(r_thr):.4f})"
              f"  (target within ±3%)")
        spread = (max(ref) - min(ref)) / statistics.median(ref)
        print(f"   the reference itself moved {spread:.1%} across rounds (host noise the pairing cancels)")
        ratios = []
        for i in range(args.rounds):
            def sampled():
                with Sampler(gpu=True):
                    return float(np.median(measure_latency(engine.run_bound, engine.timer(), policy, "device").ms))

            def plain():
                return float(np.median(measure_latency(engine.run_bound, engine.timer(), policy, "device").ms))

            first, second = (sampled, plain) if i % 2 else (plain, sampled)
            x, y = first(), second()
            with_s, without = (x, y) if i % 2 else (y, x)
            ratios.append(with_s / without)
        print(f"2. sampler cost: median paired ratio with/without = {statistics.median(ratios):.4f} "
              f"(range {min(ratios):.4f}-{max(ratios):.4f}; target < 1.01)")
    _busy_check(cfg, inputs, policy, args.cache)
    return 0


def _busy_check(cfg, inputs, policy, cache: str) -> None:
    """Check 3: timed device median vs CUPTI GPU busy time, per backend."""
    import importlib.util
    from pathlib import Path

    from ..backends import Artifacts
    from ..measure.kernels import profile_requests

    print("3. timed device median vs GPU busy time per request (CUPTI):")
    specs = [("torch", {})]
    if importlib.util.find_spec("onnxruntime") is not None:
        from ..artifacts.export import ensure_onnx

        onnx = {p: r.path for p, r in ensure_onnx(cfg, Path(cache) / "onnx", precisions=("fp32",)).items()}
        specs.append(("ort", onnx))
    else:
        print("   ort: skipped (onnxruntime is not installed)")
    for backend, onnx in specs:
        with make_engine(backend, EngineSpec(model=cfg, precision="fp32", device="cuda",
                                             artifacts=Artifacts(onnx=onnx))) as engine:
            engine.bind(inputs)
            median = float(np.median(measure_latency(engine.run_bound, engine.timer(), policy, "device").ms))
            prof = profile_requests(engine.run_bound, iters=20)  # after the timing: CUPTI slows launches
        print(f"   {backend + '/fp32':11s} timed {median:8.3f} ms, GPU busy {prof.busy_ms:8.3f} ms "
              f"({prof.busy_ms / median:.1%} of the request; {prof.launches:.0f} launches)")
        for k in prof.kernels[:4]:
            print(f"      {k['ms']:7.3f} ms  x{k['calls']:4.0f}  {k['category']:26s} {k['short']}")


if __name__ == "__main__":
    sys.exit(main())
