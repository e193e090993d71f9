"""A model given as ONNX: a folder with config.yaml + model.onnx and no load.py. The file is checked
against its config (names, dtypes, dims, one ONNX Runtime run) instead of being exported, converted to
FP16 into the cache (never into the model's folder), run by the ONNX backends with ONNX Runtime FP32
as the parity reference, and a config that does not fit it names the field to fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, Log
from lib.artifacts.export import ensure_onnx, export_summary
from lib.backends import Artifacts, EngineSpec, make_engine
from lib.common.errors import BenchbookError, ConfigError, ModelError, WeightsError
from lib.config.inputs import make_inputs
from lib.config.models import discover, get_model, is_given_onnx
from lib.measure.parity import compare_outputs

DOC = REPO / "docs" / "adding-a-model.md"

MLP_CONFIG = {
    "name": "onnx_mlp", "description": "an MLP given as ONNX", "task": "classification",
    "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", "features"], "example": [2, 16],
                "runtime": [-1, 16], "profile": {"min": [1, 16], "opt": [8, 16], "max": [64, 16]}}],
    "outputs": [{"name": "logits", "dims": ["batch", "classes"]}, {"name": "features", "dims": ["batch", "hidden"]}],
    "top_k_output": "logits",
    "defaults": {"batch_sizes": [1, 8]},
}


def mlp_onnx(path: Path, seed: int = 0) -> Path:
    """x [batch, 16] -> features = relu(x W1 + b1) [batch, 32], logits = features W2 [batch, 4]; made with
    onnx.helper (no torch), opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal((16, 32)) / 4).astype(np.float32), "W1"),
               numpy_helper.from_array((rng.standard_normal(32) / 10).astype(np.float32), "b1"),
               numpy_helper.from_array((rng.standard_normal((32, 4)) / 6).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["features"]), helper.make_node("MatMul", ["features", "W2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
                               helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 32])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_onnx(path: Path) -> Path:
    """image [N, 3, 224, 224] (height and width fixed) -> logits [N, 8]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])]
    graph = helper.make_graph(nodes, "conv",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_onnx_model(root: Path, config: dict, folder: str = "onnx_mlp", make=mlp_onnx) -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    make(d / "model.onnx")
    return d


@pytest.fixture
def onnx_model(tmp_path):
    root = tmp_path / "models"
    write_onnx_model(root, MLP_CONFIG)
    return get_model("onnx_mlp", root)


def test_discovered_without_load_py(onnx_model):
    assert list(discover(onnx_model.folder.parent)) == ["onnx_mlp"]
    assert is_given_onnx(onnx_model) and not (onnx_model.folder / "load.py").exists()


def test_given_file_is_checked_once_and_used_as_is(onnx_model, tmp_path):
    root = tmp_path / "cache" / "onnx"
    log = Log()
    first = ensure_onnx(onnx_model, root, log=log)["fp32"]
    assert first.path == onnx_model.folder / "model.onnx" and not first.cache_hit
    assert first.manifest["given"] == str(onnx_model.folder / "model.onnx") and first.manifest["opset"] == 17
    assert first.manifest["example_output_shapes"] == {"logits": [2, 4], "features": [2, 32]}
    assert "fits its config" in log.text
    again = ensure_onnx(onnx_model, root, log=Log(), build=False)["fp32"]  # what the export record reads
    assert again.cache_hit and again.path == first.path
    summary = export_summary({"fp32": again})
    assert summary.loc[0, "source"] == "given (model.onnx)"
    # a new file (same names) is checked anew
    mlp_onnx(onnx_model.folder / "model.onnx", seed=1)
    with pytest.raises(BenchbookError, match="has not been checked"):
        ensure_onnx(onnx_model, root, log=Log(), build=False)
    assert not ensure_onnx(onnx_model, root, log=Log())["fp32"].cache_hit


def test_fp16_conversion_goes_to_the_cache_and_matches(onnx_model, tmp_path):
    root = tmp_path / "cache" / "onnx"
    files = ensure_onnx(onnx_model, root, precisions=("fp32", "fp16"), log=Log())
    fp16 = files["fp16"]
    assert root in fp16.path.parents and onnx_model.folder not in fp16.path.parents
    assert sorted(p.name for p in onnx_model.folder.iterdir()) == ["config.yaml", "model.onnx"]  # untouched
    check = fp16.manifest["parity_vs_fp32"]
    assert check["checked"] and check["passed"] and check["top1_agree"] == 1.0, check
    # the ONNX Runtime engine runs it (on a CPU here), with ONNX Runtime FP32 as the reference
    x = make_inputs(onnx_model, 8, onnx_model.shapes[0], seed=0)
    spec32 = EngineSpec(onnx_model, "fp32", "cpu", Artifacts(onnx={p: r.path for p, r in files.items()}))
    spec16 = EngineSpec(onnx_model, "fp16", "cpu", Artifacts(onnx={p: r.path for p, r in files.items()}))
    with make_engine("ort", spec32) as e32, make_engine("ort", spec16) as e16:
        ref, got = e32.infer(x), e16.infer(x)
    result = compare_outputs(got, ref, "fp16", onnx_model.top_k_output)
    assert result["passed"] and set(result["outputs"]) == {"logits", "features"}, result["problems"]


def test_parity_reference_is_onnx_runtime(onnx_model, tmp_path):
    from lib.measure.reference import ReferenceOutputs

    ref = ReferenceOutputs(tmp_path / "run", onnx_model, None, onnx_model.folder / "model.onnx")
    assert ref.source() == "ONNX Runtime FP32 (CPU EP)"
    x = make_inputs(onnx_model, 2, onnx_model.shapes[0], seed=0)
    out = ref.get("bs2_static", x)
    assert out["logits"].shape == (2, 4) and out["features"].shape == (2, 32)


def test_weights_do_not_apply(onnx_model, tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(WeightsError, match="given as ONNX"):
        ensure_onnx(onnx_model, tmp_path / "onnx", weights=tmp_path / "w.pth", log=Log())


def _change(path: str, value):
    def apply(raw):
        node = raw
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value
    return apply


WRONG = [
    ("input-name", _change("inputs.0.name", "input"), "inputs", "do not match the inputs of"),
    ("dtype", _change("inputs.0.dtype", "float16"), "inputs[0].dtype", "takes 'x' as 'float32'"),
    ("rank", lambda raw: raw["inputs"][0].update(dims=["batch", "t", "features"], example=[2, 4, 16],
                                                  runtime=[-1, 4, 16], profile={"min": [1, 4, 16], "opt": [8, 4, 16],
                                                                                "max": [64, 4, 16]}),
     "inputs[0].dims", "has 2"),
    ("static-dim-differs", lambda raw: raw["inputs"][0].update(example=[2, 8], runtime=[-1, 8], profile={
        "min": [1, 8], "opt": [8, 8], "max": [64, 8]}), "inputs[0].runtime[1]", "fixes dim 'features' of 'x' to 16"),
    ("output-names", _change("outputs.1.name", "hidden"), "outputs", "do not match the outputs of"),
]


def test_a_file_with_a_fixed_batch_is_refused(tmp_path):
    import onnx

    folder = write_onnx_model(tmp_path / "models", MLP_CONFIG)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch fixed to 1
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ConfigError, match=r"inputs\[0\].runtime\[0\]: the batch dim must be dynamic, but .* fixes "
                                          r"the batch of 'x' to 1"):
        ensure_onnx(get_model("onnx_mlp", tmp_path / "models"), tmp_path / "onnx", log=Log())


@pytest.mark.parametrize("change, field, words", [w[1:] for w in WRONG], ids=[w[0] for w in WRONG])
def test_a_config_that_does_not_fit_the_file_names_the_field(tmp_path, change, field, words):
    import copy

    raw = copy.deepcopy(MLP_CONFIG)
    change(raw)
    folder = write_onnx_model(tmp_path / "models", raw)
    cfg = get_model("onnx_mlp", tmp_path / "models")
    with pytest.raises(ConfigError) as e:
        ensure_onnx(cfg, tmp_path / "onnx", log=Log())
    assert str(e.value).startswith(f"{folder / 'config.yaml'}: {field}: "), str(e.value)
    assert words in str(e.value)


def test_dynamic_in_config_but_fixed_in_file_matches_the_doc(tmp_path):
    """The error docs/adding-a-model.md shows for a given ONNX, reproduced."""
    raw = {"name": "my_onnx_model",
           "inputs": [{"name": "image", "dims": ["batch", "channels", "height", "width"], "example": [2, 3, 224, 224],
                       "runtime": [-1, 3, -1, -1], "profile": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224],
                                                               "max": [32, 3, 320, 320]}}],
           "outputs": [{"name": "logits", "dims": ["batch", "classes"]}],
           "defaults": {"shapes": ["224x224"]}}
    folder = write_onnx_model(tmp_path / "models", raw, "my_onnx_model", conv_onnx)
    with pytest.raises(ConfigError) as e:
        ensure_onnx(get_model("my_onnx_model", tmp_path / "models"), tmp_path / "onnx", log=Log())
    message = "error: " + str(e.value).replace(str(folder.parent), "...")
    documented = re.findall(r"^error: \.\.\./my_onnx_model/.*$", DOC.read_text(), re.M)
    assert documented == [message]


def test_not_an_onnx_file(tmp_path):
    folder = tmp_path / "models" / "broken"
    folder.mkdir(parents=True)
    raw = dict(MLP_CONFIG, name="broken")
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    (folder / "model.onnx").write_bytes(b"this is not protobuf")
    with pytest.raises(ModelError, match="is not a valid ONNX model"):
        ensure_onnx(get_model("broken", tmp_path / "models"), tmp_path / "onnx", log=Log())


@pytest.mark.slow
def test_report_from_a_given_onnx(tmp_path):
    """make report on the ONNX backend: no export, ORT FP32 reference, both outputs compared, a report."""
    models = tmp_path / "models"
    write_onnx_model(models, MLP_CONFIG)
    reports = tmp_path / "reports"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BENCHBOOK_MODELS_DIR", None)
    r = subprocess.run(["make", "report", "MODEL=onnx_mlp", f"MODELS_DIR={models}", "BACKENDS=ort", "ITERS=3",
                        "DURATION=0.5", f"REPORTS_DIR={reports}", f"CACHE_DIR={tmp_path / 'cache'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = next((reports / "onnx_mlp").iterdir())
    engine = json.loads((run / "bench" / "ort-fp32" / "engine.json").read_text())
    assert engine["reference"] == "ONNX Runtime FP32 (CPU EP)"
    for p in sorted((run / "bench" / "ort-fp32" / "points").glob("*.json")):
        rec = json.loads(p.read_text())
        assert rec["status"] == "ok" and rec["parity"]["passed"] and set(rec["parity"]["outputs"]) == {"logits",
                                                                                                      "features"}
    assert (run / "report.html").exists()
    assert sorted(p.name for p in (models / "onnx_mlp").iterdir()) == ["config.yaml", "model.onnx"]
    # the report names the real reference, and FLOPs come from the ONNX graph (no PyTorch module to count)
    page = (run / "report.html").read_text()
    assert "Parity against ONNX Runtime FP32 (CPU EP)" in page and "Parity against PyTorch" not in page
    assert "Speedup over PyTorch eager FP32" in page and "Not computed" in page
    flops = json.loads((run / "flops.json").read_text())
    assert flops["source"] == "onnx" and all(e["flops_per_item"] > 0 for e in flops["shapes"].values())
    assert "the FP32 ONNX graph" in page


@pytest.mark.skipif("is_given_onnx" not in open(REPO / "lib" / "sweep" / "plan.py").read(),
                    reason="the plan step does not skip PyTorch backends for ONNX-only models yet (issue 7: lib/sweep/plan.py)")
def test_plan_skips_torch_backends_with_a_reason(tmp_path):
    from lib.config.params import RunParams
    from lib.sweep.plan import make_plan

    models = tmp_path / "models"
    write_onnx_model(models, MLP_CONFIG)
    params = RunParams.from_strings(model="onnx_mlp", models_dir=str(models), cache_dir=str(tmp_path / "cache"),
                                    device="cpu")
    plan = make_plan(params, tmp_path / "reports", log=Log())
    assert {c["backend"] for c in plan.combos} == {"ort"}
    torch_skip = [s for s in plan.skipped if s["backend"] == "torch"]
    assert torch_skip and "given as ONNX" in torch_skip[0]["reason"]
