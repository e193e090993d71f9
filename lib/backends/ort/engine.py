"""ONNX Runtime backends: CPU EP on a CPU, CUDA EP (IO binding on device buffers) on a GPU,
the CUDA EP in its CUDA-graph mode, and the TensorRT EP where TensorRT's libraries exist.

On a GPU the inputs and outputs live in torch-allocated device buffers bound by pointer, and ORT
runs on the engine's torch stream (``user_compute_stream``), so the timer's CUDA events bracket
exactly ORT's work. ORT silently falls back to the CPU when a provider cannot start; that is
checked after the session is made and turned into an error, never a mislabelled result.
"""

from __future__ import annotations

import numpy as np

from ...common.errors import UnavailableError
from ...config.dtypes import numpy_to_torch, ort_numpy_dtype
from .. import register_engine
from ..base import TORCH, Engine, Lane, Library
from ..tensorrt.build import PRECISIONS as TRT_PRECISIONS
from ..tensorrt.build import TENSORRT_LIBRARIES
from ..tensorrt.build import onnx_variant as trt_onnx_variant

__all__ = ["OrtEngine", "OrtCudaGraph", "OrtTensorRT", "ONNXRUNTIME"]

# The GPU build (onnxruntime-gpu) first: it is the one a CUDA run needs, and it also serves the CPU.
ONNXRUNTIME = Library("onnxruntime", ("onnxruntime-gpu", "onnxruntime"))

def ort_install_hint() -> str:
    return "pip install onnxruntime-gpu (its CPU provider also serves CPU-only machines)"


def cuda_provider_reason(providers: list[str], version: str) -> str | None:
    """Why ORT cannot run on CUDA: the installed package has no CUDA provider (the CPU-only onnxruntime)."""
    if "CUDAExecutionProvider" in providers:
        return None
    return (f"onnxruntime {version} has no CUDAExecutionProvider (it offers {', '.join(providers) or 'none'}: the "
            f"CPU-only package?); pip uninstall onnxruntime && pip install onnxruntime-gpu")


def linked_trt_major(provider_lib) -> int | None:
    """The TensorRT major version ONNX Runtime's TensorRT EP library was linked against (its libnvinfer.so.N
    dependency), or None when it cannot be read. Read from the library's bytes: the dependency name is a
    plain string in its dynamic section, and loading the library to find out would need CUDA's libraries."""
    import re
    from pathlib import Path

    try:
        found = re.search(rb"libnvinfer\.so\.(\d+)", Path(provider_lib).read_bytes())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def trt_version_reason(linked: int | None, installed: str | None, ort_version: str) -> str | None:
    """Why the TensorRT EP cannot load the installed TensorRT: a different major version than it links."""
    if linked is None or not installed:
        return None
    major = int(str(installed).split(".")[0])
    if major == linked:
        return None
    return (f"onnxruntime {ort_version}'s TensorRT EP links TensorRT {linked} (libnvinfer.so.{linked}), but TensorRT "
            f"{installed} is installed; install TensorRT {linked}.x for ort-trt (e.g. pip install "
            f"'tensorrt-cu12>={linked},<{linked + 1}'), or leave ort-trt out")


def parse_node_placements(text: str) -> dict:
    """{provider: {"nodes": n, "op_types": {op: count}}} from ONNX Runtime's verbose session log, whose
    VerifyEachNodeIsAssignedToAnEp lines read " All nodes placed on [CPUExecutionProvider]. Number of nodes: 11"
    or, per provider, " Node(s) placed on [<EP>]. Number of nodes: <n>" followed by "  <OpType> (<node name>)"."""
    import re

    out: dict = {}
    current = None
    for line in text.splitlines():
        body = line.split("] ", 1)[1] if "VerifyEachNodeIsAssignedToAnEp]" in line else None
        if body is None:
            current = None
            continue
        m = re.search(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)", body)
        if m:
            current = out.setdefault(m.group(1), {"nodes": int(m.group(2)), "op_types": {}})
            continue
        m = re.match(r"\s{2,}(\S+) \(", body)
        if m and current is not None:
            current["op_types"][m.group(1)] = current["op_types"].get(m.group(1), 0) + 1
    return out


def node_placements(ort, path, providers, base_options) -> dict:
    """Where ONNX Runtime places each node of ``path`` for ``providers``: a throwaway session with verbose
    logging, its log read from the process's stderr (ORT's C++ logger writes there). Returns the per-provider
    counts and the CPU EP's share, or the reason it could not be read."""
    import os
    import tempfile

    so = ort.SessionOptions()
    so.graph_optimization_level = base_options.graph_optimization_level
    so.log_severity_level, so.log_verbosity_level = 0, 0
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                ort.InferenceSession(str(path), sess_options=so, providers=providers)
            finally:
                os.dup2(saved, 2)
            sink.seek(0)
            placed = parse_node_placements(sink.read().decode(errors="replace"))
    except Exception as e:  # noqa: BLE001 - recorded, never fatal: the timed session is made separately
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        os.close(saved)
    cpu = placed.get("CPUExecutionProvider", {"nodes": 0, "op_types": {}})
    return {"providers": placed, "cpu_nodes": cpu["nodes"], "cpu_op_types": cpu["op_types"],
            "source": "ONNX Runtime's verbose log (VerifyEachNodeIsAssignedToAnEp)"}


@register_engine
class OrtEngine(Engine):
    backend = "ort"
    summary = "ONNX Runtime (CPU EP on CPU, CUDA EP with IO binding on GPU)"
    needs_onnx = True
    libraries = (TORCH, ONNXRUNTIME)
    provider = None  # chosen by device

    @classmethod
    def precisions(cls, device):
        # FP16 ONNX (Cast at the I/O) runs on the CPU EP too, but slowly and not representatively. INT8 is the QDQ
        # file (lib.artifacts.quantize): integer kernels on the CPU EP; on the CUDA EP Q/DQ kernels around float math.
        return ("fp32", "fp16", "int8") if device == "cuda" else ("fp32", "int8")

    @classmethod
    def unavailable_reason(cls, device):
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return f"onnxruntime is not installed ({ort_install_hint()})"
        if device == "cuda":
            from ..base import cuda_reason

            reason = cuda_reason()
            if reason:
                return reason
            import onnxruntime as ort

            return cuda_provider_reason(list(ort.get_available_providers()), ort.__version__)
        return None

    def _providers(self):
        if self.spec.device == "cpu":
            return ["CPUExecutionProvider"]
        opts = {
            "device_id": 0,
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "use_tf32": "1" if self.spec.options.get("tf32", True) else "0",
        }
        if self.spec.options.get("ort_user_stream", True):
            opts["user_compute_stream"] = str(self.stream.cuda_stream)  # ORT runs on our stream; events time it
        opts.update(self.spec.options.get("ort_cuda") or {})  # any other CUDA EP option, passed through
        if self._cuda_graph:
            opts["enable_cuda_graph"] = "1"
        return [("CUDAExecutionProvider", opts)]

    _cuda_graph = False
    # On a GPU every binding gets a session of its own: measured on an H200 (efficientnet_b1, ORT 1.31.1),
    # switching one CUDA EP session between four batch sizes cost 1.5-6 s per switch (its per-shape
    # kernel state is rebuilt), so rounds that interleave points took 18-70 s instead of 3.7 s. A session
    # per binding keeps each shape's state; creating one takes well under a second here.
    # A binding of the shape the current session already serves (the parity check's fresh input, right after
    # its point's binding) reuses that session: its per-shape state is the one wanted, and a new session would
    # repeat cuDNN's exhaustive algorithm search (about 6 s a shape for FP16 on the H200). Not in CUDA-graph
    # mode, where a session's graph holds its first binding's addresses.
    _session_per_binding = True
    _binding_attrs = ("_feeds", "_last", "_in_bufs", "_out_bufs", "_binding", "session", "_run_options",
                      "_session_shapes")

    def _load(self):
        import onnxruntime as ort

        self._ort = ort
        path = self.spec.artifacts.onnx.get(self.onnx_variant(self.spec.precision))
        if path is None:
            raise UnavailableError(f"{self.label}: no {self.spec.precision} ONNX model was exported (export.json in the run folder says why)")
        if self.spec.device == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the pip-installed CUDA/cuDNN libraries, if any
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.spec.options.get("ort_threads"):
            so.intra_op_num_threads = int(self.spec.options["ort_threads"])
        wanted = self._providers()
        self.session = None
        # A session per binding (below) learns nothing new from a second strict attempt: once the first session
        # said whether every node runs on the GPU provider, later ones are made the way that one was.
        known = self.info.get("cpu_ep_fallback")
        if self.spec.device == "cuda" and known in (None, "none"):
            # First with CPU fallback disabled: a node the GPU provider cannot run would otherwise run on the
            # CPU EP unnoticed (copies and host time inside "GPU" figures). If that fails, the session is made
            # with fallback and the report says which message ORT gave.
            strict = ort.SessionOptions()
            strict.graph_optimization_level, strict.log_severity_level = so.graph_optimization_level, 3
            if self.spec.options.get("ort_threads"):
                strict.intra_op_num_threads = int(self.spec.options["ort_threads"])
            strict.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            try:
                self.session = ort.InferenceSession(str(path), sess_options=strict, providers=wanted)
                self.info["cpu_ep_fallback"] = "none"
            except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/RuntimeException types
                self.info["cpu_ep_fallback"] = " ".join(f"{type(e).__name__}: {e}".split())[:600]
        if self.session is None:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=wanted)
        got = self.session.get_providers()
        if self.spec.device == "cuda" and self.spec.precision == "int8" and not getattr(self, "_placed", False):
            # Which nodes ORT puts on which provider (its verbose log, the only place it says): a quantized graph
            # is where the CUDA EP lacks kernels. Once per engine: a session per binding repeats the same graph.
            self._placed = True
            self.info["node_placement"] = node_placements(ort, path, wanted, so)
        first = wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
        if got[0] != first:
            raise UnavailableError(f"{self.label}: ONNX Runtime could not start {first} (it would run on {got}); "
                                   f"check the CUDA/cuDNN libraries that onnxruntime-gpu {ort.__version__} needs")
        self.info.update({"providers": got, "onnx": str(path), "ort_version": ort.__version__})
        self._in_names = [i.name for i in self.session.get_inputs()]
        self._out_names = [o.name for o in self.session.get_outputs()]
        self._in_types = {i.name: ort_numpy_dtype(i.type) for i in self.session.get_inputs()}
        self._run_options = ort.RunOptions()
        if self.spec.device == "cuda" and self.spec.options.get("ort_user_stream", True):
            # Let run_with_iobinding return without waiting for the GPU, so pipelined requests overlap;
            # the timer's end event on our stream is the sync point.
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _host(self, host_inputs):
        return {n: np.ascontiguousarray(host_inputs[n], dtype=self._in_types[n]) for n in self._in_names}

    # --- CPU: session.run on numpy arrays (device-resident and end-to-end coincide but for conversions)
    def _bind(self, host_inputs):
        if self.spec.device == "cpu":
            self._feeds = self._host(host_inputs)
            self._last = None
            return
        shapes = tuple((n, tuple(np.shape(host_inputs[n]))) for n in sorted(host_inputs))
        if (self._session_per_binding and getattr(self, "_bound_once", False)
                and (self._cuda_graph or shapes != getattr(self, "_session_shapes", None))):
            self._load()  # a fresh session for this binding (see _session_per_binding)
        self._bound_once = True
        self._session_shapes = shapes
        self._bind_cuda(host_inputs)

    def _run_bound(self):
        if self.spec.device == "cpu":
            self._last = self.session.run(self._out_names, self._feeds)
        else:
            self.session.run_with_iobinding(self._binding, self._run_options)

    def _fetch(self):
        if self.spec.device == "cpu":
            return dict(zip(self._out_names, self._last))
        return self._outputs_to_host()

    def _outputs_to_host(self):
        """Outputs to host arrays (FP32 for float outputs); returns once they are on the host."""
        if self._out_bufs is None:  # ORT-owned outputs (CUDA-graph mode)
            self.stream.synchronize()
            return {n: (a.astype(np.float32) if a.dtype == np.float16 else a)
                    for n, a in zip(self._out_names, self._binding.copy_outputs_to_cpu())}
        with self._torch.cuda.stream(self.stream):
            return {n: t.float().cpu().numpy() for n, t in zip(self._out_names, self._out_bufs)}  # D2H, waits

    def _infer(self, host_inputs):
        if self.spec.device == "cpu":
            return dict(zip(self._out_names, self.session.run(self._out_names, self._host(host_inputs))))
        torch = self._torch
        with torch.cuda.stream(self.stream):
            for n, buf in zip(self._in_names, self._in_bufs):
                buf.copy_(torch.from_numpy(np.ascontiguousarray(host_inputs[n])))  # H2D
            self.session.run_with_iobinding(self._binding, self._run_options)
        return self._outputs_to_host()

    def lane(self):
        """Parallel: ``session.run`` on host arrays from each lane's own thread. ONNX Runtime lets several
        threads run one session at once (each call has its own feeds and outputs) and releases the GIL
        while it runs. On a CPU the calls share the session's intra-op thread pool (measured: 0.093 ms per
        request from a worker thread and from the main thread alike, tiny CNN batch 8); on a GPU they share
        the session's compute stream, so host work and copies overlap while kernels run in turn."""
        self._require_loaded()
        return _OrtRunLane(self)

    # --- CUDA: IO binding on torch buffers
    def _bind_cuda(self, host_inputs):
        import torch

        self._torch = torch
        host = self._host(host_inputs)
        self._in_bufs = [torch.from_numpy(host[n]).to("cuda") for n in self._in_names]
        torch.cuda.synchronize()
        # Output shapes: one run with ORT-allocated outputs tells them (dynamic dims resolved).
        probe = self.session.io_binding()
        for n, t in zip(self._in_names, self._in_bufs):
            probe.bind_input(n, "cuda", 0, self._in_types[n], tuple(t.shape), t.data_ptr())
        for n in self._out_names:
            probe.bind_output(n, "cuda", 0)
        self.session.run_with_iobinding(probe)
        torch.cuda.synchronize()
        if self._cuda_graph:
            # With enable_cuda_graph this first run is the one ORT captured, with ORT-owned output
            # buffers: replays write there, so this binding must stay the one we run.
            self._binding, self._out_bufs = probe, None
            return
        shapes = [tuple(v.shape()) for v in probe.get_outputs()]
        out_types = [ort_numpy_dtype(o.type) for o in self.session.get_outputs()]
        self._out_bufs = [torch.empty(s, dtype=numpy_to_torch(t), device="cuda") for s, t in zip(shapes, out_types)]
        b = self.session.io_binding()
        for n, t in zip(self._in_names, self._in_bufs):
            b.bind_input(n, "cuda", 0, self._in_types[n], tuple(t.shape), t.data_ptr())
        for n, t, dt in zip(self._out_names, self._out_bufs, out_types):
            b.bind_output(n, "cuda", 0, dt, tuple(t.shape), t.data_ptr())
        self._binding = b
        del probe
        torch.cuda.synchronize()

    def memory_stats(self):
        return {}

    def _close(self):
        self.session = None
        self._binding = None
        self._in_bufs = self._out_bufs = None


@register_engine
class OrtCudaGraph(OrtEngine):
    """CUDA EP with ``enable_cuda_graph``: the first run captures, later runs replay.

    A graph fixes shapes and addresses, so a new session is made per bound shape.
    """

    backend = "ort-cudagraph"
    cuda_graph_variant = True
    summary = "ONNX Runtime CUDA EP in CUDA-graph mode"
    devices = ("cuda",)
    _cuda_graph = True  # a graph is tied to its session's first bound shape: the session per binding is needed

    @classmethod
    def precisions(cls, device):
        return ("fp32", "fp16") if device == "cuda" else ()

    def lane(self):  # a captured graph has fixed buffers: one request at a time
        return Engine.lane(self)


@register_engine
class OrtTensorRT(OrtEngine):
    """ONNX Runtime's TensorRT EP, with engine and timing caches and the model's profile shapes."""

    backend = "ort-trt"
    libraries = (TORCH, ONNXRUNTIME, TENSORRT_LIBRARIES[0])  # the EP loads TensorRT (not TensorRT-RTX)
    summary = "ONNX Runtime TensorRT EP"
    devices = ("cuda",)
    # One session: its engine covers the profile's shapes; a new session per binding would rebuild or
    # reload engines. It does not keep bindings either, as the session's state follows the last shape.
    _session_per_binding = False
    keeps_bindings = False

    @classmethod
    def precisions(cls, device):
        return TRT_PRECISIONS if device == "cuda" else ()  # the TensorRT build's (the EP's strongly typed path)

    @classmethod
    def onnx_variant(cls, precision):
        return trt_onnx_variant(precision)

    @classmethod
    def unavailable_reason(cls, device):
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        from ..tensorrt.engine import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason(rtx_ok=False)
        if reason:
            return reason
        from pathlib import Path

        import onnxruntime as ort

        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            return f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider"
        lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
        try:
            import tensorrt

            installed = tensorrt.__version__
        except Exception as e:  # noqa: BLE001 - a TensorRT that will not import cannot serve the EP either
            return f"TensorRT does not import ({type(e).__name__}: {str(e)[:200]})"
        return trt_version_reason(linked_trt_major(lib), installed, ort.__version__)

    def _providers(self):
        cfg = self.spec.model
        cache = self.spec.artifacts.cache_dir
        fmt = {}
        for key in ("min", "opt", "max"):
            fmt[key] = ",".join(f"{s.name}:" + "x".join(str(v) for v in getattr(s, key)) for s in cfg.inputs)
        trt_opts = {
            "device_id": 0,
            "user_compute_stream": str(self.stream.cuda_stream),
            "trt_profile_min_shapes": fmt["min"], "trt_profile_opt_shapes": fmt["opt"],
            "trt_profile_max_shapes": fmt["max"],
        }
        if cache is not None:
            path = str(cache / "ort-trt")
            trt_opts.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": path,
                             "trt_timing_cache_enable": "1", "trt_timing_cache_path": path})
        # The FP16 ONNX carries its dtypes; on TRT >= 10 the EP then builds strongly typed.
        return [("TensorrtExecutionProvider", trt_opts)] + super()._providers()


class _OrtRunLane(Lane):
    parallel = True

    def __init__(self, engine: OrtEngine):
        self.engine = engine
        where = "intra-op thread pool" if engine.spec.device == "cpu" else "compute stream"
        self.kind = f"concurrent session.run, one thread per lane (they share the session's {where})"

    def __call__(self, host_inputs):
        e = self.engine
        return dict(zip(e._out_names, e.session.run(e._out_names, e._host(host_inputs))))
