"""lib.sweep.bench.run_backend on the CPU, for real (torch/fp32 and ort/fp32 on the tiny model, a plan made
by lib.sweep.plan.make_plan, two passes as the Makefile runs them): the files of a combo, every timed sample
kept with its round, rounds interleaved across points, parity recorded, resume after an interruption
(only the missing rounds are measured), adaptive stopping, and a failing point recorded while the sweep
goes on."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

import lib.backends as engines
from lib.backends import register_engine
from lib.backends.torch.engine import TorchEager
from lib.common.cache import atomic_write_json, read_json
from lib.config.model_config import Shape
from lib.sweep.bench import combo_dir, is_oom, point_key, run_backend

from conftest import Log, make_run, no_cpu_wait, quiet_sentinel

POINTS = ["bs1_32x32", "bs4_32x32"]
MODES = ("device", "end_to_end")


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
    assert set(engine["passes"]) == {"1", "2"} and "torch threads" in engine["sentinel"]
    if backend == "ort":
        assert engine["info"]["providers"][0] == "CPUExecutionProvider"
    # the parity input of each point (its own seeded stream) and the calibration inputs of the shape
    assert sorted(p.stem for p in (bench_run["run_dir"] / "reference").glob("*.npz")) == [
        f"{k}_parity" for k in POINTS] + ["calibration_32x32_8_0"]
    text = bench_run["logs"][backend].text
    assert "characterising 2 point(s)" in text and "pass 1 round 1" in text and "pass 2 round 1" in text


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
    assert rec["first_warmup_iters"] >= 2 and rec["first_warmup_s"] >= 0.02
    assert {r["mode"] for r in rec["rounds"]} == set(MODES)  # pipelined throughput is for GPUs only
    frame = pd.read_parquet(out / "points" / f"{key}.parquet")
    assert list(frame.columns) == ["mode", "round", "pass", "iter", "ms", "wall_ms", "t_s", "requests"]
    for mode in MODES:
        mine = [r for r in rec["rounds"] if r["mode"] == mode]
        assert [r["round"] for r in mine] == list(range(1, len(mine) + 1))
        assert len(mine) >= 2 and {r["pass"] for r in mine} == {1, 2}  # ROUNDS=2: one in each pass
        assert len(mine) == 2 or sum(r["t1"] - r["t0"] for r in mine[:-1]) < 0.3  # POINT_CAP=0.3 s
        for r in mine:
            rows = frame[(frame["mode"] == mode) & (frame["round"] == r["round"])]
            assert len(rows) == r["n"] >= 3  # ITERS=3 per round: every timed sample is on disk, none filtered
            assert list(rows["iter"]) == list(range(r["n"])) and (rows["pass"] == r["pass"]).all()
            assert (rows["ms"] > 0).all() and (rows["requests"] == 1).all()
            assert r["timer"] == "perf_counter" and r["warmup_iters"] >= 2 and r["sentinel_us"] > 0
            # DURATION=0.05, less a slack for a preemption between the loop's clock start and the first sample
            assert r["t1"] - r["t0"] >= 0.05 - 0.02
            assert r["median_ms"] == pytest.approx(rows["ms"].median())
            assert rows["t_s"].is_monotonic_increasing


def test_rounds_interleave_points_and_modes(bench_run):
    """Round 1 of pass 1 visits every point and mode once before any round 2 starts, so the points' rounds
    overlap in time instead of one point being measured entirely first."""
    from lib.results.run import load_run

    r = load_run(bench_run["run_dir"]).rounds
    r = r[(r["backend"] == "torch")]
    first = r[r["round"] == 1]
    assert sorted(zip(first["batch"], first["mode"])) == sorted((b, m) for b in (1, 4) for m in MODES)
    assert first["run_t_s"].max() < r.loc[r["round"] == 2, "run_t_s"].min()
    assert (first["pass"] == 1).all() and (r.loc[r["round"] == 2, "pass"] == 2).all()


def _device_rounds(out, key):
    return [r for r in read_json(out / "points" / f"{key}.json")["rounds"] if r["mode"] == "device"]


def test_resume_measures_only_the_missing_rounds(copy_run):
    """An interrupted pass 2 (a point lost its pass-2 device round, another its whole record, a killed write left
    its temporary file): the rerun removes the temporary, measures the lost round and re-characterises the lost
    point; what is on disk stays as it is."""
    out = combo_dir(copy_run, "torch", "fp32")
    rec = read_json(out / "points" / "bs1_32x32.json")
    kept = [r for r in rec["rounds"] if not (r["mode"] == "device" and r["pass"] == 2)]
    atomic_write_json(out / "points" / "bs1_32x32.json", {**rec, "rounds": kept})
    (out / "points" / "bs4_32x32.json").unlink()
    partial = out / "points" / ".bs4_32x32.parquet.x7k2q9.tmp"  # a process killed (SIGKILL) mid-write left it
    partial.write_bytes(b"PAR1 cut short")
    old_ticks = len(pd.read_parquet(out / "samples.parquet"))
    log = Log()
    done = run_backend(copy_run, "torch", "fp32", bench_pass=2, log=log)
    assert done == {"points": 2, "ok": 2, "oom": 0, "error": 0}
    assert not partial.exists() and f"removed {partial.name}" in log.text
    assert "characterising 1 point(s)" in log.text
    after = read_json(out / "points" / "bs1_32x32.json")["rounds"]
    assert after[:len(kept)] == kept
    assert [r["mode"] for r in after[len(kept):]][:1] == ["device"]
    bs4 = read_json(out / "points" / "bs4_32x32.json")
    assert bs4["status"] == "ok" and len(_device_rounds(out, "bs4_32x32")) >= 2
    ticks = pd.read_parquet(out / "samples.parquet")  # this pass's ticks are appended, with their pass
    assert len(ticks) > old_ticks and set(ticks["pass"]) == {1, 2}


def test_rerun_of_a_finished_combo_measures_nothing(copy_run):
    out = combo_dir(copy_run, "ort", "fp32")
    before = {p: p.read_bytes() for p in (out / "points").iterdir()}
    log = Log()
    assert run_backend(copy_run, "ort", "fp32", bench_pass=2, log=log)["ok"] == 2
    assert "characterising" not in log.text and " round " not in log.text
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
    rounds = read_json(out / "points" / "bs1_32x32.json")["rounds"]
    again = Log()
    run_backend(copy_run, "failing-test", "fp32", log=again)
    assert "characterising" not in again.text
    assert read_json(out / "points" / "bs1_32x32.json")["rounds"] == rounds
    assert read_json(out / "points" / "bs4_32x32.json")["status"] == status


@pytest.fixture
def spinning_backend(monkeypatch):
    """A torch engine with a fixed host-side cost per request: quiet (always 2 ms) or noisy (1 ms or 5 ms,
    alternating from round to round: with one point, every round binds twice, once per mode)."""
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))

    @register_engine
    class Spinning(TorchEager):
        backend = "spinning-test"
        noisy = False
        binds = 0

        def bind(self, host_inputs, key=None):
            type(self).binds += 1  # 1: characterisation; round r: 2r and 2r + 1
            super().bind(host_inputs, key=key)

        def _run_bound(self):
            wait = (0.005 if (self.binds // 2) % 2 else 0.001) if self.noisy else 0.002
            end = time.perf_counter() + wait
            while time.perf_counter() < end:  # host work of a fixed length (not a sleep: no timer slack),
                pass
            if self._outputs is None:  # the model runs once per binding (parity reads its outputs), not per
                super()._run_bound()   # request: on a shared CPU the model's own time would wander

    return Spinning


@pytest.fixture
def quiet_host(monkeypatch):
    """The host sentinel always at its best: the sweep's replacement of slow-host rounds stays out of a test of
    something else (on a busy CI host the real sentinel would add rounds)."""
    import lib.measure.timing as timing

    monkeypatch.setattr(timing.HostSentinel, "measure", quiet_sentinel)
    monkeypatch.setattr("lib.sweep.bench.cpu_wait_ms", no_cpu_wait)


@pytest.mark.parametrize("noisy", [False, True], ids=["quiet", "noisy"])
def test_adaptive_rounds_stop_quiet_points_early_and_cap_noisy_ones(tmp_path, cache_dir, tiny_onnx,
                                                                    spinning_backend, quiet_host, noisy):
    spinning_backend.noisy = noisy
    plan = make_run(tmp_path / "reports", cache_dir, backends="spinning-test", batch_sizes="1", rounds="3",
                    point_cap="0.8", ci_target="0.2", iters="3", duration="0.03")
    run_backend(plan.run_dir, "spinning-test", "fp32", log=Log())
    device = _device_rounds(combo_dir(plan.run_dir, "spinning-test", "fp32"), "bs1_32x32")
    if noisy:  # 1 vs 5 ms never settles within +-20 % before the 0.8 s cap (it would take ~45 rounds; 1 vs 3 ms
        # took ~27, and a busy host stretching the 1 ms spin brought that under the cap)
        assert len(device) > 3 and sum(r["t1"] - r["t0"] for r in device) >= 0.8
    else:  # 2 ms every round: it stops at the first round whose interval is within +-20 % (3 on a quiet host;
        # a busy host can stretch one 2 ms spin to 4 ms, and then the rule asks for more)
        from lib.common.stats import round_interval

        samples = pd.read_parquet(combo_dir(plan.run_dir, "spinning-test", "fp32") / "points" / "bs1_32x32.parquet")
        samples = samples[samples["mode"] == "device"]

        def settled(k):
            med = float(samples.loc[samples["round"] <= k, "ms"].median())
            lo, hi = round_interval([r["median_ms"] for r in device[:k]], med, groups=[r["pass"] for r in device[:k]])
            return (hi - lo) / 2 <= 0.2 * med

        stop = next((k for k in range(3, len(device) + 1) if settled(k)), None)
        timed = sum(r["t1"] - r["t0"] for r in device)
        assert (stop == len(device)) or (stop is None and timed >= 0.8), (stop, len(device), timed)


def test_helpers():
    assert point_key(8, Shape((("height", 32), ("width", 48)))) == "bs8_32x48"
    assert point_key(1, Shape(())) == "bs1_static"
    assert is_oom(RuntimeError("CUDA out of memory")) and is_oom(MemoryError("std::bad_alloc"))
    assert not is_oom(ValueError("shape mismatch"))


def test_on_a_cpu_a_round_taken_on_a_slow_host_gets_a_replacement(tmp_path, cache_dir, tiny_onnx, spinning_backend,
                                                                   monkeypatch):
    """The sentinel after the first round of both modes says the host was slow (another process took the cores):
    those rounds are kept, and each mode gets one more so that ROUNDS rounds ran on a quiet host."""
    import lib.measure.timing as timing

    calls = {"after": 0}

    def prime(self, spacing_s=0.05):
        self.seen.extend([50.0] * self.SETTLE_MIN_SEEN)

    def settle(self, host_slow):
        self.seen.append(50.0)
        return 50.0, 0.0

    def measure(self):  # only the sentinel after a round calls it here
        calls["after"] += 1
        value = 500.0 if calls["after"] <= 2 else 50.0
        self.seen.append(value)
        return value

    monkeypatch.setattr(timing.HostSentinel, "prime", prime)
    monkeypatch.setattr(timing.HostSentinel, "settle", settle)
    monkeypatch.setattr(timing.HostSentinel, "measure", measure)
    monkeypatch.setattr("lib.sweep.bench.cpu_wait_ms", no_cpu_wait)  # the sentinel alone says when it was slow
    plan = make_run(tmp_path / "reports", cache_dir, backends="spinning-test", batch_sizes="1", rounds="3",
                    point_cap="5", ci_target="0.5", iters="3", duration="0.03")
    run_backend(plan.run_dir, "spinning-test", "fp32", log=Log())
    rec = read_json(combo_dir(plan.run_dir, "spinning-test", "fp32") / "points" / "bs1_32x32.json")
    for mode in ("device", "end_to_end"):
        rounds = [r for r in rec["rounds"] if r["mode"] == mode]
        assert [r["sentinel_after_us"] > 100 for r in rounds[:1]] == [True]  # its first round, kept
        assert sum(r["sentinel_after_us"] > 100 for r in rounds) == 1
        assert len(rounds) >= 4  # 3 on a quiet host + the slow one (end-to-end may get adaptive ones on top)
    assert len([r for r in rec["rounds"] if r["mode"] == "device"]) == 4  # the spinning path is quiet: no more


def test_on_a_cpu_a_round_whose_threads_waited_for_a_cpu_gets_a_replacement(tmp_path, cache_dir, tiny_onnx,
                                                                           spinning_backend, quiet_host, monkeypatch):
    """The sentinel says the host is at its best, but during the first round the model's threads waited for a CPU
    (another process had the cores: cpu_wait_ms grew by a second): that round is kept, recorded with its share,
    and its mode gets one more round."""
    readings = iter([0.0] + [1000.0] * 10_000)  # the first round's two reads differ by 1,000 ms; later ones by 0
    monkeypatch.setattr("lib.sweep.bench.cpu_wait_ms", lambda: next(readings))
    plan = make_run(tmp_path / "reports", cache_dir, backends="spinning-test", batch_sizes="1", rounds="3",
                    point_cap="5", ci_target="0.5", iters="3", duration="0.03")
    run_backend(plan.run_dir, "spinning-test", "fp32", log=Log())
    rec = read_json(combo_dir(plan.run_dir, "spinning-test", "fp32") / "points" / "bs1_32x32.json")
    waited = [r for r in rec["rounds"] if r["cpu_wait_share"] > 0.1]
    assert len(waited) == 1 and waited[0]["cpu_wait_share"] > 1  # 1,000 ms of waiting in a round of ~0.1 s
    assert all(r["cpu_wait_share"] == 0 for r in rec["rounds"] if r is not waited[0])
    mode = waited[0]["mode"]
    # ROUNDS=3 without waiting besides the one with (adaptive rounds, if any, come on top)
    assert len([r for r in rec["rounds"] if r["mode"] == mode and r["cpu_wait_share"] == 0]) >= 3
    from lib.results.run import load_run

    run = load_run(plan.run_dir)
    assert int(run.rounds["host_slow"].sum()) == 1 and run.host_noise["cpu_wait_rounds"] == 1


def test_replacement_rounds_of_pass_1_do_not_take_pass_2s_share(tmp_path, cache_dir, tiny_onnx, spinning_backend,
                                                                 monkeypatch):
    """Pass 1 ran on a slow host throughout (every round replaced until POINT_CAP): pass 2 still measures its
    half of ROUNDS, so the backend is measured at both moments of the run."""
    import lib.measure.timing as timing

    host = {"slow": True}

    def settle(self, host_slow):
        self.seen.append(50.0)
        return 50.0, 0.0

    def measure(self):
        value = 500.0 if host["slow"] else 50.0
        self.seen.append(value)
        return value

    monkeypatch.setattr(timing.HostSentinel, "prime", lambda self, spacing_s=0.05: self.seen.extend([50.0] * 3))
    monkeypatch.setattr(timing.HostSentinel, "settle", settle)
    monkeypatch.setattr(timing.HostSentinel, "measure", measure)
    monkeypatch.setattr("lib.sweep.bench.cpu_wait_ms", no_cpu_wait)  # the sentinel alone says when it was slow
    plan = make_run(tmp_path / "reports", cache_dir, backends="spinning-test", batch_sizes="1", rounds="4",
                    point_cap="0.4", ci_target="0.5", iters="3", duration="0.03")
    run_backend(plan.run_dir, "spinning-test", "fp32", bench_pass=1, log=Log())
    out = combo_dir(plan.run_dir, "spinning-test", "fp32")
    first = _device_rounds(out, "bs1_32x32")
    assert len(first) > 2 and {r["pass"] for r in first} == {1}  # replacements beyond pass 1's two
    host["slow"] = False
    run_backend(plan.run_dir, "spinning-test", "fp32", bench_pass=2, log=Log())
    second = [r for r in _device_rounds(out, "bs1_32x32") if r["pass"] == 2]
    assert len(second) >= 2, second
