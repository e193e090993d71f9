"""Engine builds with the installed TensorRT, for real (no mocks): on a machine without a GPU this
needs TensorRT-RTX (``pip install tensorrt-rtx-cu13``), whose builder makes ahead-of-time engines.

Checks that need no TensorRT (profile, precision and option validation) always run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

import pytest

from lib.backends.tensorrt import build as trt_build
from lib.backends.tensorrt.build import DEFAULT_AOT_TARGETS, build_engine, check_profile, gpu_identity, import_trt
from lib.common.cache import sha256_file
from lib.common.errors import BenchbookError, ConfigError, UnavailableError
from lib.config.model_config import Shape
from lib.config.models import discover, get_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_trt = pytest.mark.skipif(not (HAVE_TRT or HAVE_RTX), reason="neither tensorrt nor tensorrt_rtx is installed "
                               "(pip install tensorrt-rtx-cu13: its builder runs without a GPU)")


# --- fixtures (kept here: tests/conftest.py belongs to another change) --------------------------------
@pytest.fixture(scope="session")
def tiny():
    return discover(FIXTURES)["tiny_cnn"]


@pytest.fixture(scope="session")
def effnet():
    return get_model("efficientnet_b1")


@pytest.fixture(scope="session")
def onnx_root(tmp_path_factory):
    # One folder per pytest session, shared by the test files: each ONNX is exported once.
    return tmp_path_factory.getbasetemp() / "onnx-cache"


def onnx_files(cfg, root) -> dict[str, Path]:
    from lib.artifacts.export import ensure_onnx

    return {p: r.path for p, r in ensure_onnx(cfg, root, precisions=("fp32", "fp16"), log=lambda _m: None).items()}


@pytest.fixture(scope="session")
def tiny_onnx(tiny, onnx_root):
    return onnx_files(tiny, onnx_root)


@pytest.fixture(scope="session")
def effnet_onnx(effnet, onnx_root):
    return onnx_files(effnet, onnx_root)


def int8_files(cfg, root) -> dict[str, Path]:
    """Both INT8 (QDQ) variants, calibrated on seeded inputs (lib.artifacts.quantize): ONNX Runtime's and TensorRT's."""
    from lib.artifacts.export import ensure_onnx

    return {p: r.path for p, r in ensure_onnx(cfg, root, precisions=("fp32", "int8", "int8_trt"),
                                              log=lambda _m: None).items()}


@pytest.fixture(scope="session")
def tiny_int8(tiny, onnx_root):
    return int8_files(tiny, onnx_root)


@pytest.fixture(scope="session")
def build_kw():
    """How this machine builds: TensorRT-RTX when installed (AOT without a GPU, or for a GPU it does not
    support: then for SM 8.9), else TensorRT, which needs a GPU."""
    if HAVE_RTX:
        trt, _ = import_trt("tensorrt_rtx")
        gpu = gpu_identity()
        unsupported = gpu is not None and gpu[1] not in trt_build.supported_rtx_targets(trt)
        return {"flavour": "tensorrt_rtx", "compute_capabilities": ("8.9",) if unsupported else None}
    if HAVE_TRT and gpu_identity() is None:
        pytest.skip("only the full TensorRT is installed, and it needs a GPU to build (none here); "
                    "pip install tensorrt-rtx-cu13 to build ahead of time")
    return {"flavour": "tensorrt"}


class Log(list):
    """A ``log`` callback that keeps the lines."""

    def __call__(self, msg):
        self.append(msg)

    def warnings(self):
        return [m for m in self if "warning" in m]


# --- profile checks (before any build; no TensorRT needed) ----------------------------------------------
def test_batch_outside_profile_names_value_and_profile(effnet):
    with pytest.raises(ConfigError) as e:
        check_profile(effnet, [1, 8, 256], ["static"])
    msg = str(e.value)
    assert "BATCH_SIZES: 256" in msg and "TensorRT profile of model 'efficientnet_b1'" in msg
    assert "batch 1..128" in msg and str(effnet.path) in msg


def test_batch_zero_and_non_integer(tiny):
    with pytest.raises(ConfigError, match=r"BATCH_SIZES: 0 .*batch 1\.\.16"):
        check_profile(tiny, [0], ["32x32"])
    with pytest.raises(ConfigError, match=r"'8' is not an integer"):
        check_profile(tiny, ["8"], ["32x32"])


def test_shape_outside_profile_names_value_and_profile(tiny):
    with pytest.raises(ConfigError) as e:  # a string: parsed and range-checked by ModelConfig.parse_shape
        check_profile(tiny, [1], ["32x32", "100x32"])
    assert "100x32" in str(e.value) and "height=100" in str(e.value) and "16 to 64" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a Shape object: checked here
        check_profile(tiny, [1], [Shape((("height", 32), ("width", 8)))])
    msg = str(e.value)
    assert "32x8 (width=8)" in msg and "width 16..64" in msg and str(tiny.path) in msg


def test_shape_of_wrong_form(tiny, effnet):
    with pytest.raises(ConfigError, match=r"expected <height>x<width>"):
        check_profile(tiny, [1], ["32"])
    with pytest.raises(ConfigError, match=r"use 'static'"):
        check_profile(effnet, [1], ["240x240"])


def test_valid_profile_returns_shapes(tiny, effnet):
    assert [s.label for s in check_profile(tiny, [1, 16], ["16x16", "64x48"])] == ["16x16", "64x48"]
    assert [s.label for s in check_profile(effnet, [1, 128], ["static"])] == ["static"]


# --- precision and option checks (before TensorRT is imported) -------------------------------------------
@pytest.mark.parametrize("precision, pattern", [
    ("bf16", r"no BF16 ONNX is produced yet"),
    ("fp8", r"'fp8' is not a TensorRT precision; valid: fp32, fp16, int8"),
])
def test_unsupported_precisions(tiny, tmp_path, precision, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_engine(tmp_path / "none.onnx", tiny, precision, tmp_path)


@pytest.mark.parametrize("kw, pattern", [
    ({"opt_level": 6}, r"TRT_OPT_LEVEL: 6 is not valid.*0\.\.5"),
    ({"opt_level": -1}, r"TRT_OPT_LEVEL: -1"),
    ({"opt_level": 2.5}, r"TRT_OPT_LEVEL: 2\.5"),
    ({"opt_level": True}, r"TRT_OPT_LEVEL: True"),
    ({"workspace_gib": 0}, r"TRT_WORKSPACE: 0 is not valid; give a positive number of GiB"),
    ({"workspace_gib": -2}, r"TRT_WORKSPACE: -2"),
    ({"workspace_gib": float("nan")}, r"TRT_WORKSPACE: nan"),
    ({"workspace_gib": "4"}, r"TRT_WORKSPACE: '4'"),
])
def test_bad_build_options(tiny, tmp_path, kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_engine(tmp_path / "none.onnx", tiny, "fp32", tmp_path, **kw)


def test_missing_onnx_is_named(tiny, tmp_path):
    with pytest.raises(BenchbookError, match=r"none\.onnx does not exist"):
        build_engine(tmp_path / "none.onnx", tiny, "fp32", tmp_path)


def test_unknown_flavour():
    with pytest.raises(ConfigError, match=r"'tensorrt-llm' is not valid; use one of tensorrt, tensorrt_rtx"):
        import_trt("tensorrt-llm")


# --- which TensorRT ---------------------------------------------------------------------------------------
@needs_trt
def test_import_trt_prefers_tensorrt():
    module, flavour = import_trt()
    assert flavour == ("tensorrt" if HAVE_TRT else "tensorrt_rtx")
    assert module.__name__ == flavour and trt_build.trt_version(module)[0].isdigit()


@needs_trt
def test_aot_targets_are_validated(tiny, tiny_onnx, tmp_path, build_kw):
    with pytest.raises(ConfigError) as e:
        build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, flavour=build_kw["flavour"],
                     compute_capabilities=("9.0",))
    if build_kw["flavour"] == "tensorrt_rtx":
        assert "'9.0' is not a TensorRT-RTX" in str(e.value) and "8.9" in str(e.value)
    else:
        assert "apply to TensorRT-RTX only" in str(e.value)


# --- builds ---------------------------------------------------------------------------------------------
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_tiny(tiny, tiny_onnx, tmp_path, build_kw, precision):
    log = Log()
    r = build_engine(tiny_onnx[precision], tiny, precision, tmp_path, log=log, **build_kw)
    assert not r.cache_hit and r.build_s > 0 and r.path.is_file() and r.path.parent.name == r.key[:16]
    m = r.manifest
    assert m["key"] == r.key and m["sha256"] == sha256_file(r.path) and m["bytes"] == r.path.stat().st_size
    assert m["precision"] == precision and m["model"] == "tiny_cnn" and m["flavour"] == build_kw["flavour"]
    assert m["build_s"] > 0 and m["key_parts"]["profiles"]["image"]["max"] == [16, 3, 64, 64]
    # Strongly typed: the precision is the ONNX's. The FP16 file's layers compute in HALF, FP32's do not.
    assert ("HALF" in m["network_dtypes"]) == (precision == "fp16")
    assert not log.warnings()


@needs_trt
def test_build_tiny_int8_explicit_quantization(tiny, tiny_int8, tmp_path, build_kw):
    """The QDQ file for TensorRT builds strongly typed: INT8 layers appear, no builder flag is set. ONNX
    Runtime's own INT8 file (INT32 biases) is refused by the parser, which is why lib.artifacts.quantize makes two."""
    r = build_engine(tiny_int8["int8_trt"], tiny, "int8", tmp_path, log=Log(), **build_kw)
    assert not r.cache_hit and r.manifest["precision"] == "int8"
    assert r.manifest["network_dtypes"].get("INT8", 0) > 0 and "HALF" not in r.manifest["network_dtypes"]
    assert build_engine(tiny_int8["int8_trt"], tiny, "int8", tmp_path, log=Log(), **build_kw).cache_hit
    with pytest.raises(BenchbookError, match=r"(?s)could not parse.*DequantizeLinear.*Int32"):
        build_engine(tiny_int8["int8"], tiny, "int8", tmp_path, log=Log(), **build_kw)


@needs_trt
def test_cache_hit_rebuild_on_truncation_and_missing_manifest(tiny, tiny_onnx, tmp_path, build_kw):
    first = build_engine(tiny_onnx["fp16"], tiny, "fp16", tmp_path, log=Log(), **build_kw)
    mtime = first.path.stat().st_mtime_ns

    log, t0 = Log(), time.perf_counter()
    hit = build_engine(tiny_onnx["fp16"], tiny, "fp16", tmp_path, log=log, **build_kw)
    assert hit.cache_hit and hit.build_s == 0.0 and hit.key == first.key and hit.path == first.path
    assert time.perf_counter() - t0 < 5 and hit.path.stat().st_mtime_ns == mtime  # no rebuild
    assert hit.manifest["build_s"] == first.manifest["build_s"] and not any("building" in m for m in log)

    with open(first.path, "r+b") as f:  # a killed copy, a full disk: the plan loses its tail
        f.truncate(first.path.stat().st_size // 2)
    log = Log()
    rebuilt = build_engine(tiny_onnx["fp16"], tiny, "fp16", tmp_path, log=log, **build_kw)
    assert not rebuilt.cache_hit and rebuilt.build_s > 0 and rebuilt.key == first.key
    assert any("rebuilding" in w and "does not match its recorded sha256" in w for w in log.warnings())
    assert rebuilt.manifest["sha256"] == sha256_file(rebuilt.path)

    (rebuilt.path.parent / "manifest.json").unlink()  # a build interrupted between plan and manifest
    log = Log()
    again = build_engine(tiny_onnx["fp16"], tiny, "fp16", tmp_path, log=log, **build_kw)
    assert not again.cache_hit and any("has no manifest" in w for w in log.warnings())
    assert build_engine(tiny_onnx["fp16"], tiny, "fp16", tmp_path, log=Log(), **build_kw).cache_hit


@needs_trt
def test_force_rebuilds_with_warning(tiny, tiny_onnx, tmp_path, build_kw):
    build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, log=Log(), **build_kw)
    log = Log()
    r = build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, log=log, force=True, **build_kw)
    assert not r.cache_hit and any("rebuild forced" in w for w in log.warnings())


@needs_trt
def test_key_follows_what_the_plan_depends_on(tiny, tiny_onnx, tmp_path, build_kw):
    def key(cfg=tiny, precision="fp32", **kw):
        return build_engine(tiny_onnx[precision], cfg, precision, tmp_path, log=Log(), **{**build_kw, **kw}).key

    base = key()
    assert key() == base
    narrower = dataclasses.replace(tiny.inputs[0], max=(8, 3, 64, 64))
    variants = {
        "fp16": key(precision="fp16"),
        "opt_level": key(opt_level=1),
        "workspace": key(workspace_gib=1),
        "tf32": key(tf32=False),
        "profile": key(cfg=dataclasses.replace(tiny, inputs=(narrower,))),
    }
    assert base not in variants.values() and len(set(variants.values())) == len(variants)
    if build_kw["flavour"] == "tensorrt_rtx":
        variants["targets"] = key(compute_capabilities=("8.6", "SM89"))
        assert variants["targets"] != base
    assert len(list((tmp_path / "trt").glob("*/engine.plan"))) == len(variants) + 1


@needs_trt
@pytest.mark.skipif(gpu_identity() is not None, reason="a GPU is visible: builds target it, not the AOT defaults")
def test_cpu_only_aot_build_for_default_targets(tiny, tiny_onnx, tmp_path):
    if not HAVE_RTX:
        pytest.skip("ahead-of-time builds without a GPU need TensorRT-RTX (pip install tensorrt-rtx-cu13)")
    r = build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, log=Log(), flavour="tensorrt_rtx")
    assert r.manifest["target"] == "cpu-aot:" + ",".join(DEFAULT_AOT_TARGETS)
    assert r.manifest["compute_capabilities"] == list(DEFAULT_AOT_TARGETS)
    assert r.manifest["timing_cache"].startswith("not used")  # RTX's timing-cache calls are no-ops
    explicit = build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, log=Log(), flavour="tensorrt_rtx",
                            compute_capabilities=("8.6", "SM89"))
    assert explicit.manifest["target"] == "aot:8.6,8.9" and explicit.key != r.key


@needs_trt
def test_timing_cache(tiny, tiny_onnx, tmp_path, build_kw):
    r = build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, log=Log(), **build_kw)
    if build_kw["flavour"] == "tensorrt_rtx":
        assert r.manifest["timing_cache"] == "not used (TensorRT-RTX)" and not (tmp_path / "trt" / "timing").exists()
    else:
        path = Path(r.manifest["timing_cache_path"])
        assert r.manifest["timing_cache"] == "new" and path.stat().st_size > 0
        again = build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, log=Log(), opt_level=2, **build_kw)
        assert again.manifest["timing_cache"] == "loaded"


@needs_trt
def test_parser_errors_are_listed(tiny, tmp_path, build_kw):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["image"], ["logits"], domain="benchbook.test")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, None, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("benchbook.test", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BenchbookError) as e:
        build_engine(path, tiny, "fp32", tmp_path, log=Log(), **build_kw)
    msg = str(e.value)
    assert "could not parse" in msg and str(path) in msg and "error(s): (1)" in msg and "NoSuchOp" in msg


@needs_trt
def test_config_inputs_must_match_the_onnx(tiny, tiny_onnx, tmp_path, build_kw):
    renamed = dataclasses.replace(tiny, inputs=(dataclasses.replace(tiny.inputs[0], name="pixels"),))
    with pytest.raises(ConfigError, match=r"inputs \['pixels'\] do not match the ONNX's inputs \['image'\]"):
        build_engine(tiny_onnx["fp32"], renamed, "fp32", tmp_path, log=Log(), **build_kw)


@needs_trt
def test_full_tensorrt_without_gpu_is_unavailable(tiny, tiny_onnx, tmp_path):
    if not HAVE_TRT or gpu_identity() is not None:
        pytest.skip("checks full TensorRT on a machine without a GPU")
    with pytest.raises(UnavailableError, match="needs a CUDA GPU to build"):
        build_engine(tiny_onnx["fp32"], tiny, "fp32", tmp_path, flavour="tensorrt")


# --- a real model: EfficientNet-B1 (build times are printed: pytest -s, or --durations) --------------------
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_efficientnet_b1(effnet, effnet_onnx, tmp_path, build_kw, precision):
    check_profile(effnet, effnet.batch_sizes, effnet.shapes)
    t0 = time.perf_counter()
    r = build_engine(effnet_onnx[precision], effnet, precision, tmp_path, log=Log(), **build_kw)
    wall = time.perf_counter() - t0
    print(f"\nefficientnet_b1 {precision}: build {r.build_s:.1f} s (call {wall:.1f} s), "
          f"plan {r.manifest['bytes'] / 2**20:.1f} MiB, target {r.manifest['target']}")
    assert not r.cache_hit and r.manifest["key_parts"]["profiles"]["input"]["max"] == [128, 3, 240, 240]
    assert ("HALF" in r.manifest["network_dtypes"]) == (precision == "fp16")
    assert build_engine(effnet_onnx[precision], effnet, precision, tmp_path, log=Log(), **build_kw).cache_hit


@needs_trt
@pytest.mark.slow
def test_build_efficientnet_b1_int8(effnet, onnx_root, tmp_path, build_kw):
    """A real INT8 (Q/DQ) engine of efficientnet_b1 with TensorRT-RTX (AOT on a machine without a GPU):
    calibration on seeded inputs, then a strongly typed build. Slow: quantization and the build take minutes
    on two cores (the figures are printed)."""
    t0 = time.perf_counter()
    files = int8_files(effnet, onnx_root)
    quant_s = time.perf_counter() - t0
    r = build_engine(files["int8_trt"], effnet, "int8", tmp_path, log=Log(), **build_kw)
    print(f"\nefficientnet_b1 int8: quantization {quant_s:.1f} s, build {r.build_s:.1f} s, "
          f"plan {r.manifest['bytes'] / 2**20:.1f} MiB, target {r.manifest['target']}, "
          f"layer dtypes {r.manifest['network_dtypes']}")
    assert not r.cache_hit and r.manifest["precision"] == "int8"
    assert r.manifest["network_dtypes"].get("INT8", 0) >= 50  # every conv's input and weight path
    assert r.manifest["key_parts"]["profiles"]["input"]["max"] == [128, 3, 240, 240]
    assert build_engine(files["int8_trt"], effnet, "int8", tmp_path, log=Log(), **build_kw).cache_hit


def test_a_suboptimal_plan_is_said_not_used_silently(tmp_path):
    """TensorRT-RTX's own validity values (the real enums): INVALID is rebuilt, SUBOPTIMAL is used with a warning
    (it was used silently), VALID is quiet."""
    trt = pytest.importorskip("tensorrt_rtx")
    from lib.backends.tensorrt.build import plan_validity_message

    plan = tmp_path / "engine.plan"
    problem, warning = plan_validity_message(trt, trt.EngineValidity.SUBOPTIMAL, 0, plan)
    assert problem is None and "SUBOPTIMAL" in warning and str(plan) in warning
    problem, warning = plan_validity_message(trt, trt.EngineValidity.INVALID, 0, plan)
    assert "invalid" in problem and warning == ""
    assert plan_validity_message(trt, trt.EngineValidity.VALID, 0, plan) == (None, "")
