"""PyTorch backends: eager, eager captured in a CUDA graph, and torch.compile (inductor).

Precision: the module's weights and float inputs are cast to the precision (fp16/bf16) on the
device; outputs are cast back to fp32 before the copy to the host, as the FP16 ONNX models
keep FP32 I/O. ``fp32`` follows the run's TF32 setting (``tf32`` option), like every backend.
Options: ``channels_last`` (4-D inputs and weights in NHWC), ``tf32``, ``compile_mode``.

Quantized precisions (``torch-compile`` only): torchao's ``quantize_`` on the module, then torch.compile,
torchao's documented inference path. ``int8``: ``Int8DynamicActivationInt8WeightConfig`` (weights INT8 per
row, activations quantized per token at run time; FP32 activations on a CPU, BF16 on a GPU); ``fp8``:
``Float8DynamicActivationFloat8WeightConfig`` on compute capability 8.9 or newer only (FP8 tensor cores),
BF16 activations. torchao quantizes ``nn.Linear`` layers; every other layer (convolutions, embeddings,
norms) stays in the activation precision, and ``info["torchao"]`` lists both by type. Not on ``torch``
(eager): there the quantized tensors dispatch op by op without inductor's fusions, which would time
torchao's dispatch rather than INT8 math.
"""

from __future__ import annotations

import time

import numpy as np

from ...common.errors import UnavailableError
from ...config.dtypes import precision_torch_dtype
from ...config.models import as_output_list, build_model
from .. import register_engine
from ..base import Engine, Lane, SerialLane

__all__ = ["TorchEager", "TorchCudaGraph", "TorchCompile"]


TORCHAO_CONFIGS = {"int8": "Int8DynamicActivationInt8WeightConfig", "fp8": "Float8DynamicActivationFloat8WeightConfig"}
FP8_MIN_CC = (8, 9)


def torchao_reason() -> str | None:
    """Why torchao cannot be used here (not installed, or it does not import with this torch), or None."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao; or pip install -e .[torchao])"
    return None


def gpu_compute_capability() -> tuple[int, int] | None:
    """The compute capability of the GPU CUDA lists first, from NVML (no torch import: the plan step uses it), or None."""
    try:
        from ...common.gpu import first_gpu_handle, nvml

        return tuple(nvml().nvmlDeviceGetCudaComputeCapability(first_gpu_handle()))
    except Exception:
        return None


# torch._int_mm (torchao's INT8 x INT8 matmul on CUDA) refuses a left operand of 16 rows or fewer: seen on an
# H200, bert_base's pooler (one row per batch item) failed every batch-1 point with "self.size(0) needs to be
# greater than 16, but got 1". On CUDA, Linear layers that see that few rows at the sweep's smallest batch stay
# in the activation precision, listed (a CNN's classifier too: its rows are the batch).
INT8_MIN_ROWS = 17


def linear_rows(module, inputs: list) -> dict[str, int]:
    """Rows (all dims but the last) each ``nn.Linear`` of ``module`` sees on ``inputs``, by qualified name."""
    import torch

    rows: dict[str, int] = {}
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear):
            def hook(_m, args, name=name):
                x = args[0]
                rows[name] = min(rows.get(name, x.numel()), x.numel() // max(1, x.shape[-1]))
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return rows


def torchao_quantize(module, precision: str, rows: dict[str, int] | None = None) -> dict:
    """``quantize_`` ``module`` in place with the precision's torchao config; returns what was quantized and
    what stayed in higher precision, by layer type (leaf modules that hold a weight). ``rows``: each Linear's
    row count on the smallest input (``linear_rows``); for INT8, those under ``INT8_MIN_ROWS`` are left out."""
    import torch
    import torchao
    from torchao import quantization as q

    config = getattr(q, TORCHAO_CONFIGS[precision])()
    few = sorted(n for n, r in (rows or {}).items() if r < INT8_MIN_ROWS) if precision == "int8" else []
    q.quantize_(module, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn not in few)
    quantized, kept = {}, {}
    for _, m in module.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or list(m.children()):
            continue
        plain = type(w) in (torch.nn.Parameter, torch.Tensor)
        (kept if plain else quantized)[type(m).__name__] = (kept if plain else quantized).get(type(m).__name__, 0) + 1
    out = {"config": TORCHAO_CONFIGS[precision], "torchao": torchao.__version__, "quantized": quantized,
           "kept_in_higher_precision": kept}
    if few:
        out["kept_few_rows"] = {n: rows[n] for n in few}
        out["kept_few_rows_why"] = (f"INT8 matmul (torch._int_mm) needs at least {INT8_MIN_ROWS} rows; these Linear "
                                    "layers see fewer at the profile's smallest batch")
    return out


class _TorchBase(Engine):
    summary = "PyTorch"
    _binding_attrs = ("_inputs", "_outputs")

    @classmethod
    def precisions(cls, device):
        return ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32", "bf16")

    def _load(self):
        import torch

        spec = self.spec
        self._torch = torch
        self._dev = torch.device(spec.device)
        self._dtype = precision_torch_dtype(spec.precision, spec.device)
        tf32 = bool(spec.options.get("tf32", True))
        if spec.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            # cuDNN's heuristics, not its per-shape autotuning: measured on an H200 (efficientnet_b1 in a CUDA
            # graph, batch 1/32/128) autotuning cost 6-7 s per shape at FP16 (1.7-2 s at FP32) in every process,
            # and the kernels it chose were no faster: FP16 1.498/3.491/9.648 ms against 1.397/3.499/9.515 ms
            # with heuristics, FP32 1.040/5.559/19.98 against 1.025/5.470/20.15 ms.
            torch.backends.cudnn.benchmark = False
        self._channels_last = self.resolve_channels_last(spec)
        model = build_model(spec.model, spec.artifacts.weights, cache_dir=spec.artifacts.cache_dir).to(
            self._dev, dtype=self._dtype)
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        if spec.precision in TORCHAO_CONFIGS:  # torch-compile only (precisions() says so): before compiling
            # (CUDA only: torch._int_mm's row limit is its CUDA kernel's; the CPU kernels take any row count)
            rows = linear_rows(model, self._smallest_inputs()) if spec.precision == "int8" and spec.device == "cuda" else None
            self.info["torchao"] = torchao_quantize(model, spec.precision, rows)
            self.info["activation_dtype"] = str(self._dtype).removeprefix("torch.")
        self.module = self._wrap(model)
        self.info.update({"tf32": tf32, "channels_last": self._channels_last})

    def _smallest_inputs(self) -> list:
        """The model's inputs at the smallest batch this engine will see (option ``min_batch``, the sweep's
        smallest; else the profile's) and the profile's opt shape, on the device (``linear_rows``)."""
        from ...config.inputs import make_inputs
        from ...config.model_config import BATCH_DIM

        cfg = self.spec.model
        batch = int(self.spec.options.get("min_batch") or cfg.profile_range(BATCH_DIM)[0])
        arrays = make_inputs(cfg, batch, cfg.opt_shape(), seed=0, stream="rows")
        return [self._to_device(s.name, arrays[s.name]) for s in cfg.inputs]

    @staticmethod
    def resolve_channels_last(spec) -> bool:
        """The ``channels_last`` option, or when unset (auto): NHWC for FP16/BF16 on CUDA with a 4-D
        input, where tensor-core convolutions run NHWC natively; NCHW otherwise."""
        choice = spec.options.get("channels_last")
        if choice is not None:
            return bool(choice)
        return (spec.device == "cuda" and spec.precision in ("fp16", "bf16")
                and any(len(s.dims) == 4 for s in spec.model.inputs))

    def _wrap(self, model):
        return model

    def _to_device(self, name: str, array: np.ndarray):
        torch = self._torch
        t = torch.from_numpy(np.ascontiguousarray(array)).to(self._dev)
        if t.is_floating_point():
            t = t.to(self._dtype)
        if self._channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _bind(self, host_inputs):
        torch = self._torch
        order = [s.name for s in self.spec.model.inputs]
        with self._on_stream(), torch.inference_mode():
            self._inputs = [self._to_device(n, host_inputs[n]) for n in order]
        self._sync()
        self._outputs = None

    def _forward(self):
        return as_output_list(self.module(*self._inputs))

    def _run_bound(self):
        with self._on_stream(), self._torch.inference_mode():
            self._outputs = self._forward()

    def _fetch(self):
        with self._on_stream():
            host = [o.float().cpu().numpy() for o in self._outputs]  # .cpu() waits for the stream
        return dict(zip([o.name for o in self.spec.model.outputs], host))

    def _infer(self, host_inputs):
        torch = self._torch
        order = [s.name for s in self.spec.model.inputs]
        with self._on_stream(), torch.inference_mode():
            for dst, name in zip(self._inputs, order):
                dst.copy_(torch.from_numpy(host_inputs[name]))  # H2D (pageable host memory) + cast on device
            self._outputs = self._forward()
            host = [o.float().cpu().numpy() for o in self._outputs]  # D2H; returns once the data is on the host
        return dict(zip([o.name for o in self.spec.model.outputs], host))

    def _on_stream(self):
        import contextlib

        return self._torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _sync(self):
        if self.stream is not None:
            self.stream.synchronize()

    def memory_stats(self):
        if self.spec.device != "cuda":
            return {}
        cuda = self._torch.cuda
        return {"torch_max_allocated_bytes": int(cuda.max_memory_allocated()),
                "torch_max_reserved_bytes": int(cuda.max_memory_reserved())}

    def reset_memory_stats(self):
        if self.spec.device == "cuda":
            self._torch.cuda.reset_peak_memory_stats()

    def _close(self):
        self.module = None
        self._inputs = self._outputs = None
        if self.spec.device == "cuda":
            self._torch.cuda.empty_cache()


@register_engine
class TorchEager(_TorchBase):
    backend = "torch"
    summary = "PyTorch eager"

    def lane(self):
        """On a GPU: its own CUDA stream and input tensors, run from its own thread, so requests of several
        lanes overlap (eager modules in eval mode keep no per-call state, so threads may share one).

        On a CPU: serial. Eager CPU kernels parallelise over one OpenMP intra-op pool, and OpenMP gives every
        calling thread a team of its own: measured on a 2-core host (tiny CNN, batch 8, 2 intra-op threads),
        a request issued from a worker thread took 0.33 ms against 0.18 ms from the main thread (the same
        with 1 intra-op thread: 0.21 ms either way), and two lanes' teams on the same cores doubled each
        other's latency; after such threads had run, rounds of single requests on the main thread were
        seen at a 64 ms median (0.19 ms before). So in-flight requests queue for the one pool on the
        measuring thread, which is what a server with one eager CPU model instance does."""
        self._require_loaded()
        if self.spec.device != "cuda":
            return SerialLane(self, "serial: in-flight requests queue for the one intra-op (OpenMP) pool")
        return _TorchStreamLane(self)


class _TorchStreamLane(Lane):
    """A lane with its own CUDA stream and its own input tensors (made per request from the host arrays)."""

    parallel = True
    kind = "own CUDA stream and thread per lane"

    def __init__(self, engine: "TorchEager"):
        self.engine = engine
        self.stream = engine._torch.cuda.Stream()
        self.order = [s.name for s in engine.spec.model.inputs]
        self.names = [o.name for o in engine.spec.model.outputs]

    def __call__(self, host_inputs):
        e, torch = self.engine, self.engine._torch
        with torch.cuda.stream(self.stream), torch.inference_mode():
            outs = as_output_list(e.module(*[e._to_device(n, host_inputs[n]) for n in self.order]))
            return dict(zip(self.names, [o.float().cpu().numpy() for o in outs]))  # .cpu() waits for its stream


@register_engine
class TorchCudaGraph(_TorchBase):
    """Eager module captured once per bound shape in a CUDA graph; a request is one graph replay.

    Capture follows the documented order: warm up on a side stream, then capture on ours. The
    graph reads the static input buffers, so ``infer`` copies new host data into them first.
    """

    backend = "torch-cudagraph"
    summary = "PyTorch eager in a CUDA graph"
    devices = ("cuda",)
    cuda_graph_variant = True
    _binding_attrs = ("_inputs", "_outputs", "_graph", "_static_out")  # one graph (and its memory pool) per key

    @classmethod
    def precisions(cls, device):
        return ("fp32", "fp16", "bf16") if device == "cuda" else ()

    def _bind(self, host_inputs):
        super()._bind(host_inputs)
        torch = self._torch
        with torch.inference_mode():
            with self._on_stream():
                for _ in range(3):  # warm-up before capture: cuDNN autotuning and lazy init stay out of the graph
                    self._forward()
            self._sync()
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, stream=self.stream):
                self._static_out = self._forward()
        self._sync()

    def _run_bound(self):
        with self._on_stream():
            self._graph.replay()
        self._outputs = self._static_out

    def _infer(self, host_inputs):
        torch = self._torch
        order = [s.name for s in self.spec.model.inputs]
        with self._on_stream(), torch.inference_mode():  # the static inputs are inference tensors
            for dst, name in zip(self._inputs, order):
                dst.copy_(torch.from_numpy(host_inputs[name]))
            self._graph.replay()
            host = [o.float().cpu().numpy() for o in self._static_out]
        self._outputs = self._static_out
        return dict(zip([o.name for o in self.spec.model.outputs], host))

    def _close(self):
        self._graph = self._static_out = None
        super()._close()


@register_engine
class TorchCompile(_TorchBase):
    """torch.compile with inductor; ``compile_mode`` option (default 'default'; 'max-autotune' on request).

    Compilation happens on the first request of each shape, which the warm-up absorbs; its time
    is recorded as ``compile_s`` per point (the first call), not as latency.
    """

    backend = "torch-compile"
    summary = "torch.compile (inductor)"
    in_auto = ("cuda",)  # on a CPU, inductor compiles for minutes per shape: ask for it by name

    @classmethod
    def auto_precisions(cls, device):
        # Inductor compiles each batch size for ~15 s (efficientnet_b1, H200): auto runs the precision
        # it serves best; fp32 and bf16 by name (PRECISIONS=fp32 BACKENDS=torch-compile).
        return ("fp16",)

    @classmethod
    def precisions(cls, device):
        # int8 / fp8: torchao (see the module docstring); fp8 needs a GPU, and one of compute capability >= 8.9
        return ("fp32", "fp16", "bf16", "int8", "fp8") if device == "cuda" else ("fp32", "bf16", "int8")

    @classmethod
    def precision_unavailable_reason(cls, device, precision, model=None):
        if precision not in TORCHAO_CONFIGS:
            return None
        reason = torchao_reason()
        if reason:
            return reason
        if precision == "fp8":
            cc = gpu_compute_capability()
            if cc is not None and tuple(cc) < FP8_MIN_CC:
                return (f"FP8 needs compute capability {FP8_MIN_CC[0]}.{FP8_MIN_CC[1]} or newer (Ada, Hopper, "
                        f"Blackwell: FP8 tensor cores); this GPU is {cc[0]}.{cc[1]}")
        if model is not None and not (model.folder / "load.py").exists():
            return "torchao quantizes a PyTorch module; this model is given as ONNX"
        return None

    @classmethod
    def unavailable_reason(cls, device):
        import shutil

        if device == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
            return "inductor on CPU needs a C compiler (none on PATH)"
        return None

    # Shapes one engine may compile. dynamo's recompile_limit (8 by default) counts the graphs compiled for one
    # function; past it, dynamo silently runs the function eagerly. A sweep compiles one graph per bound shape
    # (dynamic=False), so the limit is raised per engine, and reaching it is made an error, never eager numbers.
    MAX_SHAPES = 256

    def _wrap(self, model):
        import torch._dynamo.config as dynamo_config

        mode = self.spec.options.get("compile_mode", "default")
        backend = self.spec.options.get("compile_backend", "inductor")  # "eager": dynamo without codegen (tests)
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, self.MAX_SHAPES)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * self.MAX_SHAPES)
        if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
            dynamo_config.fail_on_recompile_limit_hit = True
        self.info.update(compile_mode=mode, compile_backend=backend)
        self._compiled_shapes: dict[tuple, int] = {}
        # dynamo caches graphs per code object and guards on tensor properties, not on the module: a second
        # engine of the same model in one process (the load stage's picks, a test) would reuse the first's
        # graphs, compile nothing, and be refused below as eager. Engines live one at a time (a sweep process
        # holds one; the load stage opens its picks one after another), so a fresh cache per engine is safe.
        self._torch._dynamo.reset()
        return self._torch.compile(model, mode=mode, dynamic=False, backend=backend)

    def _bind(self, host_inputs):
        from torch._dynamo.utils import counters

        super()._bind(host_inputs)
        shape = tuple(tuple(t.shape) for t in self._inputs)
        before = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        self._run_bound()  # first call of this shape: compiles
        self._sync()
        compile_s = time.perf_counter() - t0
        graphs = counters["stats"]["unique_graphs"] - before
        if shape not in self._compiled_shapes and graphs < 1:
            # a new shape that compiled nothing ran eagerly (a limit, a fallback): its numbers would be eager's
            raise UnavailableError(f"{self.label}: torch.compile compiled no graph for input shape {shape} "
                                   f"(dynamo ran it eagerly; {len(self._compiled_shapes)} shapes compiled before, "
                                   f"recompile_limit {self._torch._dynamo.config.recompile_limit}); not measured "
                                   f"as torch-compile")
        if shape in self._compiled_shapes:  # bound again (parity, kernel profile): keep the first bind's figures
            self._compiled_shapes[shape] += graphs
            return
        self._compiled_shapes[shape] = graphs
        self.info["compile_s"] = compile_s
        self.info["compile_graphs"] = graphs  # graphs dynamo compiled for this shape (its first call)
        self.info["compile_graphs_total"] = sum(self._compiled_shapes.values())
