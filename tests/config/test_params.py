"""lib.config.params: every run parameter is parsed from the Makefile's strings, and every bad value is a
ConfigError whose one-line message names the parameter, the value as typed and what is valid."""

from __future__ import annotations

import pytest

from lib.common.errors import ConfigError
from lib.config.params import (COMPILE_MODES, MAX_ITERS, RunParams, check_make_path, parse_float, parse_int,
                               parse_int_list, parse_list, show)


def _error(**raw) -> str:
    with pytest.raises(ConfigError) as e:
        RunParams.from_strings(**{"model": "tiny_cnn", **raw}).precision_list()
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --- good values ----------------------------------------------------------------------------------------
def test_defaults_and_parsed_values(tmp_path):
    p = RunParams.from_strings(model=" tiny_cnn ", batch_sizes="1,8", shapes="32x32", warmup="0.05", iters="3",
                               duration="0.5", seed="7", unstable_cv="0.1", channels_last="1", tf32="0",
                               trt_workspace_gib="2", trt_opt_level="5", compile_mode="max-autotune",
                               cache_dir=str(tmp_path / "c"), models_dir=str(tmp_path))
    assert p.model == "tiny_cnn" and (p.warmup, p.iters, p.duration, p.seed) == (0.05, 3, 0.5, 7)
    assert p.tf32 is False and p.trt_opt_level == 5
    assert p.cache_dir == str(tmp_path / "c") and p.models_path == tmp_path
    assert RunParams.from_strings(model="m", precisions="FP16, fp32").precision_list() == ["fp16", "fp32"]
    assert RunParams.from_strings(model="m").precision_list() is None


def test_load_parameters():
    p = RunParams.from_strings(model="m")
    assert (p.load, p.load_enabled, p.concurrency_list(), p.rate_list()) == ("auto", True, [1, 2, 4, 8],
                                                                              [(0.5, "x"), (0.9, "x")])
    p = RunParams.from_strings(model="m", load="ALL", concurrency="1, 3", rates="0.25x, 200")
    assert (p.load, p.concurrency_list(), p.rate_list()) == ("all", [1, 3], [(0.25, "x"), (200.0, "rps")])
    assert not RunParams.from_strings(model="m", load="none").load_enabled
    assert not RunParams.from_strings(model="m", load="0").load_enabled


def test_lists():
    assert parse_list("BACKENDS", " torch , ort ") == ["torch", "ort"]
    assert parse_list("BACKENDS", "torch;ort") == ["torch", "ort"]
    assert parse_int_list("BATCH_SIZES", "1, 8,32") == [1, 8, 32]


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = RunParams.from_strings(model="m", cache_dir="build", models_dir="models")
    assert p.cache_dir == str(tmp_path / "build") and p.models_dir == str(tmp_path / "models")


# --- bad values: the message names the parameter, the value and what is valid ----------------------------
@pytest.mark.parametrize("raw, words", [
    ({"batch_sizes": "0"}, ["BATCH_SIZES=0 is not valid", "whole numbers >= 1", "BATCH_SIZES=1,8,32", "auto"]),
    ({"batch_sizes": "-4"}, ["BATCH_SIZES=-4 is not valid", ">= 1"]),
    ({"batch_sizes": "1,0,8"}, ["BATCH_SIZES=1,0,8: 0 is not valid", ">= 1"]),
    ({"batch_sizes": "abc"}, ["BATCH_SIZES=abc is not a whole number", "e.g. BATCH_SIZES=1,8,32"]),
    ({"batch_sizes": "1.5"}, ["BATCH_SIZES=1.5 is not a whole number"]),
    ({"batch_sizes": "1 8"}, ["BATCH_SIZES='1 8'", "separate values with commas"]),
    ({"batch_sizes": "1,,8"}, ["BATCH_SIZES=1,,8 has an empty item", "single commas"]),
    ({"batch_sizes": "1,8,"}, ["BATCH_SIZES=1,8, has an empty item"]),
    ({"batch_sizes": "8,1,8"}, ["BATCH_SIZES=8,1,8 repeats 8"]),
    ({"batch_sizes": ""}, ["BATCH_SIZES is empty", "auto"]),
    ({"shapes": ""}, ["SHAPES is empty", "auto"]),
    ({"backends": ""}, ["BACKENDS is empty", "auto"]),
    ({"iters": "0"}, ["ITERS=0 is not valid", f"from 1 to {MAX_ITERS}"]),
    ({"iters": "-3"}, ["ITERS=-3 is not valid"]),
    ({"iters": "abc"}, ["ITERS=abc is not a whole number", "from 1 to"]),
    ({"iters": "2.5"}, ["ITERS=2.5 is not a whole number"]),
    ({"iters": ""}, ["ITERS='' is not a whole number"]),
    ({"iters": str(MAX_ITERS + 1)}, [f"ITERS={MAX_ITERS + 1} is not valid", f"from 1 to {MAX_ITERS}"]),
    ({"duration": "0"}, ["DURATION=0 is not valid", "seconds > 0"]),
    ({"duration": "-1"}, ["DURATION=-1 is not valid", "seconds > 0"]),
    ({"duration": "1s"}, ["DURATION=1s is not a number", "seconds > 0"]),
    ({"duration": "nan"}, ["DURATION=nan is not valid"]),
    ({"duration": "inf"}, ["DURATION=inf is not valid"]),
    ({"warmup": "0"}, ["WARMUP=0 is not valid", "seconds > 0"]),
    ({"warmup": "-0.2"}, ["WARMUP=-0.2 is not valid"]),
    ({"warmup": "x"}, ["WARMUP=x is not a number"]),
    ({"seed": "-1"}, ["SEED=-1 is not valid", ">= 0"]),
    ({"unstable_cv": "-0.1"}, ["UNSTABLE_CV=-0.1 is not valid"]),
    ({"unstable_cv": "5"}, ["UNSTABLE_CV=5 is not valid", "a fraction >= 0 and <= 1"]),  # flagged nothing
    ({"duration": "100000"}, ["DURATION=100000 is not valid", "seconds > 0 and <= 600"]),
    ({"warmup": "1000"}, ["WARMUP=1000 is not valid", "seconds > 0 and <= 300"]),
    ({"channels_last": "maybe"}, ["CHANNELS_LAST=maybe is not valid", "auto, 1 or 0"]),
    ({"tf32": "2"}, ["TF32=2 is not valid", "1 or 0"]),
    ({"trt_workspace_gib": "0"}, ["TRT_WORKSPACE=0 is not valid", "GiB"]),
    ({"trt_opt_level": "9"}, ["TRT_OPT_LEVEL=9 is not valid", "from 0 to 5"]),
    ({"compile_mode": "fast"}, ["COMPILE_MODE=fast is not a torch.compile mode", *COMPILE_MODES]),
    ({"precisions": "fp64"}, ["PRECISIONS=fp64 is not a precision", "fp32, fp16, bf16, int8, fp8 or auto"]),
    ({"precisions": "fp32,tf32"}, ["PRECISIONS=fp32,tf32: tf32", "fp32 with TF32=1", "fp32, fp16, bf16"]),
    ({"max_acc_drop": "2"}, ["MAX_ACC_DROP=2", "needs labelled images", "DATA=", "auto or parity"]),
    ({"max_acc_drop": "lots", "data": "/tmp"}, ["MAX_ACC_DROP=lots is not valid", "auto", "parity", "0 to 100"]),
    ({"max_acc_drop": "150", "data": "/tmp"}, ["MAX_ACC_DROP=150 is not valid", "0 to 100"]),
    ({"max_acc_drop": "-1", "data": "/tmp"}, ["MAX_ACC_DROP=-1 is not valid"]),
    ({"calib": "a b"}, ["CALIB=", "contains a space"]),
    ({"precisions": "fp32,fp32"}, ["PRECISIONS=fp32,fp32 repeats"]),
    ({"precisions": ""}, ["PRECISIONS is empty"]),
    ({"cache_dir": ""}, ["CACHE_DIR is empty"]),
    ({"cache_dir": "/tmp/my cache"}, ["CACHE_DIR='/tmp/my cache' contains a space", "make cannot handle"]),
    ({"weights": "/tmp/w$1.pth"}, ["WEIGHTS='/tmp/w$1.pth' contains '$'"]),
    ({"models_dir": "/tmp/a:b"}, ["MODELS_DIR='/tmp/a:b' contains ':'"]),
    ({"load": "some"}, ["LOAD=some is not valid", "auto", "all", "none or 0"]),
    ({"concurrency": "0"}, ["CONCURRENCY=0 is not valid", "whole numbers >= 1", "CONCURRENCY=1,2,4,8"]),
    ({"concurrency": "1,2,two"}, ["CONCURRENCY=1,2,two: two is not a whole number"]),
    ({"concurrency": "1,65"}, ["CONCURRENCY=1,65: 65 is not valid", "from 1 to 64"]),
    ({"concurrency": "2,2"}, ["CONCURRENCY=2,2 repeats 2"]),
    ({"rates": "fast"}, ["RATES=fast is not valid", "0.5x", "requests/s", "RATES=100,500"]),
    ({"rates": "100,-5"}, ["RATES=100,-5: -5 is not valid"]),
    ({"rates": "0x"}, ["RATES=0x is not valid"]),
    ({"rates": "500x"}, ["RATES=500x is not valid", "at most 100x"]),
    ({"rates": "nan"}, ["RATES=nan is not valid"]),
    ({"rates": "0.5x,0.5x"}, ["RATES=0.5x,0.5x repeats a rate"]),
    ({"rates": "1,,2"}, ["RATES=1,,2 has an empty item"]),
])
def test_bad_values_name_the_value_and_what_is_valid(raw, words):
    msg = _error(**raw)
    for w in words:
        assert w in msg, msg


def test_unknown_and_empty_model():
    msg = _error(batch_size="8")
    assert "unknown parameter(s) batch_size" in msg and "batch_sizes" in msg
    with pytest.raises(ConfigError, match="MODEL is empty"):
        RunParams.from_strings(model="  ")


def test_helpers():
    assert show("BATCH_SIZES", "1,8") == "BATCH_SIZES=1,8" and show("X", "a b") == "X='a b'" and show("X", "") == "X=''"
    with pytest.raises(ConfigError, match=r"ITERS=7 is not valid; expected a whole number from 1 to 5"):
        parse_int("ITERS", "7", maximum=5)
    assert parse_float("DURATION", " 2 ", positive=True) == 2.0
    check_make_path("CACHE_DIR", "/tmp/a_b-c.d/e")
    for bad in ("a b", "a#b", "a%b", "a'b", 'a"b', "a;b", "a\tb"):
        with pytest.raises(ConfigError, match="make cannot handle"):
            check_make_path("CACHE_DIR", bad)


def test_max_iters_matches_the_timing_cap():
    from lib.measure.timing import TimingPolicy

    assert TimingPolicy().max_iters == MAX_ITERS


def test_compile_modes_match_torch():
    torch = pytest.importorskip("torch")
    assert set(torch._inductor.list_mode_options()) <= set(COMPILE_MODES)  # every mode torch has is accepted


