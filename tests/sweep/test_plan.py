"""lib.sweep.plan.make_plan: every bad input is refused before anything is written, with one line naming the
value and what is valid; run folders are never reused by a new run; a resume must keep the parameters;
a cached ONNX export that no longer matches its sha256 is detected here and made to be rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lib.sweep.plan as plan_mod
from lib.common.cache import read_json, sha256_file
from lib.common.errors import BenchbookError, ConfigError, ModelError, UnavailableError, WeightsError
from lib.config.device import nvml_gpus
from lib.config.params import RunParams
from lib.sweep.plan import make_plan

from conftest import FIXTURES, MODELS, REPO, Log, write_model

NO_GPU = pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has an NVIDIA GPU")
TINY = dict(model="tiny_cnn", models_dir=str(FIXTURES), device="cpu", iters="3", duration="0.05", warmup="0.02")


def _plan(tmp_path: Path, run_id: str = "", reports: Path | None = None, log=None, **changes):
    raw = {**TINY, "cache_dir": str(tmp_path / "cache"), **changes}
    return make_plan(RunParams.from_strings(**raw), reports or tmp_path / "reports", run_id, log=log or Log())


def _refused(tmp_path: Path, error=BenchbookError, reports: Path | None = None, run_id: str = "", **changes) -> str:
    """The one-line message of a refused plan; nothing may have been written."""
    with pytest.raises(error) as e:
        _plan(tmp_path, run_id=run_id, reports=reports, **changes)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").rglob("params.json"))
    assert not (tmp_path / "cache").exists()
    return msg


# --- points -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, words", [
    (dict(shapes="abc"), ["SHAPES=abc is not a shape of model 'tiny_cnn'", "<height>x<width>", "height 16..64",
                          "e.g. SHAPES=32x32"]),
    (dict(shapes="0"), ["SHAPES=0 is not a shape", "<height>x<width>"]),
    (dict(shapes="32x32,32"), ["SHAPES=32x32,32: 32 is not a shape"]),
    (dict(shapes="8x8"), ["SHAPES=8x8: height=8 is outside the profile of model 'tiny_cnn'", "height 16..64",
                          str(FIXTURES / "tiny_cnn" / "config.yaml")]),
    (dict(shapes="32x65"), ["width=65 is outside", "width 16..64"]),
    (dict(shapes="-32x32"), ["SHAPES=-32x32", "not a shape"]),
    (dict(shapes="32x32,,64x64"), ["SHAPES=32x32,,64x64 has an empty item"]),
    (dict(shapes="32x32,32X32"), ["repeats 32x32"]),
    (dict(batch_sizes="17"), ["BATCH_SIZES=17: 17 is outside the profile of model 'tiny_cnn'", "batch 1..16"]),
    (dict(batch_sizes="1,20,40"), ["BATCH_SIZES=1,20,40: 20, 40 are outside the profile", "batch 1..16"]),
])
def test_points_outside_the_model_are_refused(tmp_path, changes, words):
    msg = _refused(tmp_path, ConfigError, **changes)
    for w in words:
        assert w in msg, msg


def test_shapes_of_a_model_with_fixed_sizes(tmp_path):
    raw = dict(TINY, models_dir=str(MODELS), model="efficientnet_b1", shapes="abc")
    with pytest.raises(ConfigError) as e:
        make_plan(RunParams.from_strings(**raw, cache_dir=str(tmp_path / "c")), tmp_path / "r", log=Log())
    msg = str(e.value)
    assert "SHAPES=abc does not apply to model 'efficientnet_b1'" in msg and "BATCH_SIZES" in msg
    assert "SHAPES=auto" in msg


def test_shapes_naming_the_fixed_size_of_a_model(tmp_path):
    """SHAPES=240x240 for efficientnet_b1 (its only size, and the README's example) is that size."""
    raw = dict(TINY, models_dir=str(MODELS), model="efficientnet_b1", backends="ort")
    for shapes in ("240x240", "3x240x240", "static"):
        plan = make_plan(RunParams.from_strings(**raw, shapes=shapes, cache_dir=str(tmp_path / "c")), tmp_path / "r",
                         log=Log())
        assert plan.shapes == ["static"]
    with pytest.raises(ConfigError) as e:
        make_plan(RunParams.from_strings(**raw, shapes="224x224", cache_dir=str(tmp_path / "c")), tmp_path / "r",
                  log=Log())
    assert "fixed at 3x240x240" in str(e.value) and "SHAPES=240x240" in str(e.value)


def test_good_points(tmp_path):
    plan = _plan(tmp_path, batch_sizes="1,16", shapes="16x64, 64x16")
    assert plan.batch_sizes == [1, 16] and plan.shapes == ["16x64", "64x16"]


# --- backends, precisions, device ---------------------------------------------------------------------
def test_unknown_backend_suggests_the_closest(tmp_path):
    msg = _refused(tmp_path, ConfigError, backends="torch,tourch")
    assert "BACKENDS=torch,tourch: tourch is not a backend; did you mean torch?" in msg
    assert "valid: torch," in msg and "ort" in msg
    assert "repeats ort" in _refused(tmp_path, ConfigError, backends="ort,torch,ort")


@NO_GPU
def test_gpu_only_backend_on_a_cpu_says_what_runs_here(tmp_path):
    msg = _refused(tmp_path, UnavailableError, backends="trt")
    assert "nothing can run on cpu" in msg and "trt" in msg and "BACKENDS that run here: torch" in msg


@NO_GPU
def test_device_cuda_without_a_gpu(tmp_path):
    msg = _refused(tmp_path, UnavailableError, device="cuda")
    assert "DEVICE=cuda" in msg and "no NVIDIA GPU" in msg and "DEVICE=cpu" in msg


def test_unknown_device_and_precision(tmp_path):
    assert "DEVICE='gpu' is not valid; use one of auto, cpu, cuda" in _refused(tmp_path, ConfigError, device="gpu")
    assert "PRECISIONS=fp64 is not a precision" in _refused(tmp_path, ConfigError, precisions="fp64")


# --- model folders ------------------------------------------------------------------------------------
def test_unknown_model_lists_the_available_ones(tmp_path):
    msg = _refused(tmp_path, ModelError, model="tiny_cnm")
    assert "MODEL='tiny_cnm' is not a model; did you mean tiny_cnn? available: tiny_cnn" in msg
    assert str(FIXTURES) in msg and "make models" in msg


def test_missing_models_dir(tmp_path):
    assert "does not exist" in _refused(tmp_path, ModelError, models_dir=str(tmp_path / "nope"))


def test_malformed_yaml_names_file_line_and_problem(tmp_path, make_model):
    path = make_model("tiny_cnn", config="name: tiny_cnn\ninputs: [\n")
    msg = _refused(tmp_path, ConfigError, models_dir=str(make_model.root))
    assert msg.startswith(f"{path}: not valid YAML at line 3, column 1:"), msg


def test_empty_config(tmp_path, make_model):
    path = make_model("tiny_cnn", config="")
    assert f"{path}: the file is empty" in _refused(tmp_path, ConfigError, models_dir=str(make_model.root))


def test_bad_field_names_file_and_field(tmp_path, make_model, tiny_raw):
    import copy

    raw = copy.deepcopy(tiny_raw)
    raw["inputs"][0]["profile"]["max"] = [16, 3, 64]
    path = make_model("tiny_cnn", config=raw)
    msg = _refused(tmp_path, ConfigError, models_dir=str(make_model.root))
    assert f"{path}: inputs[0].profile.max: expected 4 values" in msg


def test_two_models_with_one_name(tmp_path, make_model):
    a, b = make_model("first", name="tiny_cnn"), make_model("second", name="tiny_cnn")
    msg = _refused(tmp_path, ModelError, models_dir=str(make_model.root))
    assert "two models are named 'tiny_cnn'" in msg and str(a) in msg and str(b) in msg


@pytest.mark.parametrize("load_py, words", [
    ("def build_model(config)\n    return None\n", ["line 1", "SyntaxError"]),
    ("import torch\n\n\ndef build(config):\n    return None\n", ["must define build_model(config)", "defines build"]),
    ("import torch\nimport no_such_package_xyz\n\n\ndef build_model(config):\n    pass\n",
     ["line 2 imports 'no_such_package_xyz', which is not installed", "install the package that provides it"]),
    ("from no_such_package_xyz.sub import thing\n\n\ndef build_model(config):\n    pass\n",
     ["line 1 imports 'no_such_package_xyz'"]),
])
def test_load_py_checked_without_running_it(tmp_path, make_model, load_py, words):
    make_model("tiny_cnn", load_py=load_py)
    msg = _refused(tmp_path, ModelError, models_dir=str(make_model.root))
    assert msg.startswith("model 'tiny_cnn': ") and str(make_model.root / "tiny_cnn" / "load.py") in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("load_py", [
    "try:\n    import no_such_package_xyz\nexcept ImportError:\n    pass\n\n\ndef build_model(config):\n    pass\n",
    "import helper\n\n\ndef build_model(config):\n    pass\n",  # a module beside load.py
    "from torchvision.models import resnet18 as build_model\n",
])
def test_load_py_check_accepts_what_can_run(tmp_path, make_model, load_py):
    make_model("tiny_cnn", load_py=load_py)
    (make_model.root / "tiny_cnn" / "helper.py").write_text("")
    _plan(tmp_path, models_dir=str(make_model.root))


# --- WEIGHTS (the fast checks; the state-dict checks are lib.config.models') ----------------------------------
def test_weights_that_do_not_exist_fail_without_torch(tmp_path):
    assert "WEIGHTS=" in _refused(tmp_path, WeightsError, weights=str(tmp_path / "nope.pth"))
    assert "is a folder" in _refused(tmp_path, WeightsError, weights=str(tmp_path))
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "the file is empty" in _refused(tmp_path, WeightsError, weights=str(tmp_path / "empty.pth"))


def test_weights_that_do_not_fit(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "w.pth"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    msg = _refused(tmp_path, WeightsError, weights=str(path))
    assert f"WEIGHTS='{path}' does not match model 'tiny_cnn'" in msg and "missing keys" in msg
    path.write_bytes(b"not a checkpoint at all")
    msg = _refused(tmp_path, WeightsError, weights=str(path))
    assert "is not a loadable state dict" in msg and "torch.save" in msg and len(msg) < 400


# --- folders ------------------------------------------------------------------------------------------
def test_reports_dir_that_cannot_be_written(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a regular file")
    msg = _refused(tmp_path, ConfigError, reports=afile / "reports")
    assert f"REPORTS_DIR={afile / 'reports'} cannot be written ({afile} is a file, not a folder)" in msg
    msg = _refused(tmp_path, ConfigError, reports=afile)
    assert "it is a file, not a folder" in msg
    msg = _refused(tmp_path, ConfigError, reports=Path("/proc/benchbook-reports"))
    assert "REPORTS_DIR=/proc/benchbook-reports cannot be written (cannot create folders in /proc" in msg
    assert "contains a space" in _refused(tmp_path, ConfigError, reports=tmp_path / "my reports")


def test_cache_dir_that_cannot_be_written(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError, match=r"CACHE_DIR=.*/afile/c cannot be written \(.*afile is a file"):
        _plan(tmp_path, cache_dir=str(afile / "c"))
    assert not (tmp_path / "reports").exists()  # the probe folder was removed again


def test_bad_run_id(tmp_path):
    for bad in ("../x", "a/b", ".hidden", "a b"):
        assert "RUN_ID=" in _refused(tmp_path, ConfigError, run_id=bad)
    (tmp_path / "reports" / "tiny_cnn" / "notes").mkdir(parents=True)
    (tmp_path / "reports" / "tiny_cnn" / "notes" / "x.txt").write_text("mine")
    msg = _refused(tmp_path, ConfigError, run_id="notes")
    assert "exists but is not a run folder" in msg
    assert (tmp_path / "reports" / "tiny_cnn" / "notes" / "x.txt").read_text() == "mine"


# --- run folders: never reused by a new run, resumed only with the same parameters --------------------
def test_new_runs_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_mod, "new_run_id", lambda device: "20250101-000000-cpu")
    first = _plan(tmp_path)
    (first.run_dir / "report.html").write_text("the first report")
    second = _plan(tmp_path)
    third = _plan(tmp_path)
    assert [p.run_dir.name for p in (first, second, third)] == \
        ["20250101-000000-cpu", "20250101-000000-cpu-2", "20250101-000000-cpu-3"]
    assert not second.resumed and (first.run_dir / "report.html").read_text() == "the first report"


def test_resume_keeps_params_and_refuses_other_parameters(tmp_path):
    first = _plan(tmp_path)
    params_before = (first.run_dir / "params.json").read_bytes()
    point = first.run_dir / "bench" / "torch-fp32" / "points" / "bs1_32x32.json"
    point.parent.mkdir(parents=True)
    point.write_text(json.dumps({"status": "ok"}))
    log = Log()
    again = _plan(tmp_path, run_id=first.run_dir.name, log=log)
    assert again.resumed and again.run_dir == first.run_dir
    assert (first.run_dir / "params.json").read_bytes() == params_before and point.exists()
    assert "its 1 point already on disk is kept, not measured again" in log.text
    with pytest.raises(ConfigError) as e:
        _plan(tmp_path, run_id=first.run_dir.name, iters="5", batch_sizes="1")
    msg = str(e.value)
    assert f"RUN_ID={first.run_dir.name} was run with other parameters" in msg
    assert "BATCH_SIZES=auto there, 1 now" in msg and "ITERS=3 there, 5 now" in msg
    assert "leave RUN_ID empty for a new run" in msg


def test_a_new_run_points_at_an_unfinished_one(tmp_path):
    first = _plan(tmp_path)
    log = Log()
    second = _plan(tmp_path, log=log)
    assert second.run_dir != first.run_dir
    assert f"RUN_ID={first.run_dir.name} would resume it" in log.text
    (second.run_dir / "report.html").write_text("done")
    log = Log()
    _plan(tmp_path, log=log)
    assert "would resume" not in log.text  # the newest run with these parameters has its report


# --- the cached export: a truncated or corrupt ONNX is detected by its sha256 -------------------------
@pytest.fixture
def stamped(tmp_path, tiny_onnx):
    """A plan whose cache holds a copy of the tiny model's real FP32 export and the stamp make writes."""
    plan = _plan(tmp_path, backends="ort")
    src = tiny_onnx["fp32"].path.parent
    key = src.name
    dst = tmp_path / "cache" / "onnx" / "tiny_cnn" / key
    shutil.copytree(src, dst)
    stamp = plan_mod._stamp(plan, key)
    if stamp.parent != dst:
        pytest.skip("the export key changed during the session (lib sources edited meanwhile)")
    stamp.write_text("done\n")
    return {"onnx": dst / "model.onnx", "stamp": stamp}


def test_intact_export_keeps_its_stamp(tmp_path, stamped):
    log = Log()
    _plan(tmp_path, backends="ort", log=log)
    assert stamped["stamp"].exists() and "warning" not in log.text


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_export_loses_its_stamp_with_a_warning(tmp_path, stamped, damage):
    onnx = stamped["onnx"]
    if damage == "truncate":
        with open(onnx, "r+b") as f:
            f.truncate(onnx.stat().st_size // 2)
    else:  # same size, other bytes: only the hash can tell
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx.write_bytes(bytes(data))
    log = Log()
    _plan(tmp_path, backends="ort", log=log)
    assert not stamped["stamp"].exists()
    assert "[plan] warning: the cached ONNX export cannot be used" in log.text
    assert "does not match its recorded sha256 (truncated or corrupt); it will be rebuilt" in log.text
    assert sha256_file(onnx) != read_json(onnx.parent / "manifest.json")["sha256"]


# --- the plan step is fast and imports no torch --------------------------------------------------------
def test_plan_step_imports_no_torch_and_fails_fast(tmp_path):
    code = ("import sys, time; t0 = time.perf_counter(); from lib.pipeline.cli import main; "
            "rc = main(sys.argv[1:]); print(rc, 'torch' in sys.modules, time.perf_counter() - t0)")
    for sets, rc_expected in ((["--set", "model=tiny_cnn", "--set", "batch_sizes=0"], "2"), ([], "0")):
        proc = subprocess.run([sys.executable, "-c", code, "plan", "--set", "model=tiny_cnn",
                               "--set", f"models_dir={FIXTURES}", "--set", f"cache_dir={tmp_path / 'c'}",
                               "--set", "device=cpu", *sets, "--reports-dir", str(tmp_path / "r")],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        rc, torch_imported, seconds = proc.stdout.split()[-3:]
        assert rc == rc_expected, proc.stderr
        assert torch_imported == "False"
        assert float(seconds) < 5, seconds  # UX guard (the bound), not a benchmark


@pytest.mark.parametrize("change, shown", [
    ({"trt_workspace_gib": "2"}, "TRT_WORKSPACE=4.0 there, 2.0 now"),
    ({"trt_opt_level": "5"}, "TRT_OPT_LEVEL=3 there, 5 now"),
    ({"cache_dir": "OTHER"}, "CACHE_DIR="),
    ({"models_dir": "OTHER"}, "MODELS_DIR="),
])
def test_resume_refuses_other_engine_and_folder_settings(tmp_path, change, shown):
    """These used to be silently kept from the first run: a resume with another TensorRT workspace, cache or
    models folder measured with the old ones while the command line said otherwise."""
    import shutil

    first = _plan(tmp_path)
    if "models_dir" in change:  # an existing folder with the same model in it
        shutil.copytree(Path(TINY["models_dir"]), tmp_path / "OTHER")
    value = change.get("cache_dir") or change.get("models_dir")
    changes = {k: (str(tmp_path / v) if k in ("cache_dir", "models_dir") else v) for k, v in change.items()}
    with pytest.raises(ConfigError) as e:
        _plan(tmp_path, run_id=first.run_dir.name, **changes)
    assert shown in str(e.value) and "was run with other parameters" in str(e.value), str(e.value)
    assert value is None or str(tmp_path / value) in str(e.value)


# --- INT8: the ONNX variants a plan asks for, CALIB checked before any work (lib.artifacts.quantize) ------------------
def test_int8_plan_asks_for_the_qdq_file_and_its_calibration(tmp_path):
    plan = _plan(tmp_path, backends="ort", precisions="fp32,int8")
    assert plan.combos == [{"backend": "ort", "precision": "fp32"}, {"backend": "ort", "precision": "int8"}]
    assert plan.onnx_precisions == ["fp32", "int8"]
    mk = (plan.run_dir / "plan.mk").read_text()
    assert "ONNX_PRECISIONS := fp32,int8" in mk and "-calib" in mk  # another CALIB, another export stamp


def test_every_step_after_the_export_opens_the_int8_file_calibrated_on_calib(tmp_path, tiny_raw):
    """run_onnx, which the benchmark and the load stage open their ONNX files through, asks for the file the
    export built with CALIB: a cache hit, nothing quantized again. The load stage called ensure_onnx without CALIB
    and quantized another INT8 model (calibrated on seeded inputs) and measured it under load (a resnet50 run)."""
    import inspect

    from lib.artifacts.export import ensure_onnx
    from lib.config.models import get_model
    from lib.sweep import bench, load_stage
    from lib.sweep.plan import load_plan, run_onnx

    from make_images import write_labelled_images

    raw = {**tiny_raw, "name": "tiny_img",  # images need the model's preprocessing
           "preprocessing": {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    models = write_model(tmp_path / "models", "tiny_img", raw).parent.parent
    images = write_labelled_images(tmp_path / "images", classes=3, per_class=4, size=(40, 48))
    plan = _plan(tmp_path, model="tiny_img", models_dir=str(models), backends="ort", precisions="fp32,int8",
                 calib=str(images))
    params, plan_json = load_plan(plan.run_dir)
    cfg = get_model(params.model, params.models_path)
    exported = ensure_onnx(cfg, Path(params.cache_dir) / "onnx", ("fp32", "int8"), calib=str(images), log=Log())
    log = Log()
    opened = run_onnx(cfg, params, plan_json, log)
    assert opened["int8"] == exported["int8"].path and opened["fp32"] == exported["fp32"].path
    assert "calibrat" not in log.text, log.text  # a cache hit: no calibration ran
    seeded = ensure_onnx(cfg, Path(params.cache_dir) / "onnx", ("fp32", "int8"), log=Log())
    assert seeded["int8"].path != opened["int8"]  # what leaving CALIB out opened: another model
    for step in (bench.run_backend, load_stage.run_load):  # both open the run's files through run_onnx
        assert "run_onnx(" in inspect.getsource(step) and "ensure_onnx(" not in inspect.getsource(step)


def test_calib_without_int8_and_a_calib_that_is_not_a_folder_are_refused(tmp_path):
    msg = _refused(tmp_path, ConfigError, backends="ort", precisions="fp32", calib=str(tmp_path))
    assert "calibrates INT8 ONNX files" in msg and "add int8 to PRECISIONS" in msg
    msg = _refused(tmp_path, ConfigError, backends="ort", precisions="fp32,int8", calib=str(tmp_path / "nope"))
    assert f"CALIB={str(tmp_path / 'nope')!r} is not a folder" in msg


def test_int8_on_a_backend_that_does_not_run_it_is_skipped_with_the_reason(tmp_path):
    plan = _plan(tmp_path, backends="torch,ort", precisions="fp32,int8")
    assert {"backend": "torch", "precision": "int8"} not in plan.combos
    assert any(s["backend"] == "torch" and s["precision"] == "int8" and "does not run int8" in s["reason"]
               for s in plan.skipped)
