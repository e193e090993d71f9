"""Seeded benchmark inputs: the same arrays for every backend at a point, so outputs compare."""

from __future__ import annotations

import zlib

import numpy as np

from .dtypes import numpy_dtype
from .model_config import ModelConfig, Shape

__all__ = ["make_inputs", "point_seed"]



def point_seed(seed: int, name: str, batch: int, shape: Shape, stream: str = "") -> int:
    """A stable seed per (run seed, input, batch, shape, stream); independent of backend and process. The
    default stream is the timed inputs; parity and its calibration draw from their own streams, so a check
    never sees the arrays the engine already has staged."""
    return zlib.crc32(f"{seed}|{name}|{batch}|{shape.label}{'|' + stream if stream else ''}".encode())


def make_inputs(cfg: ModelConfig, batch: int, shape: Shape, seed: int = 0, stream: str = "") -> dict[str, np.ndarray]:
    out = {}
    for spec in cfg.inputs:
        dims = spec.concrete_shape(batch, shape)
        rng = np.random.default_rng(point_seed(seed, spec.name, batch, shape, stream))
        kind = spec.data.get("kind", "normal")
        if kind == "normal":
            a = rng.standard_normal(dims, dtype=np.float32)
        elif kind == "uniform":
            a = rng.uniform(spec.data.get("low", 0.0), spec.data.get("high", 1.0), size=dims)
        elif kind == "ones":
            a = np.ones(dims)
        else:  # randint, high exclusive
            a = rng.integers(spec.data["low"], spec.data["high"], size=dims)
        out[spec.name] = np.ascontiguousarray(a.astype(numpy_dtype(spec.dtype)))
    return out
