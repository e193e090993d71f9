"""lib.measure.energy: the window rule on counter and power series, RAPL read from a powercap tree (wrap-around,
unreadable files, a machine without RAPL), the meter inside a real CPU sweep, and on a GPU NVML's
counter against sampled power."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lib.config.params import RunParams
from lib.measure.energy import (MIN_WINDOW_S, EnergyMeter, _Rapl, counter_window, counter_windows, energy_columns,
                                merge_energy, power_window, rapl_zones)

from conftest import REPO


def _counter(power_w: float, update_s: float, poll_s: float = 0.01, seconds: float = 3.0):
    """What a poller sees of an energy counter updated every ``update_s`` at constant power."""
    t = np.arange(0, seconds, poll_s)
    e = np.floor(t / update_s) * update_s * power_w
    return t, e


@pytest.mark.parametrize("update_s", [0.001, 0.02, 0.1])
def test_counter_window_measures_constant_power(update_s):
    t, e = _counter(300.0, update_s)
    r = counter_window(t, e, 0.55, 2.35, items=900, source="nvml_energy_counter")
    assert r["status"] == "ok"
    # the update times are known to one poll (10 ms) at each end of a span of >= 0.9 s: within 3 %
    assert r["power_w"] == pytest.approx(300.0, rel=0.03)
    assert r["joules"] == pytest.approx(300.0 * 1.8, rel=0.03)
    assert r["j_per_item"] == pytest.approx(r["joules"] / 900) and r["items_per_j"] == pytest.approx(900 / r["joules"])


def test_a_short_window_says_so_instead_of_zero():
    t, e = _counter(300.0, 0.1)
    short = counter_window(t, e, 1.0, 1.0 + MIN_WINDOW_S / 2, items=10, source="nvml_energy_counter")
    assert short["status"] == "too_short" and short["joules"] is None and "raise DURATION" in short["note"]
    # long enough in time, but a counter that updates every 0.4 s moves too few times inside it
    t, e = _counter(300.0, 0.4)
    slow = counter_window(t, e, 1.05, 1.75, items=10, source="nvml_energy_counter")
    assert slow["status"] == "too_short" and slow["joules"] is None and "every ~400 ms" in slow["note"]


def test_passes_are_pooled_before_the_window_rule():
    """An H200's counter moves every ~100 ms; a pass of two 0.25 s rounds then sees updates spanning about 0.3 s
    of its 0.5 s (0.2 s here) and is too short alone. The point's two passes pool their sums (four windows, 1 s) and pass the
    rule, with the power right; a pool that is still short stays too_short."""
    t, e = _counter(300.0, 0.1, seconds=6.0)
    p1 = counter_windows(t, e, [(0.52, 0.77), (1.51, 1.76)], items=100, source="nvml_energy_counter")
    p2 = counter_windows(t, e, [(3.52, 3.77), (4.51, 4.76)], items=100, source="nvml_energy_counter")
    assert p1["status"] == p2["status"] == "too_short" and p1["counter"]["updates"] == 4
    merged = merge_energy({"1": {"device": {"gpu": p1}}, "2": {"device": {"gpu": p2}}}, "device")["gpu"]
    assert merged["status"] == "ok" and merged["window_s"] == pytest.approx(1.0) and merged["items"] == 200
    assert merged["power_w"] == pytest.approx(300.0, rel=0.1) and merged["counter"]["windows"] == 4
    one = counter_windows(t, e, [(0.52, 0.62)], items=10, source="nvml_energy_counter")
    still = merge_energy({"1": {"device": {"gpu": one}}, "2": {"device": {"gpu": one}}}, "device")["gpu"]
    assert still["status"] == "too_short" and still["joules"] is None


def test_power_fallback_is_labelled_and_integrates():
    t = np.arange(0, 3, 0.1)
    r = power_window(t, np.full_like(t, 250.0), 0.5, 2.5, items=100, source="nvml_sampled_power")
    assert r["status"] == "ok" and r["joules"] == pytest.approx(500.0) and "sampled power" in r["note"]
    assert power_window(t, np.full_like(t, 250.0), 0.5, 0.8, 100, "nvml_sampled_power")["status"] == "too_short"


def _powercap(root: Path, values: list[int], max_range: int = 1000) -> Path:
    z = root / "intel-rapl:0"
    z.mkdir(parents=True)
    (z / "name").write_text("package-0\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    (z / "energy_uj").write_text(f"{values[0]}\n")
    sub = root / "intel-rapl:0:0"  # a core sub-zone: part of the package, must not be added again
    sub.mkdir()
    (sub / "name").write_text("core\n")
    (sub / "energy_uj").write_text("5\n")
    return z


def test_rapl_unwraps_the_counter(tmp_path):
    z = _powercap(tmp_path, [900])
    zones, why = rapl_zones(tmp_path)
    assert why is None and zones == [z]
    rapl = _Rapl(zones)
    readings = []
    for v in (950, 20, 500):  # 950 -> 20 wrapped at max_energy_range_uj=1000: 51 uJ, not -930
        (z / "energy_uj").write_text(f"{v}\n")
        readings.append(rapl.read())
    assert np.allclose(np.array(readings) * 1e6, [50, 50 + 71, 50 + 71 + 480])


def test_no_rapl_here_is_not_measured_with_the_reason(tmp_path):
    zones, why = rapl_zones(tmp_path / "absent")
    assert zones == [] and "does not exist" in why
    (tmp_path / "empty").mkdir()
    assert "no RAPL package zone" in rapl_zones(tmp_path / "empty")[1]
    meter = EnergyMeter("cpu", rapl_root=tmp_path / "absent")
    with meter:
        r = meter.window(0.0, 2.0, 10)
    assert r["cpu"]["status"] == "not_measured" and r["cpu"]["note"].startswith("not measured here:")
    assert r["cpu"]["joules"] is None


def test_unreadable_rapl_names_the_file_and_the_fix():
    """energy_uj readable by root only (Linux >= 5.10): read as an unprivileged user in a child process."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user cannot read")
    root = Path(tempfile.mkdtemp(prefix="benchbook-rapl-"))
    try:
        root.chmod(0o755)
        z = _powercap(root, [123])
        for p in (z, root / "intel-rapl:0:0"):
            p.chmod(0o755)
        for f in z.iterdir():
            f.chmod(0o644)
        (z / "energy_uj").chmod(0o400)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child drops to "nobody" and reads the tree as an unprivileged user would
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.write(w, str(rapl_zones(root)[1]).encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            why = f.read()
        assert "permission denied reading" in why and "energy_uj" in why and "chmod" in why, why
    finally:
        import shutil

        shutil.rmtree(root)


def test_meter_reads_a_live_counter(tmp_path):
    """The meter's thread polls a counter that a writer advances at 1 W (1000 uJ per ms)."""
    z = _powercap(tmp_path, [0], max_range=10**12)
    stop = time.perf_counter() + 1.5
    with EnergyMeter("cpu", rapl_root=tmp_path, poll_s=0.005) as meter:
        t0 = time.perf_counter()
        while (now := time.perf_counter()) < stop:
            (z / "energy_uj").write_text(f"{int((now - t0) * 1e6)}\n")
            time.sleep(0.002)
        t1 = time.perf_counter()
    r = meter.window(t0 + 0.1, t1 - 0.05, items=50)["cpu"]
    assert r["status"] == "ok" and r["source"] == "rapl"
    assert r["power_w"] == pytest.approx(1.0, rel=0.15)  # a shared CPU delays the writer and the poller alike


def test_columns_of_a_cpu_run_and_of_an_old_run():
    rec = {"cpu": {"source": "rapl", "status": "ok", "joules": 2.0, "window_s": 1.0, "power_w": 2.0,
                   "j_per_item": 0.02, "items_per_j": 50.0, "note": ""}}
    c = energy_columns(rec, "cpu")
    assert (c["energy_source"], c["joules_per_item"], c["items_per_joule"], c["energy_power_w"]) == ("rapl", 0.02, 50.0, 2.0)
    assert energy_columns(None, "cpu")["energy_status"] == "not_recorded"


def test_sweep_records_energy_per_mode(bench_run):
    """The real CPU sweep: every mode of every point has an energy record; on this machine it says why not
    (no RAPL, or DURATION=0.05 below the minimum window), never 0 J."""
    import lib

    run = lib.load_run(bench_run["run_dir"])
    p = run.points
    assert {"joules_per_item", "items_per_joule", "energy_power_w", "energy_source", "energy_note"} <= set(p.columns)
    zones, why = rapl_zones()
    for r in p.itertuples():
        assert r.energy_status in ("not_measured", "too_short")
        assert r.joules_per_item is None or np.isnan(r.joules_per_item)
        assert ("not measured here" in r.energy_note) if not zones else ("minimum" in r.energy_note)
    assert all("cpu" in (e.get("energy") or {}).get("notes", {}) or e["energy"]["sources"].get("cpu") == "rapl"
               for e in run.engines.values())


def test_price_per_hour_is_validated_and_optional():
    assert RunParams.from_strings(model="m").price_per_hour == 0.0
    assert RunParams.from_strings(model="m", price_per_hour="").price_per_hour == 0.0
    assert RunParams.from_strings(model="m", price_per_hour="3.5").price_per_hour == 3.5
    from lib.common.errors import ConfigError

    for bad, words in (("-1", "PRICE_PER_HOUR=-1 is not valid"), ("$3", "PRICE_PER_HOUR='$3' is not a number"),
                       ("nan", "PRICE_PER_HOUR=nan is not valid")):
        with pytest.raises(ConfigError, match=words.replace("$", r"\$")):
            RunParams.from_strings(model="m", price_per_hour=bad)


def test_cost_per_million():
    from lib.report.energy import cost_per_million

    assert cost_per_million(3.6, 1000.0) == pytest.approx(1.0)  # 3.6/h = 0.001/s; 10^6 items take 1000 s
    assert np.isnan(cost_per_million(0.0, 1000.0)) and np.isnan(cost_per_million(3.6, float("nan")))


@pytest.mark.gpu
def test_nvml_counter_against_sampled_power():
    """On a CUDA GPU: 3 s of matmuls; the counter's mean power is plausible and near the sampled NVML power."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import pynvml

    from lib.common.gpu import nvml_handle

    h = nvml_handle(0)
    a = torch.randn(8192, 8192, device="cuda")
    with EnergyMeter("cuda") as meter:
        assert meter.describe()["sources"]["gpu"] == "nvml_energy_counter", meter.describe()
        torch.cuda.synchronize()
        t0, watts = time.perf_counter(), []
        while time.perf_counter() - t0 < 3.0:
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()
            watts.append(pynvml.nvmlDeviceGetPowerUsage(h) / 1e3)
        t1 = time.perf_counter()
    r = meter.window(t0 + 1.0, t1, items=1)["gpu"]  # after 1 s, NVML's averaged power has caught up
    assert r["status"] == "ok", r
    sampled = float(np.mean(watts[len(watts) // 3:]))
    assert 30 < r["power_w"] < 1500
    assert r["power_w"] == pytest.approx(sampled, rel=0.25), (r["power_w"], sampled)
