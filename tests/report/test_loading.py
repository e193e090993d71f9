"""What the report reads: ``lib.load_run`` on synthetic run folders (failures of every kind, missing
points, Parquet export, a run copied elsewhere).
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

import lib

from .fake_runs import make_fake_run


def test_failures_cover_every_kind(gpu_run):
    f = gpu_run.failures
    statuses = set(f["status"])
    assert {"unavailable", "export failed", "crashed", "oom", "parity failed"} <= statuses, statuses
    crashed = f[f["status"] == "crashed"].iloc[0]
    assert (crashed["backend"], crashed["precision"]) == ("ort", "fp32") and "Kernel died" in crashed["reason"]
    oom = f[f["status"] == "oom"].iloc[0]
    assert (oom["backend"], oom["batch"]) == ("trt", 16)
    assert "aten::foo" in f[f["status"] == "export failed"].iloc[0]["reason"]


def test_interrupted_sweep_lists_missing_points(tmp_path):
    path = make_fake_run(tmp_path, gpu=False)
    d = path / "bench" / "ort-fp32"
    (d / "done.json").unlink()
    for f in d.glob("points/bs16_*"):
        f.unlink()
    run = lib.load_run(path)
    missing = run.failures[run.failures["status"] == "not run"]
    assert list(zip(missing["backend"], missing["batch"])) == [("ort", 16)]


def test_load_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(lib.BenchbookError, match="not a benchbook run"):
        lib.load_run(tmp_path)
    with pytest.raises(lib.BenchbookError, match="does not exist"):
        lib.load_run(tmp_path / "nope")


def test_to_parquet_round_trip(gpu_run, tmp_path):
    written = gpu_run.to_parquet(tmp_path / "out")
    assert sorted(p.name for p in written) == ["iterations.parquet", "kernel_points.parquet", "kernels.parquet",
                                               "points.parquet", "rounds.parquet", "samples.parquet"]
    kp = pd.read_parquet(tmp_path / "out" / "kernel_points.parquet")
    assert len(kp) == len(gpu_run.kernel_points) and kp["busy_share"].dtype.kind == "f"
    it = pd.read_parquet(tmp_path / "out" / "iterations.parquet")
    assert len(it) == len(gpu_run.iterations)
    assert {"backend", "precision", "batch", "shape", "mode", "iter", "ms", "wall_ms", "t_s", "requests"} <= set(it)
    s = pd.read_parquet(tmp_path / "out" / "samples.parquet")
    assert {"t_s", "sm_clock_mhz", "temp_c", "power_w", "throttle_reasons"} <= set(s)
    pts = pd.read_parquet(tmp_path / "out" / "points.parquet")
    assert len(pts) == len(gpu_run.points) and pts["nvml_process_mib"].dtype.kind == "f"
    # the default target is the run folder itself
    assert all(p.parent == gpu_run.path for p in gpu_run.to_parquet())


def test_run_copied_elsewhere_loads_the_same(tmp_path):
    a = make_fake_run(tmp_path / "a", gpu=True)
    b = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(a, b)
    ra, rb = lib.load_run(a), lib.load_run(b)
    pd.testing.assert_frame_equal(ra.points, rb.points)
    assert rb.path == b
