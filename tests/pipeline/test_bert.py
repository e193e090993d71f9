"""BERT (models/bert_base): two int64 inputs and two outputs, dynamic batch and sequence length, through the
config, the export (FP32 and FP16), every CPU engine, TensorRT-RTX's builder and the whole pipeline.

The shipped bert-base is checked for its config, its module and (slow) its real export; everything
else runs on a 2-layer BERT of hidden size 64 built by the same ``BertEncoder`` class, so the code
paths are the shipped ones at a fraction of the time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="bert_base needs transformers (pip install -e '.[transformers]')")

import torch  # noqa: E402

from conftest import MODELS, REPO, Log  # noqa: E402
from lib.artifacts.export import _isolate_graph_outputs, ensure_onnx  # noqa: E402
from lib.backends import Artifacts, EngineSpec, make_engine  # noqa: E402
from lib.config.inputs import make_inputs  # noqa: E402
from lib.config.models import build_model, get_model  # noqa: E402
from lib.measure.parity import compare_outputs  # noqa: E402

TINY_BERT_CONFIG = """\
name: tiny_bert
description: 2-layer BERT (hidden 64) built by models/bert_base/load.py's BertEncoder
task: text-encoder
inputs:
  - name: input_ids
    dtype: int64
    dims: [batch, seq]
    example: [2, 16]
    runtime: [-1, -1]
    profile: {min: [1, 1], opt: [4, 32], max: [8, 128]}
    data: {kind: randint, low: 0, high: 1000}
  - name: attention_mask
    dtype: int64
    dims: [batch, seq]
    example: [2, 16]
    runtime: [-1, -1]
    profile: {min: [1, 1], opt: [4, 32], max: [8, 128]}
    data: {kind: ones}
outputs:
  - name: last_hidden_state
    dims: [batch, seq, hidden]
  - name: pooler_output
    dims: [batch, hidden]
defaults:
  batch_sizes: [1, 4]
  shapes: ["16", "64"]
"""

TINY_BERT_LOAD = f"""\
import importlib.util

from transformers import BertConfig

_spec = importlib.util.spec_from_file_location("bert_base_load", {str(MODELS / "bert_base" / "load.py")!r})
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def build_model(config):
    return _base.BertEncoder(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=128, max_position_embeddings=128,
                                        attn_implementation="sdpa"))
"""


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bert-models")
    (root / "tiny_bert").mkdir()
    (root / "tiny_bert" / "config.yaml").write_text(TINY_BERT_CONFIG)
    (root / "tiny_bert" / "load.py").write_text(TINY_BERT_LOAD)
    return root


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_dir):
    return get_model("tiny_bert", tiny_bert_dir)


@pytest.fixture(scope="module")
def tiny_bert_module(tiny_bert):
    return build_model(tiny_bert)


@pytest.fixture(scope="module")
def tiny_bert_onnx(tiny_bert, tmp_path_factory):
    return ensure_onnx(tiny_bert, tmp_path_factory.mktemp("bert-cache") / "onnx", precisions=("fp32", "fp16"),
                       log=Log())


def _torch_outputs(module, cfg, inputs):
    with torch.inference_mode():
        outs = module(*[torch.from_numpy(inputs[s.name]) for s in cfg.inputs])
    return {o.name: t.float().numpy() for o, t in zip(cfg.outputs, outs)}


def _ort(path, inputs):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


# --- the shipped config and module ------------------------------------------------------------------------
def test_bert_base_config():
    cfg = get_model("bert_base")
    assert [(s.name, s.dtype, s.dims) for s in cfg.inputs] == [("input_ids", "int64", ("batch", "seq")),
                                                              ("attention_mask", "int64", ("batch", "seq"))]
    assert [o.name for o in cfg.outputs] == ["last_hidden_state", "pooler_output"]
    assert cfg.shape_dims == ("seq",) and cfg.profile_range("seq") == (1, 512)
    assert cfg.profile_range("batch") == (1, 128)
    assert [s.label for s in cfg.default_shapes("cuda")] == ["128", "512"]
    assert [s.label for s in cfg.default_shapes("cpu")] == ["32", "128"]
    assert cfg.default_batch_sizes("cuda") == (1, 8, 32, 128) and cfg.default_batch_sizes("cpu") == (1, 4)
    x = make_inputs(cfg, 3, cfg.parse_shape("40"), seed=0)
    assert x["input_ids"].dtype == np.int64 and x["input_ids"].shape == (3, 40)
    assert x["input_ids"].min() >= 1000 and x["input_ids"].max() < 30522
    assert x["attention_mask"].dtype == np.int64 and (x["attention_mask"] == 1).all()


def test_bert_base_module_is_bert_base():
    cfg = get_model("bert_base")
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == 109_482_240  # bert-base-uncased with its pooler
    assert model.bert.config._attn_implementation == "sdpa"  # the PyTorch backends run fused attention
    x = make_inputs(cfg, 2, cfg.parse_shape("8"), seed=0)
    out = _torch_outputs(model, cfg, x)
    assert out["last_hidden_state"].shape == (2, 8, 768) and out["pooler_output"].shape == (2, 768)
    assert np.isfinite(out["last_hidden_state"]).all() and np.abs(out["pooler_output"]).max() <= 1  # tanh
    # the same seeded weights in every process
    again = _torch_outputs(build_model(cfg), cfg, x)
    np.testing.assert_array_equal(out["pooler_output"], again["pooler_output"])


# --- export -----------------------------------------------------------------------------------------------
def test_export_has_dynamic_batch_and_seq(tiny_bert, tiny_bert_onnx):
    import onnx

    fp32 = tiny_bert_onnx["fp32"]
    model = onnx.load(str(fp32.path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "pooler_output"]
    ops = {n.op_type for n in model.graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops  # plain (eager) attention in the ONNX, not SDPA's decomposition
    assert fp32.manifest["parity_vs_torch"]["cosine"] > 0.99999


@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 5), (8, 128), (2, 77)])
def test_onnx_matches_torch_at_any_batch_and_seq(tiny_bert, tiny_bert_module, tiny_bert_onnx, batch, seq):
    x = make_inputs(tiny_bert, batch, tiny_bert.parse_shape(str(seq)), seed=7)
    if seq > 4:  # padding: the last tokens of the first sequence are masked
        x["attention_mask"][0, seq // 2:] = 0
    got = _ort(tiny_bert_onnx["fp32"].path, x)
    ref = _torch_outputs(tiny_bert_module, tiny_bert, x)
    result = compare_outputs(got, ref, "fp32")
    assert result["passed"], result["problems"]
    assert set(result["outputs"]) == {"last_hidden_state", "pooler_output"}
    assert got["last_hidden_state"].shape == (batch, seq, 64)


def test_fp16_onnx_converts_and_matches(tiny_bert, tiny_bert_module, tiny_bert_onnx):
    fp16 = tiny_bert_onnx["fp16"]
    check = fp16.manifest["parity_vs_fp32"]
    assert check["checked"] and check["passed"], check
    x = make_inputs(tiny_bert, 4, tiny_bert.parse_shape("48"), seed=3)
    got = _ort(fp16.path, x)
    assert {k: v.dtype for k, v in got.items()} == {"last_hidden_state": np.float32, "pooler_output": np.float32}
    result = compare_outputs(got, _torch_outputs(tiny_bert_module, tiny_bert, x), "fp16")
    assert result["passed"], result["problems"]


def test_fp16_conversion_of_an_output_that_feeds_another_node():
    """The FP16 converter breaks graphs where a node reads a graph output (BERT's pooler reads
    last_hidden_state); _isolate_graph_outputs makes such graphs convert."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxconverter_common import float16

    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Gather", ["y", "i"], ["z"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b"])],
                              [helper.make_tensor("i", TensorProto.INT64, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    converted = float16.convert_float_to_float16(_isolate_graph_outputs(model), keep_io_types=True)
    onnx.checker.check_model(converted, full_check=True)
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[-1.0, 2.0, 3.0, -4.0], [5.0, -6.0, 7.0, 8.0]], np.float32)
    y, z = sess.run(["y", "z"], {"x": x})
    np.testing.assert_allclose(y, np.maximum(x, 0)) and np.testing.assert_allclose(z, [0.0, 5.0])


# --- engines: multi-input, multi-output, rebinding to new shapes ------------------------------------------
def test_cpu_engines_run_both_inputs_and_outputs(tiny_bert, tiny_bert_module, tiny_bert_onnx, tmp_path):
    onnx = {p: r.path for p, r in tiny_bert_onnx.items()}
    for backend in ("torch", "ort"):
        spec = EngineSpec(tiny_bert, "fp32", "cpu", Artifacts(onnx=onnx, cache_dir=tmp_path))
        with make_engine(backend, spec) as engine:
            for batch, seq in ((1, 16), (4, 64), (3, 9)):
                x = make_inputs(tiny_bert, batch, tiny_bert.parse_shape(str(seq)), seed=batch)
                engine.bind(x)
                engine.run_bound()
                fetched = engine.fetch()
                out = engine.infer(x)
                assert list(out) == ["last_hidden_state", "pooler_output"]
                assert out["last_hidden_state"].shape == (batch, seq, 64) and out["pooler_output"].shape == (batch, 64)
                for k in out:
                    np.testing.assert_array_equal(fetched[k], out[k])
                result = compare_outputs(out, _torch_outputs(tiny_bert_module, tiny_bert, x), "fp32")
                assert result["passed"], (backend, batch, seq, result["problems"])


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="TensorRT-RTX is not installed")
def test_tensorrt_rtx_builds_the_bert_engine(tiny_bert, tiny_bert_onnx, tmp_path):
    """Parses the int64, two-input ONNX and builds with one profile over both inputs (AOT: no GPU needed)."""
    from lib.backends.tensorrt.build import build_engine, gpu_identity, supported_rtx_targets, import_trt

    trt, _ = import_trt("tensorrt_rtx")
    gpu = gpu_identity()
    aot = ("8.9",) if gpu is not None and gpu[1] not in supported_rtx_targets(trt) else None
    for precision in ("fp32", "fp16"):
        result = build_engine(tiny_bert_onnx[precision].path, tiny_bert, precision, tmp_path, flavour="tensorrt_rtx",
                              compute_capabilities=aot, log=Log())
        assert result.path.stat().st_size > 0
        assert result.manifest["network_dtypes"].get("INT64", 0) > 0  # int64 ids go in as they are
        if precision == "fp16":
            assert result.manifest["network_dtypes"].get("HALF", 0) > 0


# --- the whole pipeline -----------------------------------------------------------------------------------
def _make(*args, cwd=REPO, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BENCHBOOK_MODELS_DIR", None)
    return subprocess.run(["make", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_tiny_bert_report(tiny_bert_dir, tmp_path):
    """make report on a 2-input, 2-output model swept over sequence lengths: every point measured on every
    CPU backend, parity on both outputs, a report."""
    reports, cache = tmp_path / "reports", tmp_path / "cache"
    r = _make("report", "MODEL=tiny_bert", f"MODELS_DIR={tiny_bert_dir}", "ITERS=3", "DURATION=0.3",
              f"REPORTS_DIR={reports}", f"CACHE_DIR={cache}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = next((reports / "tiny_bert").iterdir())
    plan = json.loads((run / "plan.json").read_text())
    assert plan["shapes"] == ["16", "64"] and plan["batch_sizes"] == [1, 4]
    combos = {f"{c['backend']}-{c['precision']}" for c in plan["combos"]}
    assert {"torch-fp32", "ort-fp32"} <= combos
    for combo in combos:
        points = sorted((run / "bench" / combo / "points").glob("*.json"))
        assert [p.stem for p in points] == ["bs1_16", "bs1_64", "bs4_16", "bs4_64"], combo
        for p in points:
            rec = json.loads(p.read_text())
            assert rec["status"] == "ok" and rec["parity"]["passed"], (combo, p.name, rec.get("error"))
            assert set(rec["parity"]["outputs"]) == {"last_hidden_state", "pooler_output"}
    assert (run / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_bert_base_export(tmp_path):
    """The real bert-base: FP32 export with dynamic batch and sequence length, ONNX Runtime against PyTorch
    at shapes other than the traced one (the longest sequence included)."""
    cfg = get_model("bert_base")
    fp32 = ensure_onnx(cfg, tmp_path / "onnx", log=Log())["fp32"]
    module = build_model(cfg)
    for batch, seq in ((1, 512), (3, 7)):
        x = make_inputs(cfg, batch, cfg.parse_shape(str(seq)), seed=1)
        result = compare_outputs(_ort(fp32.path, x), _torch_outputs(module, cfg, x), "fp32")
        assert result["passed"], (batch, seq, result["problems"])
