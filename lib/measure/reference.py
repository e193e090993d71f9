"""The FP32 reference outputs that parity is judged against, computed in one place.

``torch_outputs`` runs the module (PyTorch, CPU) and names its outputs by the config, raising ``ConfigError``
where the module does not fit the config; ``onnx_cpu_outputs`` runs an ONNX file on ONNX Runtime's CPU EP (the
reference of a model given as ONNX, and the export's check of its own files). ``ReferenceOutputs`` computes a
run's reference once per key and caches it in ``<run_dir>/reference/<key>.npz``, so every backend's process
compares against the very same arrays. torch and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..common.cache import atomic_write_bytes
from ..common.errors import BenchbookError, ConfigError
from ..config.model_config import ModelConfig
from ..config.models import as_output_list, build_model

__all__ = ["torch_outputs", "onnx_cpu_session", "onnx_cpu_outputs", "ReferenceOutputs"]


def torch_outputs(model, cfg: ModelConfig, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The module's outputs (as float32 numpy) by the config's output names; a module whose inputs or outputs
    do not match the config raises ConfigError naming the field."""
    import torch

    names = [s.name for s in cfg.inputs]
    try:
        with torch.inference_mode():
            result = model(*[torch.from_numpy(inputs[n]) for n in names])
    except TypeError as e:  # forward() takes another number of arguments
        raise ConfigError(f"{cfg.path}: inputs: the module's forward() does not take the config's {len(names)} "
                          f"input(s) {names}, in that order: {e}") from e
    except Exception as e:
        raise BenchbookError(f"model {cfg.name!r}: forward() on the config's example inputs "
                             f"({', '.join(f'{n} {list(inputs[n].shape)} {inputs[n].dtype}' for n in names)}) raised "
                             f"{type(e).__name__}: {str(e)[:500]}") from e
    outs = as_output_list(result)
    if len(outs) != len(cfg.outputs) or not all(isinstance(t, torch.Tensor) for t in outs):
        got = ", ".join(f"{type(t).__name__} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                        for t in outs)
        raise ConfigError(f"{cfg.path}: outputs: lists {len(cfg.outputs)} ({', '.join(o.name for o in cfg.outputs)}), "
                          f"but the module returns {len(outs)}: {got}; list one output per tensor forward() "
                          f"returns, in order")
    return {o.name: t.float().numpy() for o, t in zip(cfg.outputs, outs)}


def onnx_cpu_session(path: Path | str):
    """An ONNX Runtime session on the CPU EP only (deterministic, and present in every onnxruntime build)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_cpu_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` (an ONNX path, or a session from ``onnx_cpu_session``) by its name."""
    sess = onnx_cpu_session(model) if isinstance(model, (str, Path)) else model
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


class ReferenceOutputs:
    """PyTorch FP32 outputs on CPU for a point's seeded inputs, computed once per run and cached in
    ``<run_dir>/reference``. Models without ``load.py`` use ONNX Runtime's CPU EP on the FP32 ONNX."""

    def __init__(self, run_dir: Path, cfg: ModelConfig, weights: str | None, onnx_fp32: Path | None,
                 cache_dir: Path | None = None):
        self.dir = Path(run_dir) / "reference"
        self.cfg, self.weights, self.onnx, self.cache_dir = cfg, weights, onnx_fp32, cache_dir
        self._model = None
        self._session = None

    def _torch(self) -> bool:
        return (self.cfg.folder / "load.py").exists()

    def source(self) -> str:
        return "PyTorch FP32 (CPU)" if self._torch() else "ONNX Runtime FP32 (CPU EP)"

    def get(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        path = self.dir / f"{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        outs = self._compute(inputs)
        buf = io.BytesIO()
        np.savez(buf, **outs)
        atomic_write_bytes(path, buf.getvalue())
        return outs

    def _compute(self, inputs):
        if self._torch():
            if self._model is None:
                self._model = build_model(self.cfg, self.weights or None, cache_dir=self.cache_dir).float()
            return torch_outputs(self._model, self.cfg, inputs)
        if self._session is None:  # one session for the run's keys: building it costs more than a run
            self._session = onnx_cpu_session(self.onnx)
        return onnx_cpu_outputs(self._session, inputs)
