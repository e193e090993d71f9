"""The load stage (lib.sweep.load_stage) on a real tiny run folder, and its report section (lib.report.load): what it
picks, the files it writes and their columns, and a run without load files still rendering the section."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest

from conftest import Log

matplotlib.use("Agg")


def _set_params(run_dir, **changes):
    p = json.loads((run_dir / "params.json").read_text())
    p.update(changes)
    (run_dir / "params.json").write_text(json.dumps(p))


@pytest.fixture(scope="module")
def loaded_run(bench_run, tmp_path_factory):
    """A copy of the tiny bench run with the load stage run on it (LOAD=all, two concurrencies, two rates)."""
    import shutil

    from lib.sweep.load_stage import run_load

    dst = tmp_path_factory.mktemp("loadrun") / "reports" / "tiny_cnn" / bench_run["run_dir"].name
    shutil.copytree(bench_run["run_dir"], dst)
    _set_params(dst, load="all", concurrency="1,2", rates="0.3x,100")
    log = Log()
    record = run_load(dst, log=log)
    return dst, record, log


def test_stage_measures_every_configuration_and_writes_the_files(loaded_run):
    from lib.measure.load import POINT_COLUMNS, REQUEST_COLUMNS
    from lib.sweep.load_stage import LOAD_FILES

    run_dir, record, log = loaded_run
    assert record["status"] == "ok", record
    assert {(c["backend"], c["status"]) for c in record["configurations"]} == {("torch", "ok"), ("ort", "ok")}
    assert json.loads((run_dir / "load" / "load.json").read_text())["status"] == "ok"
    for name in LOAD_FILES.values():
        assert (run_dir / name).exists(), name
    req = pd.read_parquet(run_dir / "load_requests.parquet")
    assert set(REQUEST_COLUMNS) <= set(req.columns) and set(req["backend"]) == {"torch", "ort"}
    pts = pd.read_parquet(run_dir / "load_points.parquet")
    assert set(POINT_COLUMNS) <= set(pts.columns)
    m = pts[pts["source"] == "measured"]
    # per backend: closed N=1, N=2; two rates x (no batching, the batcher up to the largest benchmarked batch, 4)
    assert len(m) == 2 * (2 + 2 * 2)
    assert set(m.loc[m["experiment"] == "open", "max_batch"]) == {1, 4}
    assert 100.0 in set(m["rate"])  # an absolute rate is taken as req/s
    pred = pts[(pts["source"] == "predicted") & ~pts["grid"]]
    assert len(pred) == len(m[m["experiment"] == "open"])  # the model at every measured open-loop point
    cap = pd.read_parquet(run_dir / "load_capacity.parquet")
    assert set(cap["policy"]) == {"no batching", "measured batcher", "best found by the model"}
    assert "[load] torch/fp32" in log.text


def test_report_section_reads_the_files(loaded_run):
    from lib.report import load as report_load
    from lib.results.run import load_run

    run = load_run(loaded_run[0])
    text = report_load.load_markdown(run)
    assert "torch/fp32" in text and "serial" in text and "concurrent session.run" in text
    assert report_load.plot_load_curves(run) is not None
    table = report_load.load_table(run)
    assert len(table) == 12 and "model median ms" in table and "sustained" in table
    cap = report_load.capacity_table(run, 10.0)
    assert set(cap["configuration"]) == {"torch/fp32", "ort/fp32"} and "model: best policy" in cap
    other = report_load.capacity_table(load_run(loaded_run[0]), 50.0)  # another budget: searched again
    assert (other["model: no batching req/s"].to_numpy() >= cap["model: no batching req/s"].to_numpy()).all()
    assert "Model against measurement" in report_load.model_error_markdown(run)


def test_a_run_without_load_files_says_why(copy_run):
    from lib.report import load as report_load
    from lib.sweep.load_stage import run_load
    from lib.results.run import load_run

    run = load_run(copy_run)
    assert "No load measurements" in report_load.load_markdown(run)
    assert report_load.plot_load_curves(run) is None and report_load.load_table(run).empty
    assert report_load.capacity_table(run).empty and report_load.model_error_markdown(run) == ""
    _set_params(copy_run, load="none")
    assert run_load(copy_run, log=Log())["configurations"] == []
    assert "switched off" in report_load.load_markdown(load_run(copy_run))
