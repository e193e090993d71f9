"""FLOPs per item (counted by the benchmark step into the run folder, only read by the analysis) and peaks
(datasheet table or measured)."""

from __future__ import annotations

import json
import math
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: test_report's run builders

import lib  # noqa: E402
from lib.measure import flops, peaks  # noqa: E402
from lib.report.format import table  # noqa: E402
from lib.config.models import get_model  # noqa: E402
from report.fake_runs import FIXTURE_MODELS, make_fake_run  # noqa: E402 (tests/report/)

# tiny_cnn at 32x32, batch 1: conv 3->8 3x3 on 32x32 (2*8*32*32*3*9) + conv 8->16 3x3 stride 2 to 16x16
# (2*16*16*16*8*9) + linear 16->10 (2*16*10)
TINY_FLOPS = 2 * 8 * 32 * 32 * 3 * 9 + 2 * 16 * 16 * 16 * 8 * 9 + 2 * 16 * 10


def test_count_flops_matches_hand_count():
    cfg = get_model("tiny_cnn", FIXTURE_MODELS)
    total, by_op = flops.count_flops(cfg, "32x32")
    assert total == TINY_FLOPS == 1_032_512
    assert by_op["aten.convolution"] == TINY_FLOPS - 320
    # scales with the shape: 64x64 has 4x the pixels
    assert flops.count_flops(cfg, "64x64")[0] == 4 * (TINY_FLOPS - 320) + 320


def _tiny():
    return get_model("tiny_cnn", FIXTURE_MODELS)


def test_record_flops_counts_once_and_read_flops_reads_it(tmp_path, monkeypatch):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True))
    cfg = _tiny()
    flops.record_flops(run.path, cfg, [cfg.parse_shape("32x32")])
    stored = json.loads((run.path / "flops.json").read_text())
    assert stored["shapes"]["32x32"]["flops_per_item"] == TINY_FLOPS and "FlopCounterMode" in stored["method"]
    f = flops.read_flops(run)
    assert list(f["shape"]) == ["32x32"] and f.iloc[0]["flops_per_item"] == TINY_FLOPS

    def boom(*a, **k):
        raise AssertionError("counted twice")

    monkeypatch.setattr(flops, "count_flops", boom)
    flops.record_flops(run.path, cfg, [cfg.parse_shape("32x32")])  # already there: not counted again
    t = flops.by_op_table(run)
    assert list(t["operator"]) == ["aten.convolution", "aten.addmm"]
    assert np.isclose(t["% of the shape's FLOPs"].sum(), 1)  # fractions, as every '% ...' column
    shown = table(t).to_html()  # as the report shows it (an H200 report read "9981.4%" for convolutions)
    shares = [float(x) for x in re.findall(r">([0-9.]+)%<", shown)]
    assert len(shares) == 2 and all(0 < x <= 100 for x in shares) and abs(sum(shares) - 100) < 0.5, shares


def test_onnx_graph_count_agrees_with_torch(tiny_onnx):
    cfg = _tiny()
    for label in ("32x32", "64x64"):
        total, by_op = flops.count_onnx_flops(tiny_onnx["fp32"].path, cfg, label)
        assert total == flops.count_flops(cfg, label)[0]
        assert set(by_op) == {"onnx.Conv", "onnx.Gemm"}
    assert flops.count_onnx_flops(tiny_onnx["fp32"].path, cfg, "32x32")[0] == TINY_FLOPS


def test_model_given_as_onnx_is_counted_from_the_graph(tmp_path, tiny_onnx):
    models = tmp_path / "models" / "onnx_only"
    models.mkdir(parents=True)
    cfg_text = (FIXTURE_MODELS / "tiny_cnn" / "config.yaml").read_text().replace("name: tiny_cnn", "name: onnx_only")
    (models / "config.yaml").write_text(cfg_text)
    (models / "model.onnx").write_bytes(Path(tiny_onnx["fp32"].path).read_bytes())
    cfg = get_model("onnx_only", tmp_path / "models")
    path = make_fake_run(tmp_path / "reports", gpu=False)
    stored = flops.record_flops(path, cfg, [cfg.parse_shape("32x32")], models / "model.onnx")
    assert stored["source"] == "onnx" and stored["shapes"]["32x32"]["flops_per_item"] == TINY_FLOPS
    assert "ONNX" in flops.read_flops(lib.load_run(path)).iloc[0]["method"]


def test_bert_attention_is_counted():
    """SDPA on the CPU used to count 0 FLOPs: the attention's two matrix multiplies per layer were missing
    (2.7% of BERT-base at sequence 128)."""
    pytest.importorskip("transformers")
    cfg = get_model("bert_base")
    total, by_op = flops.count_flops(cfg, "128")
    attention = 12 * 2 * 2 * 128 * 128 * 768  # 12 layers x (QK^T and AV) x 2 FLOPs per MAC x seq^2 x hidden
    assert by_op.get("aten.bmm", 0) == attention, by_op
    assert total == by_op["aten.addmm"] + attention


def test_read_flops_without_the_file_says_so(tmp_path):
    f = flops.read_flops(lib.load_run(make_fake_run(tmp_path, gpu=False)))
    assert math.isnan(f.iloc[0]["flops_per_item"]) and "no flops.json" in f.iloc[0]["note"]


def test_analysis_never_runs_the_code_a_run_folder_names(tmp_path):
    """A run folder received from someone else names its models_dir; the analysis must not build (import) the
    model from there. Before the fix the FLOP count built it and so ran that folder's load.py."""
    import shutil

    evil = tmp_path / "their-models" / "tiny_cnn"
    shutil.copytree(FIXTURE_MODELS / "tiny_cnn", evil)
    marker = tmp_path / "load.py-ran"
    (evil / "load.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + (evil / "load.py").read_text())
    path = make_fake_run(tmp_path / "reports", gpu=True)
    params = json.loads((path / "params.json").read_text())
    params["models_dir"] = str(evil.parent)
    (path / "params.json").write_text(json.dumps(params))
    from report.fake_runs import run_analysis_cells

    run_analysis_cells(path)
    assert not marker.exists(), "analysing the run folder ran its load.py"
    assert not (path / "flops.json").exists()


@pytest.mark.parametrize("name, label", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA A10", "A10"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"), ("Tesla T4", "T4"), ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"),
    ("NVIDIA GeForce RTX 3090", "GeForce RTX 3090"), ("Tesla V100-SXM2-16GB", "V100 SXM2"),
])
def test_known_gpus_match_their_datasheet_entry(name, label):
    assert peaks.match_gpu(name).label == label


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA B200", "", None])
def test_unknown_gpus_do_not_match(name):
    assert peaks.match_gpu(name) is None


def test_fp32_with_tf32_uses_the_tf32_peak(tmp_path):
    assert peaks.peak_key("fp32", "cuda", True) == "tf32"
    assert peaks.peak_key("fp32", "cuda", False) == "fp32"
    assert peaks.peak_key("fp32", "cpu", True) == "fp32"
    run = lib.load_run(make_fake_run(tmp_path, gpu=True))
    pk = peaks.ensure_peaks(run)
    assert set(pk) == {"tf32", "fp16"}
    assert pk["tf32"].tflops == 494.5 and pk["tf32"].source == "datasheet" and "TF32" in pk["tf32"].label
    assert pk["fp16"].tflops == 989.5
    flops.record_flops(run.path, _tiny(), [_tiny().parse_shape("32x32")])
    eff = flops.efficiency(run, flops.read_flops(run), pk)
    r = eff[(eff["backend"] == "trt") & (eff["batch"] == 1) & (eff["mode"] == "throughput")].iloc[0]
    assert np.isclose(r["achieved_tflops"], TINY_FLOPS * r["items_per_s"] / 1e12)
    assert np.isclose(r["peak_share"], r["achieved_tflops"] / 989.5)
    assert "FP16 tensor" in r["peak_label"]


def test_t4_has_no_tf32_so_fp32_uses_the_fp32_peak(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, gpu_name="Tesla T4"))
    pk = peaks.ensure_peaks(run)
    assert pk["tf32"].tflops == 8.1 and "no TF32" in pk["tf32"].label


def test_unknown_gpu_on_another_host_gets_no_peak(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, gpu_name="NVIDIA Mystery 9000"))
    pk = peaks.ensure_peaks(run)
    assert math.isnan(pk["fp16"].tflops) and "gpu-box" in pk["fp16"].label
    assert not (run.path / "peaks.json").exists()


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    from lib.measure.environment import cpu_model

    path = make_fake_run(tmp_path, gpu=False)
    for eng in path.glob("bench/*/engine.json"):  # make the run look like it ran on this machine
        e = json.loads(eng.read_text())
        e["environment"].update(hostname=socket.gethostname(), cpu=cpu_model())
        eng.write_text(json.dumps(e))
    run = lib.load_run(path)
    pk = peaks.ensure_peaks(run)
    assert pk["fp32"].source == "measured" and pk["fp32"].tflops > 0.001
    assert pk["fp32"].label.startswith("measured: best torch.matmul")
    cached = json.loads((path / "peaks.json").read_text())["cpu:fp32"]
    assert cached["tflops"] == pk["fp32"].tflops

    def boom(*a, **k):
        raise AssertionError("measured twice")

    monkeypatch.setattr(peaks, "measure_matmul_peak", boom)
    assert peaks.ensure_peaks(lib.load_run(path))["fp32"].tflops == cached["tflops"]
