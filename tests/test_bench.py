"""lib.bench.run_backend on the CPU, for real (torch/fp32 and ort/fp32 on the tiny model, a plan made
by lib.plan.make_plan): the files of a combo, every timed sample kept, parity recorded, resume after an
interruption (only the missing point is measured again), and a failing point recorded while the sweep
goes on."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import lib.engines as engines
from lib.bench import combo_dir, is_oom, point_key, run_backend
from lib.cache import read_json
from lib.engines import register_engine
from lib.engines.torch_engine import TorchEager
from lib.model_config import Shape

from conftest import Log

POINTS = ["bs1_32x32", "bs4_32x32"]


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_combo_files(bench_run, backend):
    out = combo_dir(bench_run["run_dir"], backend, "fp32")
    assert out == bench_run["run_dir"] / "bench" / f"{backend}-fp32"
    assert bench_run["done"][backend] == {"points": 2, "ok": 2, "oom": 0, "error": 0}
    assert read_json(out / "done.json") == bench_run["done"][backend]
    assert sorted(p.stem for p in (out / "points").glob("*.json")) == POINTS
    assert sorted(p.stem for p in (out / "points").glob("*.parquet")) == POINTS
    assert (out / "samples.parquet").is_file()
    engine = read_json(out / "engine.json")
    assert engine["backend"] == backend and engine["device"] == "cpu" and engine["timer"] == "perf_counter"
    assert engine["reference"] == "PyTorch FP32 (CPU)" and engine["load_s"] >= 0 and engine["environment"]
    if backend == "ort":
        assert engine["info"]["providers"][0] == "CPUExecutionProvider"
    # the parity input of each point (its own seeded stream) and the calibration inputs of the shape
    assert sorted(p.stem for p in (bench_run["run_dir"] / "reference").glob("*.npz")) == [
        f"{k}_parity" for k in POINTS] + ["calibration_32x32_8_0"]
    assert "points to measure" in bench_run["logs"][backend].text


@pytest.mark.parametrize("backend", ["torch", "ort"])
@pytest.mark.parametrize("key", POINTS)
def test_point_record_and_every_sample_kept(bench_run, backend, key):
    out = combo_dir(bench_run["run_dir"], backend, "fp32")
    rec = read_json(out / "points" / f"{key}.json")
    assert rec["status"] == "ok" and rec["point"] == key and rec["shape"] == "32x32"
    assert rec["batch"] == int(key[2]) and (rec["backend"], rec["precision"], rec["device"]) == (backend, "fp32", "cpu")
    assert rec["parity"]["passed"] and set(rec["parity"]["paths"]) == {"device", "end_to_end"}
    assert rec["parity"]["centred_cosine"] > 0.9999  # the input-dependent part, fp32 on the CPU
    # the tiny model's random weights give every input the same top-1 class: agreement would mean nothing
    assert math.isnan(rec["parity"]["top1_agree"]) and "same top-1 class" in rec["parity"]["top1_note"]
    assert set(rec["modes"]) == {"device", "end_to_end"}  # pipelined throughput is for GPUs only
    frame = pd.read_parquet(out / "points" / f"{key}.parquet")
    assert list(frame.columns) == ["mode", "iter", "ms", "wall_ms", "t_s", "requests"]
    for mode, meta in rec["modes"].items():
        rows = frame[frame["mode"] == mode]
        assert len(rows) == meta["n"] >= 3  # ITERS=3: every timed sample is on disk, none filtered
        assert list(rows["iter"]) == list(range(meta["n"]))
        assert (rows["ms"] > 0).all() and (rows["requests"] == 1).all()
        assert meta["timer"] == "perf_counter" and meta["warmup_iters"] >= 2
        # DURATION=0.05, less a slack for a preemption between the loop's clock start and the first sample
        assert meta["window"][1] - meta["window"][0] >= 0.05 - 0.02
        assert meta["median_ms"] == pytest.approx(rows["ms"].median())
        assert rows["t_s"].is_monotonic_increasing


def test_resume_measures_only_the_missing_point(copy_run):
    out = combo_dir(copy_run, "torch", "fp32")
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "points").glob("bs1_*")}
    old_ticks = len(pd.read_parquet(out / "samples.parquet"))
    (out / "points" / "bs4_32x32.json").unlink()
    log = Log()
    done = run_backend(copy_run, "torch", "fp32", log=log)
    assert done == {"points": 2, "ok": 2, "oom": 0, "error": 0}
    assert "resuming: 1 of 2 points already on disk" in log.text and "1 points to measure" in log.text
    assert "batch 4" in log.text and "batch 1," not in log.text
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept  # the measured point untouched
    assert read_json(out / "points" / "bs4_32x32.json")["status"] == "ok"
    ticks = pd.read_parquet(out / "samples.parquet")  # the resumed sweep's ticks are appended, marked
    assert len(ticks) >= old_ticks and "resumed" in ticks.columns


def test_rerun_of_a_finished_combo_measures_nothing(copy_run):
    out = combo_dir(copy_run, "ort", "fp32")
    before = {p: p.read_bytes() for p in (out / "points").iterdir()}
    log = Log()
    assert run_backend(copy_run, "ort", "fp32", log=log)["ok"] == 2
    assert "0 points to measure" in log.text
    assert {p: p.read_bytes() for p in (out / "points").iterdir()} == before


@pytest.fixture
def failing_backend(monkeypatch):
    """A torch engine whose bind fails at batch 4 (one message per test); registered in a private registry."""
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))

    @register_engine
    class Failing(TorchEager):
        backend = "failing-test"
        message = "boom"

        def _bind(self, host_inputs):
            if host_inputs["image"].shape[0] == 4:
                raise RuntimeError(self.message)
            super()._bind(host_inputs)

    return Failing


@pytest.mark.parametrize("message, status", [("kernel launch failed: boom", "error"),
                                             ("CUDA out of memory. Tried to allocate 2.00 GiB", "oom")])
def test_a_failing_point_is_recorded_and_the_sweep_goes_on(copy_run, failing_backend, message, status):
    failing_backend.message = message
    log = Log()
    done = run_backend(copy_run, "failing-test", "fp32", log=log)
    assert done == {"points": 2, "ok": 1, "oom": int(status == "oom"), "error": int(status == "error")}
    out = combo_dir(copy_run, "failing-test", "fp32")
    bad = read_json(out / "points" / "bs4_32x32.json")
    assert bad["status"] == status and bad["error"] == f"RuntimeError: {message}" and "Traceback" in bad["traceback"]
    assert not (out / "points" / "bs4_32x32.parquet").exists()
    assert read_json(out / "points" / "bs1_32x32.json")["status"] == "ok"
    assert ("OUT OF MEMORY" if status == "oom" else "FAILED") in log.text
    # a rerun retries nothing: the failure is on disk as this point's result
    again = Log()
    run_backend(copy_run, "failing-test", "fp32", log=again)
    assert "0 points to measure" in again.text


def test_helpers():
    assert point_key(8, Shape((("height", 32), ("width", 48)))) == "bs8_32x48"
    assert point_key(1, Shape(())) == "bs1_static"
    assert is_oom(RuntimeError("CUDA out of memory")) and is_oom(MemoryError("std::bad_alloc"))
    assert not is_oom(ValueError("shape mismatch"))
