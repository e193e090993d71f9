"""lib.artifacts.quantize: a real quantize_static of the tiny CNN (QDQ, S8S8, per-channel), calibrated on seeded inputs and
on a generated image folder; the cache (a second call is a hit; another calibration source is another file);
CALIB refused with a clear message before any work; INT8 parity against FP32 within its thresholds, and an
injected error failing them."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import Log, write_model
from lib.artifacts import quantize
from lib.common.errors import ConfigError
from lib.artifacts.export import ensure_onnx, export_summary
from lib.config.inputs import make_inputs
from lib.config.models import get_model
from lib.measure.parity import CENTRED_THRESHOLDS, compare_outputs
from make_images import write_labelled_images

PREP = {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds))}


@pytest.fixture(scope="module")
def int8(tiny, tmp_path_factory):
    """A cache of its own: the session's shared cache may already hold the INT8 file (another test built it)."""
    log = Log()
    cache = tmp_path_factory.mktemp("int8-cache")
    return ensure_onnx(tiny, cache / "onnx", precisions=("fp32", "int8"), log=log), log


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_labelled_images(tmp_path_factory.mktemp("calib") / "images", classes=3, per_class=4, size=(40, 48))


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw.update(name="tiny_img", preprocessing=PREP)
    return get_model("tiny_img", write_model(tmp_path_factory.mktemp("qm"), "tiny_img", raw).parent.parent)


def test_int8_file_is_qdq_and_cached_beside_fp32(int8):
    results, log = int8
    q = results["int8"]
    assert not q.cache_hit and q.path.is_file()
    assert q.path.parent.parent == results["fp32"].path.parent and q.path.parent.name.startswith("int8-")
    model = onnx.load(str(q.path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    # per-channel weights: a Conv weight's DequantizeLinear has one scale per output channel
    inits = {i.name: i for i in model.graph.initializer}
    scales = [onnx.numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[1] in inits and n.input[0] in inits]
    assert any(s.size == 8 for s in scales) and any(s.size == 16 for s in scales)
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "weights are stored as INT8"
    m = q.manifest
    assert m["precision"] == "int8" and m["calibration"]["kind"] == "seeded"
    assert "seeded inputs" in m["calibration"]["label"] and m["calibration_items"] >= quantize.SEEDED_CALIB_ITEMS
    assert m["calibrate_s"] > 0 and m["bytes"] == q.path.stat().st_size and m["fp32_bytes"] > 0
    assert m["settings"]["per_channel"] is True and m["settings"]["format"] == "QDQ"
    assert m["cuda_ep_estimate"]["nodes"] == 0  # only Q/DQ and float ops: every one has a CUDA kernel
    assert "INT8 ONNX" in log.text


def test_second_call_is_a_cache_hit(tiny, int8):
    onnx_root = int8[0]["fp32"].path.parents[2]  # <cache>/onnx/<model>/<key>/model.onnx
    again = ensure_onnx(tiny, onnx_root, precisions=("fp32", "int8"), log=Log())["int8"]
    assert again.cache_hit and again.path == int8[0]["int8"].path and again.seconds == 0.0
    rows = export_summary({"int8": again}).to_dict("records")
    assert rows[0]["source"] == "quantized from FP32 (QDQ)" and rows[0]["calibration s"] > 0


def test_int8_matches_fp32_within_its_thresholds(tiny, int8, tiny_onnx):
    """On a fresh seeded input (not a calibration one), the input-dependent part included."""
    check = int8[0]["int8"].manifest["parity_vs_fp32"]
    assert check["checked"] and check["passed"], check
    assert check["centred_cosine"] >= CENTRED_THRESHOLDS["int8"][0]
    assert check["top1_agreement_calibration"]["items"] >= quantize.SEEDED_CALIB_ITEMS
    x = make_inputs(tiny, 4, tiny.parse_shape("32x32"), seed=9)
    ref = _run(int8[0]["fp32"].path, x)
    got = _run(int8[0]["int8"].path, x)
    centre = {"logits": _run(int8[0]["fp32"].path, make_inputs(tiny, 8, tiny.parse_shape("32x32"), seed=9,
                                                                     stream="c"))["logits"].mean(0)}
    r = compare_outputs(got, ref, "int8", "logits", centre)
    assert r["passed"], r["problems"]
    assert 0 < np.abs(got["logits"] - ref["logits"]).max()  # really quantized: not the FP32 numbers


def test_an_injected_error_fails_int8_parity(tiny, int8, tiny_onnx):
    """INT8 thresholds are loose, not blind: another input's outputs, or an error of half the input-dependent
    part, fail them (the raw cosine of the first stays high: the centred comparison catches it)."""
    shape = tiny.parse_shape("32x32")
    x, other = make_inputs(tiny, 4, shape, seed=3), make_inputs(tiny, 4, shape, seed=4)
    ref = _run(int8[0]["fp32"].path, x)
    centre_of = _run(int8[0]["fp32"].path, make_inputs(tiny, 8, shape, seed=3, stream="c"))["logits"].mean(0)
    got = _run(int8[0]["int8"].path, x)
    assert compare_outputs(got, ref, "int8", "logits", {"logits": centre_of})["passed"]
    swapped = compare_outputs(_run(int8[0]["int8"].path, other), ref, "int8", "logits", {"logits": centre_of})
    assert not swapped["passed"] and "input-dependent part" in swapped["problems"]
    rng = np.random.default_rng(0)
    part = ref["logits"] - centre_of
    noisy = {"logits": got["logits"] + 0.5 * np.linalg.norm(part) / np.sqrt(part.size)
             * rng.standard_normal(part.shape).astype(np.float32)}
    assert not compare_outputs(noisy, ref, "int8", "logits", {"logits": centre_of})["passed"]


def test_calibration_on_an_image_folder(image_model, images, cache_dir):
    log = Log()
    res = ensure_onnx(image_model, cache_dir / "onnx", precisions=("fp32", "int8"), log=log, calib=str(images))
    q = res["int8"]
    cal = q.manifest["calibration"]
    assert cal["kind"] == "images" and cal["images_used"] == 12 and cal["root"] == str(images.resolve())
    assert q.manifest["calibration_items"] == 12
    seeded = ensure_onnx(image_model, cache_dir / "onnx", precisions=("fp32", "int8"), log=log)["int8"]
    assert seeded.path != q.path and seeded.manifest["calibration"]["kind"] == "seeded"  # another source, another file
    assert ensure_onnx(image_model, cache_dir / "onnx", precisions=("int8",), log=log,
                       calib=str(images))["int8"].cache_hit


def test_changed_images_are_a_new_calibration(image_model, images, tmp_path):
    a = quantize.calibration_source(image_model, str(images))
    copy_dir = tmp_path / "copy"
    write_labelled_images(copy_dir, classes=3, per_class=4, size=(40, 48))
    assert quantize.calibration_source(image_model, str(copy_dir)).sha256 == a.sha256  # same bytes, same key
    (copy_dir / "class00" / "0.png").write_bytes((images / "class01" / "1.png").read_bytes())
    assert quantize.calibration_source(image_model, str(copy_dir)).sha256 != a.sha256


@pytest.mark.parametrize("what, words", [
    ("missing", ["CALIB=", "is not a folder", "leave CALIB empty"]),
    ("file", ["is not a folder"]),
    ("empty", ["holds no images", ".png"]),
])
def test_bad_calib_is_refused(image_model, tmp_path, what, words):
    target = tmp_path / "calib"
    if what == "file":
        target.write_text("x")
    elif what == "empty":
        (target / "sub").mkdir(parents=True)
        (target / "sub" / "notes.txt").write_text("no images")
    with pytest.raises(ConfigError) as e:
        quantize.check_calib(image_model, str(target))
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_calib_for_a_model_without_image_preprocessing_is_refused(tiny, images):
    """tiny_cnn's height and width are dynamic and it has no preprocessing.crop: the images cannot be prepared."""
    with pytest.raises(ConfigError) as e:
        quantize.check_calib(tiny, str(images))
    msg = str(e.value)
    assert "CALIB=" in msg and "preprocessing.crop" in msg and "seeded inputs" in msg and "DATA" not in msg


def test_cuda_ep_estimate_counts_integer_ops_without_cuda_kernels():
    from onnx import helper

    nodes = [helper.make_node("QLinearConv", ["a"] * 8, ["b"]), helper.make_node("QLinearConv", ["b"] * 8, ["c"]),
             helper.make_node("MatMulInteger", ["c", "d"], ["e"]), helper.make_node("QuantizeLinear", ["e", "s"], ["f"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    est = quantize.cuda_ep_estimate(model)
    assert est["nodes"] == 2 and est["op_types"] == {"QLinearConv": 2}
