"""Where the GPU time of one inference goes: every CUDA kernel, memcpy and memset, as CUPTI records them.

``torch.profiler`` (Kineto over CUPTI) sees every kernel launched in the process, whoever launched it:
PyTorch, ONNX Runtime, cuDNN, cuBLAS, TensorRT. One profile of ``iters`` device-resident requests gives,
per request:

* ``busy_ms``: the union of the intervals during which any kernel or copy ran, i.e. GPU busy time;
* ``kernel_ms``: the plain sum of their durations (above ``busy_ms`` only when work overlaps);
* the time and count of each kernel name.

Set beside the measured (un-profiled) device median, ``busy_ms / median`` tells whether a point is
kernel-bound (the GPU was busy the whole request: only faster kernels help) or launch-bound (the GPU
waited for the host: CUDA graphs or larger batches help). The profile runs after every timed
measurement of a sweep, because CUPTI adds host overhead per launch; its figures are per request
and never replace the timed ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

__all__ = ["KernelProfile", "aggregate", "busy_us", "category", "short_name", "profile_requests", "CATEGORIES"]

# Ordered: the first rule whose words appear in the lower-cased kernel name wins. Names are what the
# libraries compiled in, so these are heuristics; the full name is kept beside the category.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("copy/memset", ("memcpy", "memset")),
    ("layout (NCHW<->NHWC, transpose, cast)", ("nchwtonhwc", "nhwctonchw", "transpose", "converttensor", "op_cast",
                                               "_cast<", "cast_kernel", "reorder")),
    ("attention", ("fmha", "flash", "attention", "sdpa", "mha_")),
    ("convolution / matmul", ("conv", "gemm", "xmma", "cutlass", "nvjet", "gemv", "dot_kernel", "splitkreduce",
                              "implicit_convolve", "fprop", "winograd", "fft", "matmul", "cublas")),
    ("normalization", ("bn_fw", "batch_norm", "batchnorm", "layer_norm", "layernorm", "group_norm", "groupnorm",
                       "skiplayernorm", "rms_norm", "rmsnorm")),
    ("reduction / pooling", ("reduce", "pool", "mean", "softmax")),
    ("elementwise / activation", ("elementwise", "op_generic_tensor", "op_tensor", "silu", "sigmoid", "gelu", "relu",
                                  "tanh", "add", "mul", "div", "unary", "binary", "pointwise", "triton_poi",
                                  "fused", "bias")),
)
CATEGORIES = tuple(name for name, _ in _RULES) + ("other",)
_MATMUL, _REDUCTION, _ELEMENTWISE = "convolution / matmul", "reduction / pooling", "elementwise / activation"


def _head(name: str) -> str:
    """A kernel's name without ``void`` and without its C++ parameter list (parameter types such as
    ``reducedDivisorArray`` or ``cudnnActivationStruct`` say nothing about what the kernel does)."""
    s = name.strip()
    if s.startswith("void "):
        s = s[5:]
    if not s.endswith(")"):
        return s
    depth = 0
    for i in range(len(s) - 1, -1, -1):  # the last top-level parenthesis group
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                head = s[:i]
                # a signature's parameters; "Memcpy HtoD (Pageable -> Device)" keeps its words
                if head and (name.lstrip().startswith("void ") or "<" in head or "::" in head):
                    return head
                return s
    return s


def category(name: str) -> str:
    """What a kernel does, from its name (heuristic): one of ``CATEGORIES``."""
    low = _head(name).lower()
    # Inductor names its Triton kernels after every op they fuse ("triton_poi_fused_convolution_silu_0"):
    # its prefix says what the kernel does (poi: pointwise, red/per: reduction, tem: a template, e.g. a matmul).
    for prefix, label in (("triton_poi", _ELEMENTWISE), ("triton_red", _REDUCTION), ("triton_per", _REDUCTION),
                          ("triton_tem", _MATMUL)):
        if low.startswith(prefix):
            return label
    for label, words in _RULES:
        if any(w in low for w in words):
            return label
    return "other"


def short_name(name: str, limit: int = 90) -> str:
    """A kernel's name without ``void``, its parameter list and the common namespaces, cut to ``limit``."""
    s = re.sub(r"(?<![\w:])(?:at::native::|onnxruntime::cuda::|onnxruntime::contrib::cuda::|\(anonymous namespace\)::)+",
               "", _head(name))
    s = re.sub(r"\s+", " ", s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def busy_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (µs): the time at least one of them was running."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


@dataclass
class KernelProfile:
    """Per-request figures of one profiled point (ms; ``calls`` per request)."""

    iters: int
    busy_ms: float
    kernel_ms: float
    launches: float
    kernels: list[dict] = field(default_factory=list)  # name, short, category, calls, ms; slowest first

    def to_dict(self) -> dict:
        """What ``kernels.json`` keeps: names and figures only. ``short`` and ``category`` are derived from the
        name whenever a run is loaded (``lib.results.run``), so a record never disagrees with today's rules."""
        return {"iters": self.iters, "busy_ms": self.busy_ms, "kernel_ms": self.kernel_ms, "launches": self.launches,
                "kernels": [{"name": k["name"], "calls": k["calls"], "ms": k["ms"]} for k in self.kernels]}


def aggregate(events: Iterable[tuple[str, float, float]], iters: int) -> KernelProfile:
    """``events``: (name, start_us, end_us) of every GPU activity recorded over ``iters`` requests."""
    if iters < 1:
        raise ValueError(f"iters={iters!r}: expected an integer >= 1")
    events = list(events)
    per_name: dict[str, list[float]] = {}
    for name, s, e in events:
        if e < s:
            raise ValueError(f"kernel {name!r} ends before it starts ({s} > {e} µs)")
        acc = per_name.setdefault(name, [0.0, 0])
        acc[0] += e - s
        acc[1] += 1
    kernels = [{"name": n, "short": short_name(n), "category": category(n), "calls": c / iters, "ms": us / 1e3 / iters}
               for n, (us, c) in per_name.items()]
    kernels.sort(key=lambda k: -k["ms"])
    return KernelProfile(iters=iters, busy_ms=busy_us((s, e) for _, s, e in events) / 1e3 / iters,
                         kernel_ms=sum(k["ms"] for k in kernels), launches=len(events) / iters, kernels=kernels)


def profile_requests(step: Callable[[], None], iters: int = 10, warmup: int = 3) -> KernelProfile:
    """Run ``step`` (one device-resident request) ``warmup`` times, then ``iters`` times under CUPTI.

    Sync points: ``torch.cuda.synchronize()`` (the whole device, so work on streams torch does not know,
    e.g. ONNX Runtime's own, is finished) before the profile starts and before it stops.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    events = [(e.name, float(e.time_range.start), float(e.time_range.end)) for e in prof.events()
              if e.device_type == DeviceType.CUDA]
    if not events:
        raise RuntimeError("CUPTI recorded no GPU activity (is another profiler attached, or CUPTI missing?)")
    return aggregate(events, iters)
