"""The one engine interface every backend implements.

Life cycle: ``load()`` (build the session, engine or module), then per benchmark point
``bind(host_inputs)`` (stage inputs on the device and allocate outputs; not timed), then any
number of ``run_bound()`` (one request on the bound device buffers; asynchronous on a GPU:
the timer's events on ``stream`` mark it) and ``infer(host_inputs)`` (end-to-end: host arrays
in, host arrays out, copies included; returns when the outputs are on the host); ``fetch()``
copies the last ``run_bound`` outputs to the host. ``close()`` frees everything; an engine is
also a context manager.

``bind(host_inputs, key=...)`` keeps each keyed binding (its device buffers, CUDA graph, IO
binding or session: the attributes a backend names in ``_binding_attrs``), so a benchmark point
measured in several interleaved rounds is staged and captured once, and switching back to it is a
pointer swap; ``release_bindings()`` drops them. A backend whose bindings share state that a new
bind reconfigures (a TensorRT execution context's shapes) sets ``keeps_bindings = False`` and is
bound afresh on every switch.

Subclasses implement the ``_``-prefixed hooks; the base checks state and inputs so that
every backend keeps the same contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..common.errors import BenchbookError
from ..config.model_config import ModelConfig
from ..measure.timing import CpuTimer, CudaEventTimer

__all__ = ["Engine", "EngineSpec", "Artifacts", "Library", "TORCH", "Lane", "SerialLane", "cuda_reason"]


@dataclass(frozen=True)
class Library:
    """A library a backend needs: its import name, and the distributions (pip names) that may install it, in
    order of preference; the environment table records the version of each one installed."""

    module: str
    distributions: tuple[str, ...]


# Every engine stages its GPU buffers and streams with torch, so every backend needs it.
TORCH = Library("torch", ("torch",))


@dataclass
class Artifacts:
    """Files an engine may load: ONNX models by precision, a cache folder, user weights."""

    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX path
    cache_dir: Path | None = None
    weights: Path | None = None
    models_dir: Path | None = None


@dataclass
class EngineSpec:
    model: ModelConfig
    precision: str
    device: str  # "cpu" or "cuda"
    artifacts: Artifacts = field(default_factory=Artifacts)
    options: dict = field(default_factory=dict)


class Engine(ABC):
    """One backend at one precision on one device."""

    backend: ClassVar[str]  # the name BACKENDS and the report use
    summary: ClassVar[str] = ""  # a short title (the run's summary.json, the report's tables)
    libraries: ClassVar[tuple[Library, ...]] = (TORCH,)  # what it imports; their versions are recorded
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    needs_onnx: ClassVar[bool] = False  # True: built from the exported ONNX, not the torch module
    in_auto: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # devices on which BACKENDS=auto picks it
    cuda_graph_variant: ClassVar[bool] = False  # another backend's engine replayed as a CUDA graph (auto: FP16 only)
    # The attributes that hold one binding's state; ``bind(..., key=)`` keeps them per key.
    _binding_attrs: ClassVar[tuple[str, ...]] = ()
    keeps_bindings: ClassVar[bool] = True

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.loaded = False
        self.bound_inputs: dict[str, np.ndarray] | None = None
        self.stream = None  # torch.cuda.Stream on a GPU: every request of this engine runs on it
        self.info: dict = {}  # what the engine found out while loading (build time, provider, ...)
        self.bound_key = None
        self._bindings: dict = {}  # key -> {attribute: value} of a kept binding

    # --- what can run where -------------------------------------------------------------------
    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        """Precisions this backend runs on ``device``."""
        return ("fp32",)

    @classmethod
    def auto_precisions(cls, device: str) -> tuple[str, ...]:
        """What PRECISIONS=auto runs: FP32 on a CPU; on a GPU FP32 and FP16, and a CUDA-graph variant FP16 only.
        The rest by name: BF16 runs the same tensor cores as FP16 for inference and rarely differs from it; a CUDA
        graph's gain (launch overhead removed) is largest where kernels are shortest, at FP16; quantized ones
        (int8, fp8) need calibration and cost accuracy. Every configuration adds about 20 s to a GPU run."""
        from ..config.params import QUANTIZED

        floats = tuple(p for p in cls.precisions(device) if p not in QUANTIZED)
        if device != "cuda":
            return tuple(p for p in floats if p == "fp32")
        return tuple(p for p in floats if p in (("fp16",) if cls.cuda_graph_variant else ("fp32", "fp16")))

    @classmethod
    def onnx_variant(cls, precision: str) -> str:
        """Which exported ONNX file (``Artifacts.onnx`` key, ``lib.artifacts.export.ensure_onnx`` precision) this backend
        loads at ``precision``: the precision's own, but for INT8 on TensorRT (``int8_trt``, lib.artifacts.quantize)."""
        return precision

    @classmethod
    def precision_unavailable_reason(cls, device: str, precision: str, model=None) -> str | None:
        """None if ``precision`` (one of ``precisions(device)``) can run here for ``model``, else why not; checked by
        the plan step, before any work (e.g. a library it needs is missing, the GPU lacks FP8)."""
        return None

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        """None if this backend can run on ``device`` here, else why not (with an install hint)."""
        return None

    # --- life cycle ---------------------------------------------------------------------------
    def load(self) -> "Engine":
        if self.spec.device == "cuda":
            import torch

            self.stream = torch.cuda.Stream()
        self._load()
        self.loaded = True
        return self

    def close(self) -> None:
        self.release_bindings()
        if self.loaded:
            self._close()
        self.loaded = False
        self.bound_inputs = None

    def __enter__(self) -> "Engine":
        return self.load() if not self.loaded else self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests -----------------------------------------------------------------------------
    def bind(self, host_inputs: dict[str, np.ndarray], key=None) -> None:
        """Stage ``host_inputs`` on the device (untimed). With a ``key`` the binding is kept: a later
        ``bind(..., key)`` with the same key switches back to it without staging or capturing again
        (the caller promises the same inputs for the same key)."""
        self._require_loaded()
        if key is not None and key == self.bound_key:
            return
        if key is not None and key in self._bindings:
            for name, value in self._bindings[key].items():
                setattr(self, name, value)
            self.bound_key = key
            return
        self._check_inputs(host_inputs)
        self._bind(host_inputs)
        self.bound_inputs = host_inputs
        self.bound_key = key
        if key is not None and self.keeps_bindings:
            self._bindings[key] = {n: getattr(self, n, None) for n in (*self._binding_attrs, "bound_inputs")}

    def release_bindings(self) -> None:
        """Forget every kept binding (their buffers are freed once nothing else refers to them)."""
        self._bindings.clear()
        self.bound_key = None

    def run_bound(self) -> None:
        if self.bound_inputs is None:
            raise BenchbookError(f"{self.backend}: run_bound() before bind()")
        self._run_bound()

    def fetch(self) -> dict[str, np.ndarray]:
        return self._fetch()

    def infer(self, host_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """End-to-end: copy in, run, copy out. Inputs must have the bound shapes."""
        if self.bound_inputs is None:
            self.bind(host_inputs)
        return self._infer(host_inputs)

    def lane(self) -> "Lane":
        """A ``Lane`` for the load generator (``lib.measure.load``): one end-to-end request per call. This default is
        *serial*: the engine's bound buffers (a CUDA graph's fixed addresses, a TensorRT context's shapes) are
        shared, so its requests run one at a time on the calling thread; backends that can run requests side
        by side override it."""
        self._require_loaded()
        return SerialLane(self, "serial: one request at a time on the engine's shared buffers")

    def timer(self):
        return CudaEventTimer(self.stream) if self.spec.device == "cuda" else CpuTimer()

    def memory_stats(self) -> dict:
        """The framework's own view of its device memory (bytes), where it gives one."""
        return {}

    def reset_memory_stats(self) -> None:
        pass

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.spec.precision}"

    # --- hooks --------------------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _bind(self, host_inputs: dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def _run_bound(self) -> None: ...

    @abstractmethod
    def _fetch(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _infer(self, host_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        pass

    # --- checks -------------------------------------------------------------------------------
    def _require_loaded(self) -> None:
        if not self.loaded:
            raise BenchbookError(f"{self.backend}: call load() first")

    def _check_inputs(self, host_inputs: dict[str, np.ndarray]) -> None:
        expected = [s.name for s in self.spec.model.inputs]
        if sorted(host_inputs) != sorted(expected):
            raise BenchbookError(f"{self.label}: inputs {sorted(host_inputs)} do not match the model's {expected}")


class Lane:
    """One in-flight slot of the load generator: ``lane(host_inputs) -> host outputs`` (end-to-end: returns
    once the outputs are on the host, so the host clock sees the whole request).

    ``parallel``: lanes of one engine may run at once, each from its own thread (``lib.measure.load`` gives each its
    thread); False: requests must come one at a time from the thread that measures (``lib.measure.load`` then
    queues the in-flight requests in front of it). ``kind`` says in words what a lane is on this backend."""

    parallel = False
    kind = ""

    def __call__(self, host_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class SerialLane(Lane):
    """Requests through ``Engine.infer``, re-bound (a kept binding per input shape) when the shape changes."""

    def __init__(self, engine: Engine, kind: str):
        self.engine = engine
        self.kind = kind

    def __call__(self, host_inputs):
        key = ("load",) + tuple(sorted((k, v.shape) for k, v in host_inputs.items()))
        self.engine.bind(host_inputs, key=key)  # a switch to a kept binding is a pointer swap
        return self.engine.infer(host_inputs)


def cuda_reason() -> str | None:
    """Why a CUDA backend cannot run here (no NVIDIA GPU, no torch, a torch without CUDA), or None. The
    driver is asked first (NVML, no torch import), so a machine without a GPU answers fast."""
    from ..config.device import nvml_gpus

    if not nvml_gpus():
        return "no NVIDIA GPU on this machine"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} cannot use the GPU (CPU-only build, or driver too old)"
    return None
