"""TensorRT backends: an engine built from the exported ONNX (strongly typed, see lib.backends.tensorrt.build), run
through the name-based I/O API, plain (``trt``) or captured in a CUDA graph (``trt-cudagraph``).

torch owns the CUDA context, the allocator and the stream: I/O buffers are torch tensors bound by
pointer (``set_tensor_address``) and ``execute_async_v3`` enqueues on the engine's torch stream, so
the timer's CUDA events bracket exactly TensorRT's work. Works with ``tensorrt`` (10.12+ / 11) and
``tensorrt_rtx`` (RTX GPUs only: compute capability 7.5 to 12.x, not Hopper's 9.0). Options:
``workspace_gib`` (default 4), ``opt_level`` (0..5, default 3), ``tf32`` (default on), ``log`` (a
callable for build messages and warnings, default print).
TensorRT is imported inside methods, so ``import lib`` works without it.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ...common.errors import BenchbookError, ConfigError, UnavailableError
from ...config.dtypes import trt_torch_dtypes
from .. import register_engine
from ..base import TORCH, Engine
from .build import PRECISIONS as TRT_PRECISIONS
from .build import TENSORRT_LIBRARIES
from .build import onnx_variant as trt_onnx_variant

__all__ = ["TrtEngine", "TrtCudaGraph", "tensorrt_unavailable_reason", "tensorrt_install_hint"]


def tensorrt_install_hint(cuda_version: str | None = "auto") -> str:
    """``pip install tensorrt-cuXX`` matching torch's CUDA major (see lib.backends.tensorrt.build.install_hint)."""
    from .build import install_hint

    return install_hint(cuda_version)


def tensorrt_unavailable_reason(rtx_ok: bool = True) -> str | None:
    """None when TensorRT is installed; ``rtx_ok=False`` demands the full TensorRT (libnvinfer), as
    ONNX Runtime's TensorRT EP does, and TensorRT-RTX alone does not count."""
    if importlib.util.find_spec("tensorrt") is not None:
        return None
    if rtx_ok and importlib.util.find_spec("tensorrt_rtx") is not None:
        return None
    rtx = " (TensorRT-RTX is installed, but this needs the full TensorRT)" \
        if not rtx_ok and importlib.util.find_spec("tensorrt_rtx") else ""
    return f"TensorRT is not installed{rtx}: {tensorrt_install_hint()}"


def _module_gpu_reason() -> str | None:
    """Why the installed TensorRT cannot run on this GPU (it does not import; TensorRT-RTX and a GPU
    outside its targets, such as Hopper), or None."""
    from .build import gpu_identity, import_trt, rtx_unsupported_gpu_reason, supported_rtx_targets

    try:
        trt, flavour = import_trt()
    except UnavailableError as e:
        return str(e)
    gpu = gpu_identity()
    if flavour == "tensorrt_rtx" and gpu is not None and gpu[1] not in supported_rtx_targets(trt):
        return rtx_unsupported_gpu_reason(trt, *gpu)
    return None


@register_engine
class TrtEngine(Engine):
    backend = "trt"
    summary = "TensorRT (strongly typed engine from the ONNX)"
    # One execution context serves every shape: a bind sets its input shapes and tensor addresses (and
    # trt-cudagraph captures with them), so a kept binding could replay against another shape's
    # settings. Every switch binds afresh instead (the warm-up after a switch absorbs the cost).
    keeps_bindings = False
    devices = ("cuda",)
    needs_onnx = True
    libraries = (TORCH, *TENSORRT_LIBRARIES)

    @classmethod
    def precisions(cls, device):
        # bf16 needs a BF16 ONNX, which the export does not make yet (lib.backends.tensorrt.build says so)
        return TRT_PRECISIONS if device == "cuda" else ()

    @classmethod
    def onnx_variant(cls, precision):
        return trt_onnx_variant(precision)

    @classmethod
    def unavailable_reason(cls, device):
        if device != "cuda":
            return f"TensorRT runs on NVIDIA GPUs only (DEVICE=cuda), not on {device!r}"
        reason = tensorrt_unavailable_reason(rtx_ok=True)
        if reason:
            return reason
        from ..base import cuda_reason

        reason = cuda_reason()
        if reason:
            return reason
        return _module_gpu_reason()

    # --- load: build or reuse the engine, deserialize, make the context ------------------------------
    def _load(self):
        import torch

        from .build import build_engine, import_trt, trt_logger

        spec = self.spec
        self._torch = torch
        self._trt, self._flavour = import_trt()
        onnx = spec.artifacts.onnx.get(self.onnx_variant(spec.precision))
        if onnx is None:
            raise UnavailableError(f"{self.label}: no {spec.precision} ONNX model was exported (export.json in the run folder says why)")
        if spec.artifacts.cache_dir is None:
            raise BenchbookError(f"{self.label}: needs a cache folder (spec.artifacts.cache_dir) for its engines")
        self._log = spec.options.get("log") or print
        build = dict(workspace_gib=spec.options.get("workspace_gib", 4), opt_level=spec.options.get("opt_level", 3),
                     tf32=bool(spec.options.get("tf32", True)), log=self._log, flavour=self._flavour)
        result = build_engine(onnx, spec.model, spec.precision, spec.artifacts.cache_dir, **build)
        self._logger = trt_logger(self._trt, self._log)
        self._runtime = self._trt.Runtime(self._logger.impl)
        engine = self._deserialize(result)
        if engine is None and result.cache_hit:  # hash fine, yet TensorRT cannot load it (e.g. other GPU)
            self._log(f"[trt] warning: the cached engine {result.path} does not deserialize "
                      f"({'; '.join(self._logger.errors) or 'no error logged'}); rebuilding")
            result = build_engine(onnx, spec.model, spec.precision, spec.artifacts.cache_dir, force=True, **build)
            engine = self._deserialize(result)
        if engine is None:
            raise BenchbookError(f"{self.label}: {self._flavour} could not deserialize {result.path}: "
                                 f"{'; '.join(self._logger.errors) or 'no error logged'}")
        self._engine = engine
        self._context = engine.create_execution_context()  # allocates the engine's device memory now
        if self._context is None:
            raise BenchbookError(f"{self.label}: could not create an execution context "
                                 f"({'; '.join(self._logger.errors) or 'out of GPU memory?'})")
        self._io_names()
        to_torch = trt_torch_dtypes(self._trt)
        self._dtypes = {n: to_torch[engine.get_tensor_dtype(n)] for n in self._in + self._out}
        self._inputs = self._outputs = None
        self.info.update({"flavour": self._flavour, "trt_version": result.manifest.get("trt_version"),
                          "engine_key": result.key, "engine_path": str(result.path), "cache_hit": result.cache_hit,
                          "build_s": result.build_s, "engine_build_s": result.manifest.get("build_s"),
                          "target": result.manifest.get("target"), "workspace_gib": build["workspace_gib"],
                          "opt_level": build["opt_level"], "tf32": build["tf32"], "onnx": str(onnx),
                          "plan_warning": result.warning})

    def _deserialize(self, result):
        """The engine, or None when TensorRT refuses the plan (its reasons land in self._logger.errors)."""
        self._logger.errors = []
        try:
            return self._runtime.deserialize_cuda_engine(result.path.read_bytes())
        except Exception as e:  # some versions raise instead of returning None
            self._logger.errors.append(f"{type(e).__name__}: {e}")
            return None

    def _io_names(self):
        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        self._in = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_out = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        wanted_in = [s.name for s in self.spec.model.inputs]
        wanted_out = [o.name for o in self.spec.model.outputs]
        if sorted(self._in) != sorted(wanted_in) or not set(wanted_out) <= set(engine_out):
            raise ConfigError(f"{self.label}: the engine's inputs {self._in} / outputs {engine_out} do not match "
                              f"{self.spec.model.path}'s {wanted_in} / {wanted_out}")
        # Outputs in the config's order (what fetch returns), then any extra ones the engine has.
        self._out = wanted_out + [n for n in engine_out if n not in wanted_out]

    # --- bind: shapes, torch buffers, addresses --------------------------------------------------------
    def _bind(self, host_inputs):
        torch, ctx = self._torch, self._context
        self._inputs = self._outputs = None  # the old buffers go back to torch's pool first
        with torch.cuda.stream(self.stream):  # allocations and copies belong to the engine's stream
            inputs = {n: self._stage_input(n, host_inputs[n]) for n in self._in}
            unresolved = ctx.infer_shapes()
            if unresolved:
                raise BenchbookError(f"{self.label}: TensorRT cannot infer the shapes of {list(unresolved)} "
                                     f"from inputs {[tuple(t.shape) for t in inputs.values()]}")
            outputs = {n: self._alloc_output(n) for n in self._out}
        for name, t in {**inputs, **outputs}.items():
            if not ctx.set_tensor_address(name, t.data_ptr()):
                raise BenchbookError(f"{self.label}: set_tensor_address({name!r}) failed")
        self.stream.synchronize()  # bind is untimed: the inputs are on the device when it returns
        self._inputs, self._outputs = inputs, outputs

    def _stage_input(self, name: str, array: np.ndarray):
        torch = self._torch
        array = np.ascontiguousarray(array)
        if not self._context.set_input_shape(name, tuple(array.shape)):
            lo, opt, hi = self._engine.get_tensor_profile_shape(name, 0)
            raise ConfigError(f"{self.label}: input {name!r} of shape {list(array.shape)} is outside the engine's "
                              f"profile (min {list(lo)}, opt {list(opt)}, max {list(hi)}; from "
                              f"{self.spec.model.path})")
        # H2D on the current (engine) stream, then the cast to the engine's input dtype on the device.
        return torch.from_numpy(array).to("cuda").to(self._dtypes[name]).contiguous()

    def _alloc_output(self, name: str):
        shape = tuple(self._context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise UnavailableError(f"{self.label}: output {name!r} has a data-dependent shape {list(shape)}; "
                                   f"engines that need an output allocator are not supported")
        return self._torch.empty(shape, dtype=self._dtypes[name], device="cuda")

    # --- requests ----------------------------------------------------------------------------------------
    def _enqueue(self):
        # Asynchronous: returns once the work is queued on the stream; the timer's events mark it.
        if not self._context.execute_async_v3(self.stream.cuda_stream):
            raise BenchbookError(f"{self.label}: execute_async_v3 failed "
                                 f"({'; '.join(self._logger.errors[-5:]) or 'no error logged'})")

    def _run_bound(self):
        self._enqueue()

    def _host_outputs(self):
        # On the engine's stream: .cpu() queues the D2H after the enqueue and returns once it is done.
        with self._torch.cuda.stream(self.stream):
            return {o.name: self._outputs[o.name].float().cpu().numpy() for o in self.spec.model.outputs}

    def _fetch(self):
        return self._host_outputs()

    def _copy_in(self, host_inputs):
        torch = self._torch
        with torch.cuda.stream(self.stream):
            for n in self._in:
                dst, src = self._inputs[n], np.ascontiguousarray(host_inputs[n])
                if tuple(src.shape) != tuple(dst.shape):  # copy_ would broadcast silently
                    raise BenchbookError(f"{self.label}: infer() got {n!r} of shape {list(src.shape)}, but "
                                         f"{list(dst.shape)} is bound; call bind() with the new shape first")
                dst.copy_(torch.from_numpy(src))  # H2D from pageable memory + cast, on the engine's stream

    def _infer(self, host_inputs):
        self._copy_in(host_inputs)
        self._run_bound()
        return self._host_outputs()

    # --- memory and teardown -------------------------------------------------------------------------------
    def memory_stats(self):
        eng = getattr(self, "_engine", None)
        if eng is None:
            return {}
        # device_memory_size_v2: TRT >= 10 (the only one in 11); the context's activation memory, bytes.
        size = eng.device_memory_size_v2 if hasattr(eng, "device_memory_size_v2") else eng.device_memory_size
        stats = {"trt_engine_device_memory_bytes": int(size)}
        if self._outputs is not None:
            stats["trt_io_buffer_bytes"] = int(sum(t.numel() * t.element_size()
                                                   for t in (*self._inputs.values(), *self._outputs.values())))
        return stats

    def _close(self):
        # Context before engine before runtime: each refers to the next.
        self._inputs = self._outputs = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._torch.cuda.empty_cache()


@register_engine
class TrtCudaGraph(TrtEngine):
    """The engine's enqueue captured in a CUDA graph per bound shape; a request is one graph replay.

    Order as in trtexec: one enqueue + sync outside the capture (lazy initialisation and, on
    TensorRT-RTX, the just-in-time compile stay out of the graph), then capture on our stream. The
    graph freezes shapes and buffer addresses, so every bind captures anew.
    """

    backend = "trt-cudagraph"
    cuda_graph_variant = True
    summary = "TensorRT in a CUDA graph"

    def _bind(self, host_inputs):
        self._graph = None
        super()._bind(host_inputs)
        self._capture()

    def _capture(self):
        torch = self._torch
        self._enqueue()
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other threads' CUDA calls during the capture do not invalidate it (as trtexec).
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                ok = self._context.execute_async_v3(self.stream.cuda_stream)
            if not ok:
                raise RuntimeError("execute_async_v3 returned False during stream capture")
        except Exception as e:
            raise UnavailableError(f"{self.label}: this engine cannot be captured in a CUDA graph "
                                   f"({type(e).__name__}: {e}); backend 'trt' runs it without one") from e
        self.stream.synchronize()
        self._graph = graph

    def _run_bound(self):
        with self._torch.cuda.stream(self.stream):  # replay() launches on the current stream
            self._graph.replay()

    def _close(self):
        self._graph = None
        super()._close()
