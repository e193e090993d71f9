"""lib.report.quant on a real run: the tiny CNN (with image preprocessing) on ONNX Runtime's CPU EP at FP32
and INT8, calibrated and scored on a generated labelled folder (CALIB = DATA): speedups from the raw
medians, parity, top-1 and its drop, agreement with FP32 image by image, file sizes and calibration; the
tolerance stated, the fastest configuration within it named, random weights said plainly."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import Log, make_run, write_model
from lib.report import quant as report_quant
from lib.sweep.bench import run_backend
from lib.artifacts.export import ensure_onnx, export_summary
from lib.config.models import get_model
from lib.results.run import load_run
from make_images import write_labelled_images

PREP = {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory, tiny_raw, cache_dir):
    root = tmp_path_factory.mktemp("rq")
    raw = copy.deepcopy(tiny_raw)
    raw.update(name="tiny_q", preprocessing=PREP)
    models = write_model(root / "models", "tiny_q", raw).parent.parent
    images = write_labelled_images(root / "images", classes=3, per_class=4, size=(40, 48))
    plan = make_run(root / "reports", cache_dir, model="tiny_q", models_dir=str(models), backends="ort",
                    precisions="fp32,int8", batch_sizes="1,4", shapes="32x32", calib=str(images), data=str(images))
    for bench_pass, combos in ((1, plan.combos), (2, plan.combos[::-1])):
        for c in combos:
            run_backend(plan.run_dir, c["backend"], c["precision"], bench_pass=bench_pass, log=Log())
    # export.json, as the export step writes it (lib.pipeline.cli export-record: from the cache, nothing rebuilt)
    cfg = get_model("tiny_q", models)
    export_summary(ensure_onnx(cfg, cache_dir / "onnx", plan.onnx_precisions, log=Log(), build=False,
                               calib=str(images)), plan.run_dir)
    return load_run(plan.run_dir)


def test_quant_table(quant_run):
    t = report_quant.quant_table(quant_run)
    assert list(t["precision"]) == ["fp32", "int8"] and set(t["backend"]) == {"ort"}
    i8 = t[t["precision"] == "int8"].iloc[0]
    assert i8[report_quant.SPEEDUP].startswith("bs 1: ") and "bs 4: " in i8[report_quant.SPEEDUP]
    d = quant_run.points[quant_run.points["mode"] == "device"]
    ratio = float(d[(d.precision == "fp32") & (d.batch == 4)]["median_ms"].iloc[0]) / float(
        d[(d.precision == "int8") & (d.batch == 4)]["median_ms"].iloc[0])
    assert f"bs 4: {ratio:.2f}x (" in i8[report_quant.SPEEDUP]  # from the raw-sample medians, with an interval
    assert 0 <= i8["top-1 (DATA)"] <= 1 and 0 <= i8["top-1 agreement with FP32 (DATA)"] <= 1
    assert np.isfinite(i8["top-1 drop vs FP32 (points)"]) and np.isfinite(i8["worst input-dependent cosine"])
    assert "12 images from CALIB=" in i8["calibration"] and i8["calibration s"] > 0
    assert 0 < i8["model file MB"] < t[t["precision"] == "fp32"].iloc[0]["model file MB"] * 2
    assert i8["file"] == "ONNX (int8)" and i8["reference"] == "ort/fp32"
    assert 0 <= i8["top-1 agreement with FP32 (calibration, ORT CPU)"] <= 1


def test_quant_markdown_states_the_tolerance_and_names_the_fastest_within_it(quant_run):
    text = report_quant.quant_markdown(quant_run)
    assert "at most 1 point below the same backend's FP32" in text and "MAX_ACC_DROP=auto" in text
    assert "Fastest within the tolerance at batch 4" in text or "No configuration at batch 4" in text
    assert "speedup over ort/fp32" in text and "Calibration" in text
    assert "Random weights: the accuracy figures mean nothing about a trained model" in text
    parity = report_quant.quant_markdown(quant_run, "parity")
    assert "every point passes parity against PyTorch FP32" in parity and "MAX_ACC_DROP=parity" in parity


def test_the_tolerance_decides(quant_run):
    t = report_quant.quant_table(quant_run)
    i8 = t[t["precision"] == "int8"].iloc[0]
    drop = i8["top-1 drop vs FP32 (points)"]
    kind, points, _ = report_quant.tolerance(quant_run, f"{max(drop, 0) + 5:g}")
    assert kind == "top1" and report_quant._within(i8, kind, points)[0] is True  # top-1 decides with DATA
    assert report_quant._within(i8, "parity", None)[0] is bool(i8["parity passed"])
    if drop > 0:
        assert report_quant._within(i8, "top1", drop / 2)[0] is False


def test_without_fp32_the_quantized_points_are_compared_with_fp16(quant_run):
    """PRECISIONS=fp16,int8,fp8 (the H200 bert_base run) has no FP32 of a backend: its FP16 is the reference.
    The CPU cannot run ORT FP16, so the fp32 points of the real run are relabelled fp16 here."""
    run = copy.copy(quant_run)
    relabel = {"fp32": "fp16"}
    for name in ("points", "rounds", "iterations"):
        frame = getattr(quant_run, name).copy()
        frame["precision"] = frame["precision"].replace(relabel)
        setattr(run, name, frame)
    run.plan = copy.deepcopy(quant_run.plan)
    for c in run.plan["combos"]:
        c["precision"] = relabel.get(c["precision"], c["precision"])
    assert report_quant.reference_precision(run, "ort") == "fp16"
    t = report_quant.quant_table(run)
    i8 = t[t["precision"] == "int8"].iloc[0]
    assert i8["reference"] == "ort/fp16" and i8[report_quant.SPEEDUP].startswith("bs 1: ")
    assert t[t["precision"] == "fp16"].iloc[0][report_quant.SPEEDUP] == "1"
    assert "speedup over ort/fp16" in report_quant.quant_markdown(run)
