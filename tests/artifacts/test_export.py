"""lib.artifacts.export: a real torch.onnx export of the tiny model (session fixture ``tiny_onnx``): a valid ONNX with
dynamic named dims that ONNX Runtime runs like PyTorch at other batch sizes and resolutions; the cache
(hit, key, truncation rebuilt); the FP16 variant with FP32 I/O."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lib.artifacts.export import OPSET, ensure_onnx, export_key, export_summary, onnx_fp16, onnx_fp32
from lib.common.errors import BenchbookError
from lib.config.inputs import make_inputs
from lib.config.models import get_model
from lib.measure.parity import compare_outputs

from conftest import Log


def _ort(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds))}


def _torch(model, feeds):
    with torch.no_grad():
        return {"logits": model(torch.from_numpy(feeds["image"])).numpy()}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_export_layout_and_manifest(tiny, tiny_onnx, cache_dir):
    fp32 = tiny_onnx["fp32"]
    key = fp32.path.parent.name  # export_key(tiny) at export time (it hashes lib/ sources too)
    assert fp32.path == cache_dir / "onnx" / "tiny_cnn" / key / "model.onnx"
    assert len(key) == 16 and int(key, 16) >= 0
    assert fp32.path.is_file() and not fp32.cache_hit and fp32.seconds > 0
    m = fp32.manifest
    assert m["precision"] == "fp32" and m["opset"] == OPSET and m["bytes"] == fp32.path.stat().st_size
    assert m["parity_vs_torch"]["cosine"] > 0.9999 and m["weights"] is None
    assert not list(fp32.path.parent.glob("*.partial"))


def test_onnx_checker_passes(tiny_onnx):
    for result in tiny_onnx.values():
        onnx.checker.check_model(str(result.path), full_check=True)


def test_dynamic_dims_are_named_in_the_graph(tiny_onnx):
    model = onnx.load(str(tiny_onnx["fp32"].path))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "image" and out.name == "logits"
    assert _dims(inp) == ["batch", 3, "height", "width"]
    assert _dims(out) == ["batch", 10]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET


@pytest.mark.parametrize("batch, shape", [(1, "16x16"), (3, "48x20"), (16, "64x64"), (2, "32x32")])
def test_ort_matches_torch_across_the_profile(tiny, tiny_module, tiny_onnx, batch, shape):
    feeds = make_inputs(tiny, batch, tiny.parse_shape(shape), seed=5)
    got = _ort(tiny_onnx["fp32"].path, feeds)
    assert got["logits"].shape == (batch, 10) and got["logits"].dtype == np.float32
    r = compare_outputs(got, _torch(tiny_module, feeds), "fp32", tiny.top_k_output)
    assert r["passed"], r["problems"]
    assert r["top1_agree"] == 1.0


def test_fp16_variant_has_fp32_io_and_runs_on_cpu(tiny, tiny_module, tiny_onnx):
    fp16 = tiny_onnx["fp16"]
    assert fp16.path.parent.parent == tiny_onnx["fp32"].path.parent and fp16.path.parent.name.startswith("fp16-")
    assert fp16.manifest["precision"] == "fp16" and fp16.manifest["keep_io_types"] is True
    assert fp16.manifest["source_sha256"] == tiny_onnx["fp32"].manifest["sha256"]
    model = onnx.load(str(fp16.path))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32]
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    weights = [t for t in model.graph.initializer if len(t.dims) > 1]
    assert weights and all(t.data_type == f16 for t in weights)  # the math really is FP16
    feeds = make_inputs(tiny, 4, tiny.parse_shape("40x40"), seed=2)
    got = _ort(fp16.path, feeds)
    assert got["logits"].dtype == np.float32
    ref = _torch(tiny_module, feeds)
    r = compare_outputs(got, ref, "fp16", "logits")
    assert r["passed"], r["problems"]
    assert r["max_abs_err"] > 0  # not the FP32 file by mistake


def test_second_call_is_a_cache_hit(tiny, tiny_onnx, cache_dir):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (r.path for r in tiny_onnx.values())}
    log = Log()
    again = ensure_onnx(tiny, cache_dir / "onnx", precisions=("fp32", "fp16"), log=log)
    assert all(r.cache_hit and r.seconds == 0.0 for r in again.values())
    assert {p: r.path for p, r in again.items()} == {p: r.path for p, r in tiny_onnx.items()}
    assert log.lines == []  # nothing exported or converted
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before
    # build=False only reads the cache, and succeeds when it is valid
    assert ensure_onnx(tiny, cache_dir / "onnx", ("fp32", "fp16"), log=log, build=False)["fp16"].cache_hit


@pytest.fixture
def cache_copy(tiny, tiny_onnx, cache_dir, tmp_path):
    """A private copy of the session's cache (same key), for tests that damage it."""
    root = tmp_path / "onnx"
    shutil.copytree(cache_dir / "onnx", root)
    return root


def test_truncated_onnx_is_detected_and_rebuilt(tiny, cache_copy):
    folder = cache_copy / "tiny_cnn" / export_key(tiny)
    good = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(BenchbookError, match="truncated or corrupt"):
        onnx_fp32(tiny, cache_copy, log=Log(), build=False)
    log = Log()
    rebuilt = onnx_fp32(tiny, cache_copy, log=log)
    assert not rebuilt.cache_hit and "rebuilding" in log.text and "truncated or corrupt" in log.text
    onnx.checker.check_model(str(rebuilt.path), full_check=True)
    assert onnx_fp32(tiny, cache_copy, log=Log()).cache_hit


def test_missing_manifest_rebuilds_fp16(tiny, cache_copy):
    fp32 = onnx_fp32(tiny, cache_copy, log=Log())
    assert fp32.cache_hit
    (fp16_folder,) = fp32.path.parent.glob("fp16-*")
    (fp16_folder / "manifest.json").unlink()
    log = Log()
    r = onnx_fp16(tiny, fp32, log=log)
    assert not r.cache_hit and "no manifest" in log.text
    assert onnx_fp16(tiny, fp32, log=Log()).cache_hit


def test_export_key_follows_what_the_onnx_depends_on(tiny, make_model, tmp_path):
    base = export_key(tiny)
    assert len(base) == 16 and export_key(tiny) == base
    same = make_model("tiny_cnn", config=tiny.path.read_text())
    assert export_key(get_model("tiny_cnn", make_model.root)) == base  # content, not location
    same.write_text(same.read_text() + "\n# a comment changes the file\n")
    assert export_key(get_model("tiny_cnn", make_model.root)) != base
    (same.parent / "load.py").write_text((tiny.folder / "load.py").read_text().replace("8, 3", "8, 5"))
    same.write_text(tiny.path.read_text())
    assert export_key(get_model("tiny_cnn", make_model.root)) != base  # the load code changed
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    k1 = export_key(tiny, weights)
    weights.write_bytes(b"two")
    assert len({base, k1, export_key(tiny, weights)}) == 3


def test_export_summary_writes_export_json(tiny_onnx, tmp_path):
    from lib.common.cache import read_json

    table = export_summary(tiny_onnx, tmp_path)
    assert list(table["precision"]) == ["fp32", "fp16"]
    rows = read_json(tmp_path / "export.json")["files"]
    assert [r["sha256"] for r in rows] == [r.manifest["sha256"][:16] for r in tiny_onnx.values()]
    assert rows[0]["ORT vs PyTorch cosine"] > 0.9999


def test_fp32_does_not_depend_on_the_fp16_converter(tiny, tmp_path, monkeypatch):
    """A host without onnxconverter-common (sys.modules entry None: the import fails as if not installed): the
    FP32 export still succeeds and runs; FP16 is a failed result that says why. It used to fail the whole
    export, and with it ort/fp32."""
    import sys

    from lib.artifacts.export import ensure_onnx, export_summary
    from lib.backends import Artifacts, EngineSpec, make_engine
    from lib.config.inputs import make_inputs

    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    log = Log()
    results = ensure_onnx(tiny, tmp_path / "onnx", precisions=("fp32", "fp16"), log=log)
    assert results["fp32"].path.exists() and results["fp16"].path is None
    assert "onnxconverter_common" in results["fp16"].manifest["error"] and "FP32 backends are not affected" in log.text
    table = export_summary(results, tmp_path)
    assert set(table["precision"]) == {"fp32", "fp16"}
    assert "onnxconverter_common" in json.loads((tmp_path / "export.json").read_text())["files"][0]["error"]
    onnx = {p: r.path for p, r in results.items()}
    spec = EngineSpec(model=tiny, precision="fp32", device="cpu", artifacts=Artifacts(onnx=onnx))
    with make_engine("ort", spec) as engine:
        assert engine.infer(make_inputs(tiny, 2, tiny.shapes[0]))["logits"].shape == (2, 10)
    with pytest.raises(Exception, match="no fp16 ONNX model was exported"):
        make_engine("ort", EngineSpec(model=tiny, precision="fp16", device="cpu", artifacts=Artifacts(onnx=onnx))).load()
