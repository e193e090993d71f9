"""Bad input through ``make report``, as a new user types it: each case exits non-zero within seconds,
before any heavy work, with one line on stderr (no traceback) that names the value and what is valid,
and leaves nothing behind in REPORTS_DIR or CACHE_DIR."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lib.common.errors import BenchbookError
from lib.config.device import nvml_gpus
from lib.pipeline.cli import _check_make_vars

from conftest import FIXTURES, REPO

TINY = ["MODEL=tiny_cnn", f"MODELS_DIR={FIXTURES}"]
UX_SECONDS = 15  # bad input is refused before any heavy work (an export alone takes longer here); the WEIGHTS
# check loads the file with torch, whose cold import alone took 5.2 s on this 2-core machine (a 5 s bound failed)


def make_report(tmp_path: Path, *args: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BENCHBOOK_MODELS_DIR", "RUN_ID")}
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "--no-print-directory", "report", f"REPORTS_DIR={tmp_path / 'reports'}",
                           f"CACHE_DIR={tmp_path / 'cache'}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def refused(tmp_path: Path, *args: str) -> str:
    """make report with bad input: exit 2, one 'error:' line and make's own, fast, nothing written."""
    proc, seconds = make_report(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    ours = [ln for ln in lines if not ln.startswith("make: ***")]
    assert len(ours) == 1 and ours[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip(), proc.stdout + proc.stderr
    assert seconds < UX_SECONDS, f"{seconds:.1f} s: {ours[0]}"
    # nothing at all, not even an empty run or model folder (issue 14)
    assert not list((tmp_path / "reports").rglob("*")) and not (tmp_path / "cache").exists()
    return ours[0]


# --- the three: `make report MODEL=nope`, `BATCH_SIZES=0`, `SHAPES=abc` --------------------------
def test_unknown_model(tmp_path):
    msg = refused(tmp_path, "MODEL=nope")
    assert msg.startswith("error: MODEL='nope' is not a model; available: ")
    for name in ("efficientnet_b1", "mobilenet_v2", "resnet50"):
        assert name in msg
    assert "make models" in msg


def test_batch_sizes_zero(tmp_path):
    msg = refused(tmp_path, "MODEL=efficientnet_b1", "BATCH_SIZES=0")
    assert msg == ("error: BATCH_SIZES=0 is not valid; expected whole numbers >= 1 separated by commas, "
                   "e.g. BATCH_SIZES=1,8,32, or auto")


def test_shapes_abc(tmp_path):
    msg = refused(tmp_path, "MODEL=efficientnet_b1", "SHAPES=abc")
    assert msg.startswith("error: SHAPES=abc does not apply to model 'efficientnet_b1': its input sizes are fixed")
    assert "BATCH_SIZES" in msg and "SHAPES=auto" in msg


# --- every other kind of bad value ---------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["BATCH_SIZES=abc"], ["BATCH_SIZES=abc is not a whole number", "BATCH_SIZES=1,8,32"]),
    (["BATCH_SIZES=-1"], ["BATCH_SIZES=-1 is not valid", ">= 1"]),
    (["BATCH_SIZES=1 8"], ["BATCH_SIZES='1 8'", "commas"]),  # reaches the check intact (quoted by make)
    (["BATCH_SIZES=1,,8"], ["BATCH_SIZES=1,,8 has an empty item"]),
    (["BATCH_SIZES=64"], ["BATCH_SIZES=64: 64 is outside the profile of model 'tiny_cnn'", "batch 1..16"]),
    (["SHAPES=abc"], ["SHAPES=abc is not a shape of model 'tiny_cnn'", "<height>x<width>", "e.g. SHAPES=32x32"]),
    (["SHAPES=0"], ["SHAPES=0 is not a shape"]),
    (["SHAPES=8x8"], ["SHAPES=8x8: height=8 is outside the profile", "height 16..64"]),
    (["ITERS=0"], ["ITERS=0 is not valid", "from 1 to"]),
    (["ITERS=-5"], ["ITERS=-5 is not valid"]),
    (["ITERS=ten"], ["ITERS=ten is not a whole number"]),
    (["DURATION=0"], ["DURATION=0 is not valid", "seconds > 0"]),
    (["DURATION=-1"], ["DURATION=-1 is not valid"]),
    (["DURATION=1s"], ["DURATION=1s is not a number", "seconds"]),
    (["WARMUP=0"], ["WARMUP=0 is not valid", "seconds > 0"]),
    (["WARMUP=abc"], ["WARMUP=abc is not a number"]),
    (["BACKENDS=tensorrt"], ["BACKENDS=tensorrt is not a backend", "valid: torch,", "or auto"]),
    (["BACKENDS=torch,onnx"], ["onnx is not a backend"]),
    (["PRECISIONS=fp64"], ["PRECISIONS=fp64 is not a precision", "fp32, fp16, bf16, int8, fp8 or auto"]),
    (["PRECISIONS=int8", "BACKENDS=torch"], ["torch does not run int8 on cpu"]),
    (["MAX_ACC_DROP=2"], ["MAX_ACC_DROP=2 is a drop in top-1 points", "needs labelled images", "DATA="]),
    (["MAX_ACC_DROP=much"], ["MAX_ACC_DROP=much is not valid", "auto", "parity"]),
    (["PRECISIONS=fp32,int8", "BACKENDS=ort", "CALIB=/nonexistent/calib"], ["CALIB='/nonexistent/calib' is not a folder"]),
    (["PRECISIONS=fp32", "BACKENDS=ort", "CALIB=/tmp"], ["CALIB=/tmp calibrates INT8 ONNX files", "add int8 to PRECISIONS"]),
    (["DEVICE=gpu"], ["DEVICE='gpu' is not valid", "auto, cpu, cuda"]),
    (["COMPILE_MODE=fastest"], ["COMPILE_MODE=fastest is not a torch.compile mode", "max-autotune"]),
    (["RUN_ID=../other"], ["RUN_ID=../other is not valid", "leave it empty for a new run"]),
    (["BATCH_SIZE=8"], ["make report does not take BATCH_SIZE (did you mean BATCH_SIZES?)"]),
    (["model=resnet50"], ["make report does not take model (did you mean MODEL?)"]),
])
def test_bad_value(tmp_path, args, words):
    msg = refused(tmp_path, *TINY, *args)
    for w in words:
        assert w in msg, msg


@pytest.mark.skipif(bool(nvml_gpus()), reason="this machine has an NVIDIA GPU")
def test_device_cuda_without_a_gpu(tmp_path):
    msg = refused(tmp_path, *TINY, "DEVICE=cuda")
    assert "DEVICE=cuda, but this machine has no NVIDIA GPU" in msg and "DEVICE=cpu" in msg


def test_model_folder_problems(tmp_path, make_model):
    make_model("tiny_cnn", config="name: tiny_cnn\ninputs: [\n")
    msg = refused(tmp_path, "MODEL=tiny_cnn", f"MODELS_DIR={make_model.root}")
    assert f"{make_model.root / 'tiny_cnn' / 'config.yaml'}: not valid YAML at line 3" in msg
    make_model("tiny_cnn")
    make_model("copy", name="tiny_cnn")
    msg = refused(tmp_path, "MODEL=tiny_cnn", f"MODELS_DIR={make_model.root}")
    assert "two models are named 'tiny_cnn'" in msg


def test_load_py_that_cannot_run(tmp_path, make_model):
    make_model("tiny_cnn", load_py="import torch\nimport timm_not_installed_xyz\n\ndef build_model(c):\n    pass\n")
    msg = refused(tmp_path, "MODEL=tiny_cnn", f"MODELS_DIR={make_model.root}")
    assert "model 'tiny_cnn'" in msg and "line 2 imports 'timm_not_installed_xyz', which is not installed" in msg


def test_weights_problems(tmp_path):
    msg = refused(tmp_path, *TINY, f"WEIGHTS={tmp_path / 'nope.pth'}")
    assert f"WEIGHTS='{tmp_path / 'nope.pth'}' does not exist" in msg
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    msg = refused(tmp_path, *TINY, f"WEIGHTS={junk}")  # reads the file with torch: still within seconds
    assert "is not a loadable state dict" in msg


def test_reports_dir_that_cannot_be_written(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a regular file, so mkdir under it fails even for root")
    for reports, why in ((afile / "reports", f"{afile} is a file, not a folder"),
                         ("/proc/benchbook-reports", "cannot create folders in /proc")):
        proc, seconds = make_report(tmp_path / "x", *TINY, f"REPORTS_DIR={reports}")
        assert proc.returncode == 2 and seconds < UX_SECONDS
        assert f"error: REPORTS_DIR={reports} cannot be written ({why}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_make_vars_check():
    _check_make_vars([], ["MODEL"])
    with pytest.raises(BenchbookError, match=r"does not take ITER \(did you mean ITERS\?\), FOO; its parameters"):
        _check_make_vars(["ITER", "FOO"], ["MODEL", "ITERS"])


def test_an_interrupted_step_interrupts_only_the_makes_of_its_own_process_group(tmp_path):
    """A step interrupted by itself interrupts the makes above it in its process group (Ctrl-C semantics), never a
    make in another group: before, a `make test` whose test started a run in a session of its own ended with 130
    although every test passed."""
    import subprocess
    import sys

    from conftest import REPO

    step = ("import signal, lib.pipeline.interrupts as c; c.SIGNUMS[:] = [signal.SIGINT]; c.interrupt_makes()")
    mk = tmp_path / "Makefile"
    mk.write_text(f"other:\n\tsetsid {sys.executable} -c '{step}'; sleep 1\n"
                  f"same:\n\t{sys.executable} -c '{step}'; sleep 1\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    other = subprocess.run(["make", "-s", "-f", str(mk), "other"], env=env, start_new_session=True, timeout=60)
    assert other.returncode == 0  # the make above, in another group, is left alone
    same = subprocess.run(["make", "-s", "-f", str(mk), "same"], env=env, start_new_session=True, timeout=60)
    assert same.returncode != 0  # the make of its own group is interrupted
