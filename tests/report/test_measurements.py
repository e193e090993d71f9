"""``lib.report.measurements``: the full tables (columns, order of batches and shapes, mode names).
"""

from __future__ import annotations

import json

import lib
from lib.report import measurements, parity, summary

from .fake_runs import make_fake_run


def test_allocator_peak_and_tensorrt_scratch_are_separate_columns(tmp_path):
    """They used to share one "framework MiB" column (torch's allocator peak vs TensorRT's activation scratch)."""
    run_dir = make_fake_run(tmp_path, gpu=True, failures=False)
    for pj in run_dir.glob("bench/*/points/*.json"):
        rec = json.loads(pj.read_text())
        rec["memory"] = ({"trt_engine_device_memory_bytes": 3 << 20, "trt_io_buffer_bytes": 1 << 20}
                         if rec["backend"] == "trt" else {"torch_max_allocated_bytes": 40 << 20,
                                                          "torch_max_reserved_bytes": 64 << 20})
        pj.write_text(json.dumps(rec))
    run = lib.load_run(run_dir)
    p = run.points.set_index("backend")
    assert (p.loc["trt", "trt_activation_mib"] == 3).all() and p.loc["trt", "torch_max_allocated_mib"].isna().all()
    assert (p.loc["torch", "torch_max_allocated_mib"] == 40).all() and p.loc["torch", "trt_activation_mib"].isna().all()
    cols = measurements.summary_table(run).columns
    assert "torch allocator peak MiB" in cols and "TensorRT activation MiB" in cols and "framework MiB" not in cols


def test_tables_sort_batches_and_shapes_as_numbers(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, batches=(1, 8, 32, 128), shapes=("128x128", "16x16"),
                                     failures=False))
    for frame in (parity.parity_table(run), measurements.measurements_table(run)):
        cfg = frame["configuration"] if "configuration" in frame else frame["backend"] + "/" + frame["precision"]
        for (_, shape), g in frame.assign(cfg=cfg).groupby(["cfg", "shape"], sort=False):
            if "mode" in g:
                g = g[g["mode"] == g["mode"].iloc[0]]
            assert list(g["batch"]) == sorted(g["batch"]), list(g["batch"])
        first = frame.assign(cfg=cfg).drop_duplicates("cfg")
        assert list(frame.assign(cfg=cfg).query("cfg == @first.cfg.iloc[0]")["shape"].drop_duplicates()) == \
            ["16x16", "128x128"]
    sp = summary.speedups(run)
    assert list(summary.decision_table(run, sp)["shape"].drop_duplicates()) == ["16x16", "128x128"]
    grid = summary.speedup_table(sp, run)
    assert list(grid[grid["mode"] == grid["mode"].iloc[0]]["shape"].drop_duplicates()) == ["16x16", "128x128"]
    from lib.report.plots import sorted_shapes

    assert sorted_shapes(["512", "128", "1024"]) == ["128", "512", "1024"]
    assert sorted_shapes(["288x288", "224x224", "static"]) == ["static", "224x224", "288x288"]


def test_modes_are_worded_as_everywhere_else_in_the_measurements_table(gpu_run):
    modes = set(measurements.measurements_table(gpu_run)["mode"])
    assert modes == {"device-resident", "end-to-end", "pipelined"}
