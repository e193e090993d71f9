"""lib.config.inputs: seeded benchmark inputs, the same for every backend and process at a point; dtypes and
shapes from the config; each data kind."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lib.config.inputs import make_inputs, point_seed
from lib.config.model_config import Shape, parse_model_config

from conftest import REPO


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A model with one input of every data kind and several dtypes."""
    def inp(name, dtype, data, dims=("batch", "seq")):
        n = len(dims)
        return {"name": name, "dtype": dtype, "dims": list(dims), "example": [2, 8][:n], "runtime": [-1, -1][:n],
                "profile": {"min": [1, 4][:n], "opt": [2, 8][:n], "max": [8, 32][:n]}, "data": data}

    raw = {"name": "multi", "inputs": [
        inp("ids", "int64", {"kind": "randint", "low": 5, "high": 9}),
        inp("types", "int32", {"kind": "randint", "low": 0, "high": 2}),
        inp("mask", "bool", {"kind": "ones"}),
        inp("noise", "float16", {"kind": "normal"}),
        inp("u", "float32", {"kind": "uniform", "low": -2.0, "high": -1.0}),
        inp("bf", "bfloat16", {"kind": "normal"}),
        inp("scale", "float32", {"kind": "uniform"}, dims=("batch",)),
    ], "outputs": [{"name": "y", "dims": ["batch"]}], "defaults": {"shapes": [16]}}
    return parse_model_config(raw, tmp_path_factory.mktemp("multi") / "config.yaml")


def test_tiny_inputs(tiny):
    shape = tiny.parse_shape("48x20")
    x = make_inputs(tiny, 3, shape, seed=0)
    assert list(x) == ["image"]
    a = x["image"]
    assert a.shape == (3, 3, 48, 20) and a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    assert abs(float(a.mean())) < 0.1 and 0.9 < float(a.std()) < 1.1  # kind 'normal': N(0, 1)


def test_same_point_same_arrays(tiny):
    shape = tiny.shapes[0]
    a = make_inputs(tiny, 4, shape, seed=0)["image"]
    b = make_inputs(tiny, 4, shape, seed=0)["image"]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change", ["seed", "batch", "shape"])
def test_other_point_other_arrays(tiny, change):
    base = dict(batch=4, shape=tiny.parse_shape("32x32"), seed=0)
    other = dict(base)
    other[change] = {"seed": 1, "batch": 5, "shape": tiny.parse_shape("32x40")}[change]
    a = make_inputs(tiny, **base)["image"]
    b = make_inputs(tiny, **other)["image"]
    n = min(a.shape[0], b.shape[0])
    assert not np.array_equal(a[:n, :, :32, :32], b[:n, :, :32, :32])


def test_point_seed_is_stable_across_processes(tiny):
    """crc32, not hash(): the same seed in every kernel (each backend runs in its own process)."""
    shape = tiny.shapes[0]
    here = make_inputs(tiny, 4, shape, seed=7)["image"]
    code = ("import sys, numpy as np; from lib.config.models import get_model; from lib.config.inputs import make_inputs; "
            "cfg = get_model('tiny_cnn', sys.argv[1]); "
            "sys.stdout.buffer.write(make_inputs(cfg, 4, cfg.shapes[0], seed=7)['image'].tobytes())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(tiny.folder.parent)], capture_output=True, env=env,
                         check=True, cwd=REPO).stdout
    assert out == here.tobytes()
    assert point_seed(7, "image", 4, shape) == point_seed(7, "image", 4, shape)
    assert len({point_seed(s, n, b, shape) for s in (0, 1) for n in ("a", "b") for b in (1, 2)}) == 8


def test_each_input_has_its_own_stream(multi):
    x = make_inputs(multi, 4, Shape((("seq", 16),)), seed=0)
    assert not np.array_equal(x["noise"].astype(np.float32), x["bf"])


def test_dtypes_shapes_and_kinds(multi):
    shape = multi.parse_shape("16")
    x = make_inputs(multi, 4, shape, seed=3)
    assert list(x) == [s.name for s in multi.inputs]
    expect = {"ids": np.int64, "types": np.int32, "mask": np.bool_, "noise": np.float16, "u": np.float32,
              "bf": np.float32, "scale": np.float32}  # bfloat16 inputs are hosted as float32
    for name, dtype in expect.items():
        assert x[name].dtype == dtype, name
        assert x[name].shape == ((4,) if name == "scale" else (4, 16)), name
        assert x[name].flags["C_CONTIGUOUS"]
    assert x["ids"].min() >= 5 and x["ids"].max() <= 8 and len(np.unique(x["ids"])) == 4  # high is exclusive
    assert set(np.unique(x["types"])) == {0, 1}
    assert x["mask"].all()
    assert (x["u"] >= -2).all() and (x["u"] < -1).all()
    assert (x["scale"] >= 0).all() and (x["scale"] < 1).all()  # uniform defaults to [0, 1)
    assert np.isfinite(x["noise"]).all() and x["noise"].std() > 0.5
