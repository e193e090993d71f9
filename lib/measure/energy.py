"""Energy of each measured window: joules per inference, inferences per joule, mean power.

Sources, per domain (``gpu``: the engine's GPU; ``cpu``: the host's CPU packages):

* ``nvml_energy_counter``: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules since the driver loaded; Volta and newer). The whole board, every process on it.
* ``nvml_sampled_power``: where that counter is missing, NVML's power sampled and multiplied by the
  window's time: the instantaneous field where the driver has it, else ``nvmlDeviceGetPowerUsage``, which
  on Ampere and newer is an average over the last second (``lib.common.gpu.power_reader``). Labelled as
  such: it is an estimate.
* ``rapl``: the CPU packages' RAPL counters (``/sys/class/powercap/intel-rapl:N/energy_uj``, also used
  by AMD's driver), wrap-around handled with ``max_energy_range_uj``. The whole package, every process
  on it (on a shared machine it counts the neighbours too). Unreadable (no driver, a container without
  the folder, or root-only since Linux 5.10, CVE-2020-8694): "not measured here" with the reason. A
  TDP figure is never put in its place.

How a window is measured: a thread polls every source every ``POLL_S`` for the whole sweep (like
``lib.measure.sampler``), so the energy of a timed window [t0, t1] (``Timings.window``) leaves out its
warm-up (first-call autotuning included) without any change to the timing loop. A counter only moves
when the driver updates it (every ~1 ms for RAPL, tens of ms for some GPUs), so the window's energy is
``(E[last update] - E[first update]) / (time between them) x (t1 - t0)``: the mean power between the
first and the last counter update inside the window, over the whole window.

**Minimum window rule**: a figure is reported only when the windows (a point's rounds, pooled over both
passes) last at least ``MIN_WINDOW_S`` (0.5 s) and the counter was seen to update at least ``MIN_UPDATES``
(4) times inside them, those updates spanning at least ``MIN_SPAN_S`` (0.3 s) and a third of the windows'
time; otherwise the status is ``too_short`` with the counter's observed update period, never 0 J. The poll
period bounds the error of each update time, so the relative error is at most about ``2 x POLL_S / span``
(7 % for a 0.3 s span at 10 ms; 4 % at 0.5 s).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["EnergyMeter", "rapl_zones", "counter_window", "power_window", "energy_columns",
           "MIN_WINDOW_S", "MIN_UPDATES", "POLL_S", "RAPL_ROOT", "ENERGY_COLUMNS"]

MIN_WINDOW_S = 0.5
MIN_UPDATES = 4
# The counter's updates inside the windows must span this much (seconds, and a share of the windows' time): the
# update times are known to one poll (POLL_S) at each end, so the power is within 2 x POLL_S / span (7 % at
# worst, typically a few %), and a third of a steady window's time represents it. Half was the first rule: an
# H200's counter moves every ~100 ms, so a 0.25 s round's updates span 0.1-0.2 s and no pass reached it.
MIN_SPAN_S = 0.3
MIN_SPAN_SHARE = 1 / 3
POLL_S = 0.01
RAPL_ROOT = Path("/sys/class/powercap")
# points.parquet columns this module adds (one place: lib.results.run calls energy_columns)
ENERGY_COLUMNS = ["energy_source", "energy_status", "energy_j", "energy_window_s", "energy_power_w",
                  "joules_per_item", "items_per_joule", "energy_note", "host_cpu_joules_per_item",
                  "host_cpu_power_w", "host_cpu_energy_note"]


# --- sources: each read() returns cumulative joules ("counter") or watts ("power") -------------------

class _NvmlCounter:
    kind, source = "counter", "nvml_energy_counter"

    def __init__(self, handle):
        import pynvml

        self._fn, self._h = pynvml.nvmlDeviceGetTotalEnergyConsumption, handle
        self.read()  # raises where the GPU or driver has no counter (before Volta)

    def read(self) -> float:
        return self._fn(self._h) / 1e3  # mJ -> J


class _NvmlPower:
    kind, source = "power", "nvml_sampled_power"

    def __init__(self, handle):
        from ..common.gpu import power_reader

        self._fn, self.power_kind = power_reader(handle)  # instantaneous where the driver has it

    def read(self) -> float:
        return self._fn()  # W


class _Rapl:
    """The sum of the package zones' counters, unwrapped (each wraps at its ``max_energy_range_uj``)."""

    kind, source = "counter", "rapl"

    def __init__(self, zones: list[Path]):
        self.files = [z / "energy_uj" for z in zones]
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.last = [int(f.read_text()) for f in self.files]
        self.total_uj = 0

    def read(self) -> float:
        for i, f in enumerate(self.files):
            now = int(f.read_text())
            step = now - self.last[i]
            if step < 0:  # wrapped around
                step += self.ranges[i] + 1
            self.total_uj += step
            self.last[i] = now
        return self.total_uj / 1e6


def rapl_zones(root: Path | str = RAPL_ROOT) -> tuple[list[Path], str | None]:
    """The readable RAPL package zones under ``root``, or ([], why they cannot be read)."""
    root = Path(root)
    if not root.is_dir():
        return [], (f"{root} does not exist (no powercap/RAPL driver in this kernel, or a container or VM "
                    f"that does not expose it)")
    zones = []
    for z in sorted(root.glob("intel-rapl:*")):
        if z.name.count(":") != 1:  # intel-rapl:0:0 (core, uncore, dram) are parts of a package: not added twice
            continue
        try:
            name = (z / "name").read_text().strip()
        except OSError:
            name = ""
        if name.startswith("package"):
            zones.append(z)
    if not zones:
        return [], f"no RAPL package zone under {root} (intel-rapl:N with name package-N)"
    for z in zones:
        f = z / "energy_uj"
        try:
            int(f.read_text())
            int((z / "max_energy_range_uj").read_text())
        except PermissionError:
            return [], (f"permission denied reading {f} (root-only since Linux 5.10, CVE-2020-8694; run as root "
                        f"or make it readable: sudo chmod a+r {root}/intel-rapl:*/energy_uj)")
        except (OSError, ValueError) as e:
            return [], f"cannot read {f}: {type(e).__name__}: {e}"
    return zones, None


# --- a window's energy from polled readings -----------------------------------------------------------

def _result(source: str, status: str, window_s: float, items: int, joules: float | None = None,
            note: str = "") -> dict:
    out = {"source": source, "status": status, "window_s": window_s, "items": int(items), "joules": None,
           "power_w": None, "j_per_item": None, "items_per_j": None, "note": note}
    if joules is not None and status == "ok":
        out.update(joules=joules, power_w=joules / window_s, j_per_item=joules / items if items else None,
                   items_per_j=items / joules if joules > 0 else None)
    return out


def _update_period_ms(t: np.ndarray, e: np.ndarray) -> float | None:
    changes = t[1:][np.diff(e) != 0]
    return float(np.median(np.diff(changes)) * 1e3) if len(changes) > 2 else None


def counter_window(t, e, t0: float, t1: float, items: int, source: str) -> dict:
    """Energy of [t0, t1] from a cumulative counter polled at times ``t`` (values ``e``, joules): one window
    of ``counter_windows``."""
    return counter_windows(t, e, [(t0, t1)], items, source)


def counter_windows(t, e, spans, items: int, source: str) -> dict:
    """Energy of several timed windows together (a point's interleaved rounds), from a cumulative counter:
    within each window, the energy between its first and last counter update over their time gives the
    power; pooled over the windows, that power times their total length is the energy. The rule of
    ``counter_window`` applies to the pool: at least ``MIN_WINDOW_S`` of windows, ``MIN_UPDATES`` updates
    inside them, and updates spanning at least half of the total time."""
    t, e = np.asarray(t, float), np.asarray(e, float)
    total = float(sum(b - a for a, b in spans))
    new = np.flatnonzero(np.diff(e) != 0) + 1
    d_e = d_t = 0.0
    n = 0
    for a, b in spans:
        inside = new[(t[new] >= a) & (t[new] <= b)]
        n += len(inside)
        if len(inside) >= 2:
            d_e += e[inside[-1]] - e[inside[0]]
            d_t += t[inside[-1]] - t[inside[0]]
    return _counter_result(source, total, items, d_e, d_t, n, len(spans), _update_period_ms(t, e))


def _counter_result(source: str, total: float, items: int, d_e: float, d_t: float, n: int, windows: int,
                    period_ms: float | None) -> dict:
    """The minimum window rule on pooled counter sums; the sums are kept in the result (``counter``), so the
    passes of a point can be pooled again (``merge_energy``) before the rule is applied to all of them."""
    every = f"; the counter updates every ~{period_ms:.0f} ms" if period_ms else ""
    if total < MIN_WINDOW_S or n < MIN_UPDATES or d_t < max(MIN_SPAN_S, total * MIN_SPAN_SHARE):
        out = _result(source, "too_short", total, items,
                      note=f"{windows} windows of {total:.2f} s in all saw {n} counter updates spanning "
                           f"{d_t:.2f} s (need {MIN_WINDOW_S} s, {MIN_UPDATES} updates spanning {MIN_SPAN_S} s and "
                           f"a third of the time){every}; raise DURATION or ROUNDS")
    else:
        out = _result(source, "ok", total, items, d_e / d_t * total)
    out["counter"] = {"d_e_j": d_e, "d_t_s": d_t, "updates": n, "windows": windows, "period_ms": period_ms}
    return out


def power_windows(t, w, spans, items: int, source: str) -> dict:
    """Several windows together, from sampled power: the mean of the samples inside them x their length."""
    t, w = np.asarray(t, float), np.asarray(w, float)
    total = float(sum(b - a for a, b in spans))
    inside = np.concatenate([w[(t >= a) & (t <= b)] for a, b in spans]) if spans else np.array([])
    if total < MIN_WINDOW_S or len(inside) < MIN_UPDATES:
        return _result(source, "too_short", total, items,
                       note=f"{total:.2f} s of windows with {len(inside)} power samples (need {MIN_WINDOW_S} s and "
                            f"{MIN_UPDATES}); raise DURATION or ROUNDS")
    return _result(source, "ok", total, items, float(np.mean(inside)) * total,
                   note="sampled power x time (no energy counter on this GPU)")


def merge_energy(by_pass: dict | None, mode: str) -> dict | None:
    """One mode's energy record over the passes of a point (``lib.sweep.bench`` meters each pass's rounds in that
    pass's process). A counter's sums are pooled over the passes and the minimum window rule applied to the
    pool (two passes of two 0.25 s rounds each reach the rule where neither pass alone does: an H200's counter
    moves every ~100 ms); otherwise joules, window and items add up, and a domain is ok when any pass measured it."""
    if not by_pass:
        return None
    parts = [p[mode] for p in by_pass.values() if mode in p]
    if not parts:
        return None
    out = {}
    for d in dict.fromkeys(k for p in parts for k in p):
        rs = [p[d] for p in parts if d in p]
        if len(rs) > 1 and all(r.get("counter") for r in rs):
            c = [r["counter"] for r in rs]
            periods = [x["period_ms"] for x in c if x.get("period_ms")]
            out[d] = _counter_result(rs[0].get("source", ""), sum(r["window_s"] for r in rs),
                                     sum(r.get("items") or 0 for r in rs), sum(x["d_e_j"] for x in c),
                                     sum(x["d_t_s"] for x in c), sum(x["updates"] for x in c),
                                     sum(x["windows"] for x in c), min(periods) if periods else None)
            notes = [r.get("note") for r in rs if r.get("status") == "ok" and r.get("note")]
            if out[d]["status"] == "ok" and notes:
                out[d]["note"] = notes[0]
            continue
        ok = [r for r in rs if r.get("status") == "ok"]
        if not ok:
            out[d] = rs[0]
            continue
        joules = sum(r["joules"] for r in ok)
        window = sum(r["window_s"] for r in ok)
        items = sum(r.get("items") or 0 for r in ok)
        out[d] = _result(ok[0].get("source", ""), "ok", window, items, joules)
        if ok[0].get("note"):
            out[d]["note"] = ok[0]["note"]
    return out


def power_window(t, w, t0: float, t1: float, items: int, source: str) -> dict:
    """Energy of [t0, t1] as mean sampled power x time (the fallback where no counter exists): one window of
    ``power_windows``."""
    return power_windows(t, w, [(t0, t1)], items, source)


class EnergyMeter:
    """``with EnergyMeter(device) as m: ...; m.window(t0, t1, items)`` -> {domain: result dict}.

    Domains: ``gpu`` on a CUDA run (the engine's device, ``gpu_index``), ``cpu`` always (RAPL). A domain
    that cannot be measured here is still present, with status ``not_measured`` and the reason."""

    def __init__(self, device: str = "cpu", gpu_index: int = 0, poll_s: float = POLL_S,
                 rapl_root: Path | str = RAPL_ROOT):
        self.poll_s = poll_s
        self.sources: dict = {}
        self.notes: dict[str, str] = {}
        if device == "cuda":
            self._open_gpu(gpu_index)
        zones, why = rapl_zones(rapl_root)
        if zones:
            try:
                self.sources["cpu"] = _Rapl(zones)
            except (OSError, ValueError) as e:
                self.notes["cpu"] = f"RAPL: {type(e).__name__}: {e}"
        else:
            self.notes["cpu"] = why
        self._series: dict[str, list] = {d: [] for d in self.sources}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="benchbook-energy", daemon=True)

    def _open_gpu(self, index: int) -> None:
        try:
            from ..common.gpu import nvml_handle

            handle = nvml_handle(index)  # the engines' GPU by UUID (NVML's index 0 may be another card)
        except Exception as e:
            self.notes["gpu"] = f"NVML unavailable: {type(e).__name__}: {e}"
            return
        try:
            self.sources["gpu"] = _NvmlCounter(handle)
            return
        except Exception as e:
            counter_error = f"{type(e).__name__}: {e}"
        try:
            self.sources["gpu"] = _NvmlPower(handle)
            self.notes["gpu"] = f"no NVML energy counter ({counter_error}): sampled power x time"
        except Exception as e:
            self.notes["gpu"] = (f"no NVML energy counter ({counter_error}) and no power reading "
                                 f"({type(e).__name__}: {e})")

    def _poll(self) -> None:
        t = time.perf_counter()
        for d, src in self.sources.items():
            try:
                self._series[d].append((t, src.read()))
            except Exception:  # one failed read leaves a gap; the window rule catches too few updates
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def __enter__(self) -> "EnergyMeter":
        if self.sources:
            self._poll()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def window(self, t0: float, t1: float, items: int) -> dict:
        """The energy of the timed window [t0, t1] (perf_counter seconds) in which ``items`` inferences ran."""
        return self.windows([(t0, t1)], items)

    def windows(self, spans: list[tuple[float, float]], items: int) -> dict:
        """The energy of several timed windows together (perf_counter seconds), in which ``items`` ran."""
        out = {}
        for d, src in self.sources.items():
            rows = list(self._series[d])
            t = [r[0] for r in rows]
            v = [r[1] for r in rows]
            fn = counter_windows if src.kind == "counter" else power_windows
            out[d] = fn(t, v, spans, items, src.source)
            if d in self.notes and out[d]["status"] == "ok":
                out[d]["note"] = self.notes[d]
        for d, why in self.notes.items():
            if d not in self.sources:
                out[d] = _result("", "not_measured", float(sum(b - a for a, b in spans)), items,
                                 note=f"not measured here: {why}")
        return out

    def describe(self) -> dict:
        """Sources and reasons, for engine.json."""
        return {"sources": {d: s.source for d, s in self.sources.items()}, "notes": dict(self.notes),
                "poll_s": self.poll_s, "min_window_s": MIN_WINDOW_S, "min_updates": MIN_UPDATES,
                "min_span_s": MIN_SPAN_S, "min_span_share": MIN_SPAN_SHARE}


def energy_columns(energy: dict | None, device: str) -> dict:
    """points.parquet columns from a mode's ``energy`` record: the engine's device (``gpu`` on CUDA, ``cpu``
    on a CPU run) and, on a GPU run, the host CPU packages beside it."""
    cols = dict.fromkeys(ENERGY_COLUMNS)
    if not energy:
        cols.update(energy_status="not_recorded", energy_note="no energy record (a run made before energy metering)")
        return cols
    main = energy.get("gpu" if device == "cuda" else "cpu") or {}
    cols.update(energy_source=main.get("source") or None, energy_status=main.get("status"),
                energy_j=main.get("joules"), energy_window_s=main.get("window_s"), energy_power_w=main.get("power_w"),
                joules_per_item=main.get("j_per_item"), items_per_joule=main.get("items_per_j"),
                energy_note=main.get("note") or None)
    if device == "cuda":
        host = energy.get("cpu") or {}
        cols.update(host_cpu_joules_per_item=host.get("j_per_item"), host_cpu_power_w=host.get("power_w"),
                    host_cpu_energy_note=host.get("note") or None)
    return cols
