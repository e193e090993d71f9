"""The load stage of ``make report``: after every benchmark pass, before the analysis.

It picks the configurations (``LOAD=auto``: the ones the summary names — lowest latency at the smallest
batch, highest throughput, highest throughput within the default latency budget; ``all``: every measured
backend/precision; ``none``/``0``: none), loads each on the run's device and measures it under load with
``lib.measure.load`` (closed loop at each ``CONCURRENCY``, Poisson open loop at each of ``RATES`` without batching and
with the dynamic batcher), then runs the discrete-event model (``lib.measure.load_model``) at the same rates and
policies, and over a grid of rates. Its service time for a batch of b is the benchmark's median end-to-end
latency at b (interpolated between measured batch sizes) times one *anchor*: this stage's own closed-loop
median at one in flight divided by the benchmark's batch-1 median. A shared host's speed drifts by several
times over minutes (measured here: ONNX Runtime's batch-1 request took 33-50 ms in every benchmark round and
8 ms in the load stage three minutes later), so the benchmark's figures carry the batch-size shape and the
anchor the host's state while the load was measured; without a closed loop at N=1 the anchor is 1. The
service time itself is drawn from the latencies of that closed loop at N=1 (``model_samples``), scaled to
batch b by the median curve: on a shared host a request's mean is several times its median (the tiny CNN:
12.7k req/s at N=1 against a median of 18.7 µs), and a model that only knew the median put the capacity at
4x what was served. (The benchmark's raw samples are not used for this: taken minutes earlier, their stalls
are another host's; on efficientnet_b1 they made the model's queue grow without bound at 0.5x.) Files, in the run
folder (schema in reports/README.md): ``load/load.json`` (what ran, why, what failed),
``load_requests.parquet``, ``load_points.parquet`` (measured and predicted points), ``load_service.parquet``
(the service curve the model used) and ``load_capacity.parquet`` (the highest rate within the budget).

Length: every point is measured in ``ROUNDS`` rounds of at least ``DURATION`` seconds and
``max(ITERS, MIN_REQUESTS)`` requests (an open-loop round spans at least that many arrivals), so a
configuration takes seconds: points x rounds x DURATION, plus warm-ups.
"""

from __future__ import annotations

import io
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.cache import atomic_write_bytes, atomic_write_json
from ..common.errors import BenchbookError
from ..measure.load import LoadPoint, closed_loop, measure_load
from ..measure.load_model import BatchPolicy, best_policy, max_rate_within, predict

__all__ = ["run_load", "pick_configurations", "service_ms", "anchor", "model_samples", "load_points_for", "batcher_top", "capacity_rows", "LOAD_FILES",
           "BUDGET_MS", "MIN_REQUESTS", "read_load"]

BUDGET_MS = 10.0  # the analysis notebook's default budget_ms: the "within the budget" pick and the capacity
MIN_REQUESTS = 20
MAX_BATCH = {"cpu": 8, "cuda": 32}  # the dynamic batcher's largest batch (capped by the largest benchmarked)
LOAD_FILES = {"requests": "load_requests.parquet", "points": "load_points.parquet",
              "service": "load_service.parquet", "capacity": "load_capacity.parquet"}
GRID = (0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.1, 1.25, 1.5, 2.0)  # predicted rates, x single throughput


def _usable_points(run) -> pd.DataFrame:
    p = run.points
    if p.empty:
        return p
    return p[p["parity_passed"].map(lambda v: v is not False and v is not np.False_)]


def pick_configurations(run, load: str, budget_ms: float = BUDGET_MS) -> list[dict]:
    """[{backend, precision, shape, why}] to measure under load, by the summary's rules (see module doc)."""
    ok = _usable_points(run)
    if ok.empty or load in ("none", "0"):
        return []
    mode = "end_to_end" if (ok["mode"] == "end_to_end").any() else "device"
    lat = ok[ok["mode"] == mode]
    rate_mode = "throughput" if (ok["mode"] == "throughput").any() else mode
    picks: dict[tuple, list[str]] = {}

    def add(row, why):
        picks.setdefault((row["backend"], row["precision"], row["shape"]), []).append(why)

    if load == "all":
        for (b, p), g in lat.groupby(["backend", "precision"], sort=False):
            add(g.iloc[0], "LOAD=all")
        return [{"backend": k[0], "precision": k[1], "shape": k[2], "why": v} for k, v in picks.items()]
    b1 = lat[lat["batch"] == lat["batch"].min()].sort_values("median_ms")
    if len(b1):
        add(b1.iloc[0], f"lowest latency at batch {b1.iloc[0]['batch']}")
    t = ok[ok["mode"] == rate_mode].sort_values("items_per_s", ascending=False)
    if len(t):
        add(t.iloc[0], "highest throughput")
    within = lat[lat["tail_ms"] <= budget_ms].sort_values("items_per_s", ascending=False)
    if len(within):
        add(within.iloc[0], f"highest throughput within {budget_ms:g} ms")
    return [{"backend": k[0], "precision": k[1], "shape": k[2], "why": v} for k, v in picks.items()]


def service_ms(run, backend: str, precision: str, shape: str) -> dict[int, float]:
    """{batch: median end-to-end latency (ms)} the benchmark measured: the model's service times."""
    ok = _usable_points(run)
    mode = "end_to_end" if (ok["mode"] == "end_to_end").any() else "device"
    m = ok[(ok["backend"] == backend) & (ok["precision"] == precision) & (ok["shape"] == shape) & (ok["mode"] == mode)]
    return {int(b): float(v) for b, v in zip(m["batch"], m["median_ms"]) if v == v}


def batcher_top(service: dict[int, float], device: str) -> int:
    """The batcher's largest batch: the largest benchmarked batch size within MAX_BATCH (1 when none above 1)."""
    return max([b for b in service if b <= MAX_BATCH.get(device, 8)] or [1])


def load_points_for(service: dict[int, float], concurrency: list[int], rates: list[tuple[float, str]],
                    device: str, single_ms: float | None = None) -> tuple[list[LoadPoint], BatchPolicy]:
    """The points measured for one configuration: closed loop at each N; each rate without batching and
    with the batcher (up to the largest benchmarked batch within MAX_BATCH, delay = one single request's
    latency; a batch runs padded to the next benchmarked size, ``lib.measure.load_model.padded_batch``).
    ``single_ms``: a single request's median latency, which ``x`` rates are fractions of the throughput of
    (1000 / it); default the benchmark's batch-1 median."""
    single_ms = single_ms or service[1]
    single_rps = 1e3 / single_ms
    top = batcher_top(service, device)
    batcher = BatchPolicy(top, round(single_ms, 3)) if top > 1 else None
    pts = [LoadPoint("closed", n) for n in concurrency]
    for value, unit in rates:
        rate = value * single_rps if unit == "x" else value
        pts.append(LoadPoint("open", rate=float(rate)))
        if batcher:
            pts.append(LoadPoint("open", rate=float(rate), policy=batcher))
    return pts, batcher


def capacity_rows(model_ms: dict[int, float], budget_ms: float, batcher: BatchPolicy | None,
                  samples: dict | None = None) -> list[dict]:
    """Predicted highest rate within ``budget_ms`` without batching, with the measured batcher's policy, and
    with the best policy the model finds (batches up to the batcher's); ``model_ms``: the model's median
    service times by batch size, ``samples``: the latencies its service times are drawn from (``model_samples``)."""
    rows = [{"policy": "no batching", "max_batch": 1, "max_delay_ms": 0.0,
             "max_rate_rps": max_rate_within(model_ms, BatchPolicy(1, 0.0), budget_ms, samples=samples)}]
    if batcher:
        rows.append({"policy": "measured batcher", "max_batch": batcher.max_batch, "max_delay_ms": batcher.max_delay_ms,
                     "max_rate_rps": max_rate_within(model_ms, batcher, budget_ms, samples=samples)})
        pol, rate = best_policy(model_ms, budget_ms, batcher.max_batch, samples=samples)
        rows.append({"policy": "best found by the model", "max_batch": pol.max_batch,
                     "max_delay_ms": pol.max_delay_ms, "max_rate_rps": rate})
    return [{**r, "budget_ms": budget_ms, "source": "predicted"} for r in rows]


def anchor(measured: pd.DataFrame, service: dict[int, float]) -> float:
    """This stage's closed-loop median at one in flight / the benchmark's batch-1 median (1 without N=1)."""
    n1 = measured[(measured["experiment"] == "closed") & (measured["concurrency"] == 1)]
    if n1.empty or not n1["median_ms"].iloc[0] > 0:
        return 1.0
    return float(n1["median_ms"].iloc[0]) / service[1]


def model_samples(requests: pd.DataFrame) -> dict[int, np.ndarray] | None:
    """{1: every request latency (ms) of this stage's closed loop at one in flight}, or None without one: the
    model draws a lone request's service time from them (``lib.measure.load_model.sampled_service`` scales them to
    other batch sizes by the median curve), so it sees the stalls of the host it predicts for."""
    n1 = requests[(requests["experiment"] == "closed") & (requests["concurrency"] == 1)]["latency_ms"]
    return {1: n1.to_numpy(float)} if len(n1) else None


def _predicted(model_ms, measured: pd.DataFrame, batcher, single_rps, samples) -> list[dict]:
    """The model at every measured open-loop point (same rate and policy) and over GRID x single throughput."""
    rows = []
    for r in measured[measured["experiment"] == "open"].itertuples():
        rows.append({**predict(model_ms, r.rate, BatchPolicy(int(r.max_batch), float(r.max_delay_ms)), samples=samples),
                     "experiment": "open", "concurrency": 1, "source": "predicted", "grid": False})
    for pol in [BatchPolicy(1, 0.0)] + ([batcher] if batcher else []):
        for f in GRID:
            rows.append({**predict(model_ms, f * single_rps, pol, samples=samples), "experiment": "open",
                         "concurrency": 1, "source": "predicted", "grid": True})
    return rows


def _parquet(path: Path, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def run_load(run_dir: Path | str, log=print) -> dict:
    """The stage: measure the picked configurations and write the load files; returns load.json's content."""
    from ..backends import Artifacts, EngineSpec, engine_class, make_engine
    from ..config.inputs import make_inputs
    from ..config.models import get_model
    from ..results.run import load_run
    from .plan import load_plan, resolve_points, run_onnx

    run_dir = Path(run_dir)
    params, plan = load_plan(run_dir)
    out = run_dir / "load"
    out.mkdir(exist_ok=True)
    record = {"load": params.load, "concurrency": params.concurrency, "rates": params.rates, "budget_ms": BUDGET_MS,
              "configurations": []}
    if not params.load_enabled:
        atomic_write_json(out / "load.json", {**record, "status": "off", "reason": f"LOAD={params.load}"})
        log("[load] off (LOAD=none)")
        return record
    run = load_run(run_dir)
    picks = pick_configurations(run, params.load)
    if not picks:
        atomic_write_json(out / "load.json", {**record, "status": "nothing to load",
                                              "reason": "no backend produced usable benchmark points"})
        return record
    cfg = get_model(params.model, params.models_path)
    device = plan["device"]
    _, shapes = resolve_points(cfg, params, device)
    by_label = {s.label: s for s in shapes}
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in LOAD_FILES}
    for k, pick in enumerate(picks):
        label = f"{pick['backend']}/{pick['precision']}"
        entry = {**pick, "status": "failed"}
        record["configurations"].append(entry)
        t0 = time.perf_counter()
        try:
            service = service_ms(run, pick["backend"], pick["precision"], pick["shape"])
            if 1 not in service:
                raise BenchbookError(f"{label}: no batch-1 benchmark point to size the load from")
            onnx = {}
            if engine_class(pick["backend"]).needs_onnx:
                onnx = run_onnx(cfg, params, plan, log)  # the benchmark's files (CALIB's INT8 too)
            spec = EngineSpec(model=cfg, precision=pick["precision"], device=device,
                              artifacts=Artifacts(onnx=onnx, cache_dir=Path(params.cache_dir),
                                                  weights=params.weights or None, models_dir=params.models_path),
                              options={**params.engine_options(), "log": log})
            shape = by_label[pick["shape"]]
            top = batcher_top(service, device)
            # the sizes the batcher runs: the benchmarked ones up to its largest (a batch is padded up to one)
            batched = {b: make_inputs(cfg, b, shape, params.seed, stream="load") for b in sorted(service) if b <= top}
            with make_engine(pick["backend"], spec) as engine:
                # The rates' unit (x = a fraction of one request at a time's throughput) is measured here, just
                # before, on this engine: the host's speed drifts between the benchmark and this stage (ORT's
                # batch-1 median: 38 ms in the benchmark of efficientnet_b1, 9 ms here minutes later).
                min_requests = max(params.iters, MIN_REQUESTS)
                closed_loop(engine.lane, batched[1], 1, params.warmup, 2)  # warm-up
                calib, _ = closed_loop(engine.lane, batched[1], 1, params.duration, min_requests)
                single_ms = float(np.median([r["latency_ms"] for r in calib]))
                pts, batcher = load_points_for(service, params.concurrency_list(), params.rate_list(), device,
                                               single_ms)
                log(f"[load] {label} ({', '.join(pick['why'])}): {len(pts)} points x {params.rounds} rounds; one "
                    f"request at a time {single_ms:.4g} ms now (benchmark: {service[1]:.4g} ms)")
                requests, measured = measure_load(
                    engine, pts, batched, rounds=params.rounds, round_s=params.duration,
                    min_requests=max(params.iters, MIN_REQUESTS), warmup_s=params.warmup, seed=params.seed + k,
                    noise_spread=params.noise_spread)
            single_rps = 1e3 / single_ms
            k_anchor = anchor(measured, service)
            model_ms = {b: v * k_anchor for b, v in service.items()}
            samples = model_samples(requests)
            predicted = pd.DataFrame(_predicted(model_ms, measured, batcher, single_rps, samples))
            tag = {"backend": pick["backend"], "precision": pick["precision"], "shape": pick["shape"]}
            frames["requests"].append(requests.assign(**tag))
            frames["points"].append(pd.concat([measured.assign(grid=False), predicted]).assign(**tag))
            frames["service"].append(pd.DataFrame({"batch": list(service), "service_ms": list(service.values()),
                                                   "anchor": k_anchor, "model_ms": list(model_ms.values())})
                                     .assign(**tag))
            frames["capacity"].append(pd.DataFrame(capacity_rows(model_ms, BUDGET_MS, batcher, samples)).assign(**tag))
            entry.update(status="ok", lane_kind=str(measured["lane_kind"].iloc[0]),
                         single_rps=single_rps, benchmark_single_rps=1e3 / service[1],
                         seconds=time.perf_counter() - t0)
            log(f"[load] {label} finished in {entry['seconds']:.0f} s ({entry['lane_kind']})")
        except Exception as e:  # noqa: BLE001 - recorded; the other configurations go on
            entry.update(error=f"{type(e).__name__}: {e}"[:1500], traceback=traceback.format_exc()[-1500:])
            log(f"[load] {label} FAILED (recorded): {entry['error'][:300]}")
    for key, name in LOAD_FILES.items():
        if frames[key]:
            _parquet(run_dir / name, pd.concat(frames[key], ignore_index=True))
    ok = [c for c in record["configurations"] if c["status"] == "ok"]
    record["status"] = "ok" if len(ok) == len(picks) else ("partial" if ok else "failed")
    atomic_write_json(out / "load.json", record)
    return record


def read_load(run_dir: Path | str) -> dict:
    """load.json and the load frames of a run folder (empty frames where absent)."""
    from ..common.cache import read_json

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "load" / "load.json") if (run_dir / "load" / "load.json").exists() else {}
    frames = {k: (pd.read_parquet(run_dir / n) if (run_dir / n).exists() else pd.DataFrame())
              for k, n in LOAD_FILES.items()}
    return {"meta": meta, **frames}
