"""lib.results.run.load_run on a real run folder (``bench_run``: torch/fp32 and ort/fp32 on the CPU): the tidy
tables and their columns, statistics recomputed from the raw samples under the outlier rule, and the
failures table (skipped, crashed, not run, failed points, failed parity)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.common.cache import atomic_write_json, read_json
from lib.common.errors import BenchbookError
from lib.common.stats import summarize
from lib.results.run import latest_run, load_run

ITER_COLUMNS = {"backend", "precision", "batch", "shape", "mode", "round", "pass", "iter", "ms", "wall_ms", "t_s", "requests"}
POINT_COLUMNS = {"backend", "precision", "device", "batch", "shape", "mode", "timer", "n", "median_ms", "p90_ms",
                 "p95_ms", "p99_ms", "tail_q", "tail_ms", "mean_ms", "std_ms", "cv", "min_ms", "max_ms", "items_per_s",
                 "rounds", "passes", "ci_low_ms", "ci_high_ms", "ci_half", "round_spread", "host_slow_rounds",
                 "unstable", "noisy", "converged", "dropped", "filtered_median_ms", "warmup_iters",
                 "parity_passed", "parity_cosine", "parity_top1"}
FAILURE_COLUMNS = ["backend", "precision", "batch", "shape", "status", "reason"]


@pytest.fixture(scope="module")
def run(bench_run):
    return load_run(bench_run["run_dir"])


def test_run_metadata(run, bench_run):
    assert run.path == bench_run["run_dir"]
    assert run.params["model"] == "tiny_cnn" and run.params["iters"] == 3
    assert run.plan["combos"] == [{"backend": "torch", "precision": "fp32"}, {"backend": "ort", "precision": "fp32"}]
    assert run.rule.name == "tukey"
    assert set(run.engines) == {"torch/fp32", "ort/fp32"}
    assert run.environment == run.engines["torch/fp32"]["environment"] and run.environment


def test_iterations_table(run):
    it = run.iterations
    assert ITER_COLUMNS <= set(it.columns)
    assert set(map(tuple, it[["backend", "precision"]].drop_duplicates().to_numpy())) == {("torch", "fp32"),
                                                                                          ("ort", "fp32")}
    assert set(it["batch"]) == {1, 4} and set(it["shape"]) == {"32x32"} and set(it["mode"]) == {"device", "end_to_end"}
    assert (it["ms"] > 0).all() and it.index.is_unique


def test_points_table(run):
    p = run.points
    assert POINT_COLUMNS <= set(p.columns)
    assert len(p) == 2 * 2 * 2  # backends x batch sizes x modes
    assert p["parity_passed"].all() and p["parity_top1"].isna().all()  # random weights: top-1 means nothing here
    assert (p["parity_centred_cosine"] > 0.9999).all()
    assert set(run.parity["output"]) == {"logits"} and len(run.parity) == 2 * 2  # a row per point and output
    assert (p["timer"] == "perf_counter").all() and (p["device"] == "cpu").all()
    np.testing.assert_allclose(p["items_per_s"], p["batch"] * 1e3 / p["median_ms"])


def test_point_statistics_come_from_every_raw_sample(run):
    """Median, CV, percentiles and flags are over every raw sample (the outlier rule never touches them);
    the interval and the round count come from the point's rounds."""
    it = run.iterations
    for row in run.points.itertuples():
        raw = it[(it["backend"] == row.backend) & (it["batch"] == row.batch) & (it["mode"] == row.mode)]["ms"]
        assert row.n == len(raw) >= 6  # 2 rounds of >= 3
        expected = summarize(raw.to_numpy())
        assert row.median_ms == pytest.approx(expected["median_ms"]) and row.cv == pytest.approx(expected["cv"])
        assert row.max_ms == pytest.approx(raw.max())
        assert row.unstable == (expected["cv"] > run.params["unstable_cv"])
        rounds = run.point_rounds(row.backend, row.precision, row.batch, row.shape, row.mode)
        assert row.rounds == len(rounds) >= 2 and row.passes == 2
        assert row.ci_low_ms <= row.median_ms <= row.ci_high_ms
        assert row.noisy == (row.round_spread > run.params["noise_spread"])


def test_outlier_rule_override(bench_run, run):
    """Another rule changes only the presentation columns."""
    none = load_run(bench_run["run_dir"], "none")
    assert none.rule.name == "none" and (none.points["dropped"] == 0).all()
    assert list(none.points["n"]) == list(run.points["n"])
    for col in ("median_ms", "cv", "ci_low_ms", "unstable", "noisy"):
        assert list(none.points[col]) == list(run.points[col])
    assert (none.points["filtered_median_ms"] == none.points["median_ms"]).all()
    from lib.common.errors import ConfigError

    with pytest.raises(ConfigError, match="OUTLIERS='iqr'"):
        load_run(bench_run["run_dir"], "iqr")


def test_rounds_table_and_host_noise(run):
    r = run.rounds
    assert len(r) == int(run.points["rounds"].sum())
    assert r["sentinel_us"].gt(0).all() and r["run_t_s"].ge(0).all() and set(r["pass"]) == {1, 2}
    h = run.host_noise
    assert h["rounds"] == len(r) and h["best_us"] <= h["median_us"] <= h["max_us"]
    limit = h["best_us"] * (1 + h["threshold"])
    assert h["slow_rounds"] == int(((r["sentinel_us"] > limit) | (r["sentinel_after_us"] > limit)
                                    | (r["cpu_wait_share"] > h["threshold"])).sum())
    assert (r["cpu_wait_share"] == 0).all() and h["cpu_wait_rounds"] == 0  # bench_run's CPU is left alone


def test_rounds_whose_threads_waited_for_a_cpu_are_slow_and_the_summary_says_who_took_the_cores(copy_run):
    """Two rounds of one point waited for a CPU half of their time: slow-host rounds on a CPU, counted apart from
    the rounds the sentinel alone marks, and the summary's first line tells the two causes apart."""
    import json

    from lib.report.stability import host_noise_markdown

    f = sorted((copy_run / "bench" / "torch-fp32" / "points").glob("*.json"))[0]
    rec = json.loads(f.read_text())
    for r in rec["rounds"][:2]:
        r["cpu_wait_share"] = 0.5
    f.write_text(json.dumps(rec))
    run = load_run(copy_run)
    h = run.host_noise
    assert h["cpu_wait_rounds"] == 2 and int(run.rounds["host_slow"].sum()) >= 2
    assert int((run.rounds["cpu_wait_share"] > 0.1).sum()) == 2
    text = host_noise_markdown(run)
    assert "In 2 of the slow rounds the benchmark's threads waited for a CPU more than 10% of the time" in text
    if h["slow_rounds"] > 2:
        assert f"The other {h['slow_rounds'] - 2} had no such wait inside them" in text


def test_samples_table(run):
    s = run.samples
    assert len(s) > 0
    assert {"t_s", "label", "rss_mib", "cpu_percent", "backend", "precision"} <= set(s.columns)
    assert (s["rss_mib"] > 0).all()


def test_no_failures_in_a_clean_run(run):
    assert list(run.failures.columns) == FAILURE_COLUMNS and run.failures.empty


def test_failures_table(copy_run):
    plan = read_json(copy_run / "plan.json")
    plan["combos"].append({"backend": "ort", "precision": "fp16"})  # never ran: no folder
    plan["skipped"] = [{"backend": "trt", "precision": "*", "reason": "needs a GPU (DEVICE=cpu)"},
                       {"backend": "torch-compile", "precision": "*",
                        "reason": "not in BACKENDS=auto on cpu (slow to build here); ask for it by name"}]
    atomic_write_json(copy_run / "plan.json", plan)
    bench = copy_run / "bench"
    atomic_write_json(bench / "torch-fp32" / "notebook.failed.json", {"error": "DeadKernelError: kernel died"})
    rec = read_json(bench / "ort-fp32" / "points" / "bs4_32x32.json")
    atomic_write_json(bench / "ort-fp32" / "points" / "bs4_32x32.json",
                      {k: rec[k] for k in ("backend", "precision", "device", "batch", "shape", "point")}
                      | {"status": "oom", "error": "RuntimeError: out of memory"})
    rec = read_json(bench / "ort-fp32" / "points" / "bs1_32x32.json")
    rec["parity"].update(passed=False, problems="logits: cosine 0.5 (min 0.9999)")
    atomic_write_json(bench / "ort-fp32" / "points" / "bs1_32x32.json", rec)

    run = load_run(copy_run)
    f = run.failures
    rows = {(r.backend, r.precision, r.status): r for r in f.itertuples()}
    assert set(rows) == {("trt", "*", "unavailable"), ("torch-compile", "*", "skipped"), ("torch", "fp32", "crashed"),
                         ("ort", "fp16", "not run"), ("ort", "fp32", "oom"), ("ort", "fp32", "parity failed")}
    assert rows[("trt", "*", "unavailable")].reason == "needs a GPU (DEVICE=cpu)"
    assert rows[("torch", "fp32", "crashed")].reason == "DeadKernelError: kernel died"
    assert rows[("ort", "fp32", "oom")].batch == 4 and "out of memory" in rows[("ort", "fp32", "oom")].reason
    assert rows[("ort", "fp32", "parity failed")].batch == 1 and "cosine 0.5" in rows[("ort", "fp32", "parity failed")].reason
    # the OOM point has no numbers; the parity failure keeps its numbers, flagged
    ort = run.points[run.points["backend"] == "ort"]
    assert set(ort["batch"]) == {1} and not ort["parity_passed"].any()
    assert len(run.points[run.points["backend"] == "torch"]) == 4  # a crashed notebook keeps what it measured


def test_interrupted_sweep_lists_the_points_it_did_not_reach(copy_run):
    out = copy_run / "bench" / "torch-fp32"
    (out / "done.json").unlink()
    (out / "points" / "bs4_32x32.json").unlink()
    (out / "points" / "bs4_32x32.parquet").unlink()
    run = load_run(copy_run)
    (row,) = run.failures.itertuples()
    assert (row.backend, row.precision, row.batch, row.shape, row.status) == ("torch", "fp32", 4, "32x32", "not run")
    assert "RUN_ID" in row.reason
    assert set(run.points[run.points["backend"] == "torch"]["batch"]) == {1}


def test_not_a_run_folder(tmp_path):
    with pytest.raises(BenchbookError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(BenchbookError, match="params.json"):
        load_run(tmp_path)


def test_export_record_is_read(copy_run):
    atomic_write_json(copy_run / "export.json", {"files": [{"precision": "fp32", "cache hit": True}]})
    assert load_run(copy_run).export["files"][0]["cache hit"] is True


def test_latest_run(copy_run, tmp_path):
    import shutil

    reports = copy_run.parent.parent
    newer = copy_run.parent / "zzzz-newer"
    shutil.copytree(copy_run, newer)
    assert latest_run(reports) == newer and latest_run(reports, "tiny_cnn") == newer
    with pytest.raises(BenchbookError, match="no runs"):
        latest_run(reports, "resnet50")
    with pytest.raises(BenchbookError, match="no runs"):
        latest_run(tmp_path / "empty")
