"""Latency under load: a real load generator over one loaded ``Engine``, with a dynamic batcher in front of it.

A request is one item (batch 1) given as host arrays; its latency runs from its *arrival* (closed loop: the
moment its client issued it; open loop: its scheduled Poisson arrival) to the moment its outputs are on the
host, so queueing, batching delay, copies and a late generator are all counted (no coordinated omission).
Clock: ``time.perf_counter``, the host clock of ``lib.measure.timing``; every request ends with host outputs, so the
host clock sees its whole latency on a GPU too (CUDA events would time the device part only).

* **Closed loop** (``closed_loop``): N requests in flight. What a lane is depends on the backend
  (``Engine.lane()``): *parallel* lanes (ONNX Runtime's concurrent ``session.run``, PyTorch eager on its own
  CUDA stream per lane) each get a thread and issue their next request when the last returned; *serial*
  lanes (PyTorch eager on a CPU, CUDA graphs, TensorRT contexts) cannot run two requests at once, so the N
  clients' requests queue, oldest first, in front of the one instance on the measuring thread. N = 1 is the
  same code for every backend: the measuring thread issues a request and waits for it, which is what the
  benchmark's single-request (end-to-end) loop does, with no thread hand-off in between.
* **Open loop** (``open_loop``): Poisson arrivals at a rate (seeded exponential gaps, drawn before the clock
  starts), served by one instance through the **dynamic batcher** (``take_batch``): when the instance is free
  and a request waits, it takes up to ``max_batch`` requests at once, waiting at most ``max_delay_ms`` after
  the oldest one's arrival for the batch to fill (Triton's ``max_queue_delay_microseconds`` rule), and runs
  it at the next size it has inputs for (``lib.measure.load_model.padded_batch``: the benchmarked sizes; the
  padding rows are computed and dropped). ``max_batch=1`` is no batching. The server runs on the measuring thread and sleeps until the next arrival
  or deadline (the last ``SPIN_S`` spun, as ``time.sleep`` wakes up late by tens of µs).
* **Rounds** (``measure_load``): every point (closed N, or open rate x policy) is measured in several short
  rounds, each point once per round in a seeded random order, so a slow moment of a shared host lands on
  several points instead of all rounds of one; the figures of a point pool its requests (``lib.common.stats``), its
  interval and *noisy* flag come from its round medians (``round_interval``, ``round_spread``).

An open-loop round is *sustained* when every offered request was served and the queue emptied soon after
the last arrival: within ``DRAIN_SHARE`` of the arrivals' span plus twice the round's median latency (the last
request's own time in the system; a queue that grows leaves a backlog proportional to the span). The achieved
throughput is no test here: a round of a few dozen requests ends with its last one in service, so requests /
window falls short of the offered rate by that request's latency over the round (7 % on a 0.27 s round at 20
ms). A round whose backlog grows past ``MAX_BACKLOG`` round lengths is stopped (overloaded).
The discrete-event model that predicts these curves is ``lib.measure.load_model``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..common.stats import round_interval, round_spread, summarize
from .load_model import BatchPolicy, padded_batch, poisson_arrivals, take_batch

__all__ = ["closed_loop", "open_loop", "measure_load", "point_rows", "LoadPoint", "REQUEST_COLUMNS",
           "POINT_COLUMNS", "SUSTAINED_SHARE"]

SUSTAINED_SHARE = 0.95  # lib.measure.load_model's sustained rule (a long simulation has no end effect)
DRAIN_SHARE = 0.1
MAX_BACKLOG = 3.0
SPIN_S = 0.0005  # the last half millisecond of a wait is spun: sleep() overshoots by ~50-100 µs here
clock = time.perf_counter  # lib.measure.timing's host clock

REQUEST_COLUMNS = ["experiment", "concurrency", "rate", "max_batch", "max_delay_ms", "round", "request",
                   "arrival_s", "start_s", "done_s", "latency_ms", "queue_ms", "batch", "run_batch", "lane"]
POINT_COLUMNS = ["experiment", "concurrency", "rate", "max_batch", "max_delay_ms", "source", "n", "rounds",
                 "window_s", "throughput_rps", "median_ms", "p90_ms", "p99_ms", "tail_q", "tail_ms", "mean_ms",
                 "mean_batch", "ci_low_ms", "ci_high_ms", "round_spread", "noisy", "sustained", "lane_kind"]


@dataclass(frozen=True)
class LoadPoint:
    """One point of the load section: a closed loop at ``concurrency``, or an open loop at ``rate`` req/s."""

    experiment: str          # "closed" or "open"
    concurrency: int = 1
    rate: float = float("nan")
    policy: BatchPolicy = BatchPolicy()

    @property
    def label(self) -> str:
        if self.experiment == "closed":
            return f"closed N={self.concurrency}"
        return f"open {self.rate:.4g} req/s, {self.policy.label}"


def _wait_until(t: float) -> None:
    """Sleep until perf_counter reaches ``t``; the last SPIN_S is spun for precision."""
    while True:
        left = t - clock()
        if left <= 0:
            return
        if left > SPIN_S:
            time.sleep(left - SPIN_S)


# --- closed loop ---------------------------------------------------------------------------------

def closed_loop(lane_factory, inputs: dict, concurrency: int, seconds: float, min_requests: int = 1,
                lanes: list | None = None) -> tuple[list[dict], float]:
    """N requests in flight for at least ``seconds`` and ``min_requests`` completions; returns (one row per
    completed request, window seconds). ``lane_factory()`` makes a lane (``Engine.lane``); ``lanes`` reuses
    lanes made before (their warm-up is the caller's). Rows hold times in seconds from the window's start."""
    if not lanes:
        first = lane_factory()
        lanes = [first] + [lane_factory() for _ in range(concurrency - 1 if first.parallel else 0)]
    if concurrency == 1 or not lanes[0].parallel:
        return _closed_serial(lanes[0], inputs, concurrency, seconds, min_requests)
    return _closed_threads(lanes[:concurrency], inputs, concurrency, seconds, min_requests)


def _closed_serial(lane, inputs, concurrency, seconds, min_requests):
    """N clients, one instance, on this thread: the oldest waiting request runs next; its client issues the
    next request the moment it returns (at N = 1: issue, wait, issue, as the single-request loop)."""
    begin = clock()
    waiting = deque((i, begin) for i in range(concurrency))  # (client, issued at)
    done = []  # (client, issued, start, done): rows are made after the clock stops
    while True:
        client, issued = waiting.popleft()
        t0 = clock()
        lane(inputs)
        t1 = clock()
        done.append((client, issued, t0, t1))
        waiting.append((client, t1))
        if t1 - begin >= seconds and len(done) >= min_requests:
            break
    return [_row(a - begin, s - begin, d - begin, 1, c) for c, a, s, d in done], t1 - begin


def _closed_threads(lanes, inputs, concurrency, seconds, min_requests):
    """One thread per lane, each with one request in flight; the measuring thread only waits."""
    barrier = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    per_lane: list[list] = [[] for _ in lanes]
    errors: list[BaseException] = []

    def work(i):
        barrier.wait()
        try:
            while not stop.is_set():
                t0 = clock()
                lanes[i](inputs)
                per_lane[i].append((t0, clock()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    begin = clock()
    stop.wait(seconds)  # blocks without polling: the lanes have the cores to themselves
    while not stop.is_set() and sum(len(x) for x in per_lane) < min_requests:
        stop.wait(0.005)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    # requests still running at the stop finish inside the window: it ends at the last completion
    end = max(b for x in per_lane for _, b in x)
    rows = [_row(a - begin, a - begin, b - begin, 1, i) for i, x in enumerate(per_lane) for a, b in x]
    return rows, end - begin


def _row(arrival, start, done, batch, lane, run_batch=None) -> dict:
    return {"arrival_s": arrival, "start_s": start, "done_s": done, "latency_ms": (done - arrival) * 1e3,
            "queue_ms": (start - arrival) * 1e3, "batch": batch, "run_batch": run_batch or batch, "lane": lane}


# --- open loop: Poisson arrivals, dynamic batcher, one instance -------------------------------------

def _run_sizes(batched_inputs: dict[int, dict], max_batch: int) -> list[int]:
    """The batch sizes there are inputs for, checked to hold a batch of ``max_batch``."""
    sizes = sorted(batched_inputs)
    if sizes[-1] < max_batch:
        raise ValueError(f"open_loop: inputs of batch sizes {sizes} cannot hold a batch of {max_batch}")
    return sizes


def open_loop(lane, batched_inputs: dict[int, dict], arrivals: np.ndarray, policy: BatchPolicy
              ) -> tuple[list[dict], float, dict]:
    """Serve ``arrivals`` (seconds from the start, sorted) through the batcher on ``lane`` (one instance, on
    this thread). ``batched_inputs[b]``: host inputs of a batch of b for each size the engine runs, at least 1 and
    one >= ``policy.max_batch`` (made before the clock starts: a server would concatenate); a batch of n runs at
    the smallest of them that holds it. Returns (rows, window s, extra)."""
    sizes = _run_sizes(batched_inputs, policy.max_batch)
    n = len(arrivals)
    arr = [float(a) for a in arrivals]  # Python floats: indexed per request, numpy scalars cost more
    horizon = arr[-1] if n else 0.0
    give_up = horizon * (1 + MAX_BACKLOG) + 0.05
    served: list[tuple] = []  # (first request, how many, start, done): rows are made after the clock stops
    queue: deque[int] = deque()
    nxt = done = 0
    overloaded = False
    begin = clock() + 0.002
    while done < n:
        now = clock() - begin
        while nxt < n and arr[nxt] <= now:
            queue.append(nxt)
            nxt += 1
        if now > give_up:
            overloaded = True  # the backlog outgrew the round: beyond capacity
            break
        if not queue:
            _wait_until(begin + arr[nxt])
            continue
        # requests are queued in arrival order, so the oldest waiting ones are queue[0], queue[0] + 1, ...
        first = queue[0]
        take, when = take_batch(arr[first:first + min(len(queue), policy.max_batch)], now, policy,
                                next_arrival=arr[nxt] if nxt < n else np.inf)
        if not take:
            _wait_until(begin + when)  # the oldest's deadline or the next arrival: decide again then
            continue
        for _ in range(take):
            queue.popleft()
        run = padded_batch(take, sizes)
        t0 = clock() - begin
        lane(batched_inputs[run])
        t1 = clock() - begin
        served.append((first, take, t0, t1, run))
        done += take
    rows = [{**_row(arr[i], t0, t1, take, 0, run), "request": i}
            for first, take, t0, t1, run in served for i in range(first, first + take)]
    last_done = served[-1][3] if served else horizon
    return rows, max(last_done, 1e-9), {"offered": n, "served": len(rows), "overloaded": overloaded,
                                         "drain_s": last_done - horizon, "offered_rps": n / max(horizon, 1e-9)}


# --- rounds ------------------------------------------------------------------------------------------

def measure_load(engine, points: list[LoadPoint], batched_inputs: dict[int, dict], rounds: int,
                 round_s: float, min_requests: int, warmup_s: float, seed: int = 0,
                 noise_spread: float = 0.05, log=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every point in ``rounds`` rounds (seeded random order per round) on ``engine``; returns (requests,
    points) frames (REQUEST_COLUMNS, POINT_COLUMNS). ``batched_inputs[1]`` is a single request's inputs."""
    rng = np.random.default_rng(seed)
    lane = engine.lane()
    n_lanes = max([p.concurrency for p in points if p.experiment == "closed"] + [1]) if lane.parallel else 1
    lanes = [lane] + [engine.lane() for _ in range(n_lanes - 1)]
    top = max(p.policy.max_batch for p in points)
    have = _run_sizes(batched_inputs, top)  # before any warm-up: a missing size is an error, not a KeyError
    sizes = sorted({1} | {padded_batch(b, have) for b in range(1, top + 1)})
    for b in sizes:  # warm-up: each batch size the batcher runs (first-call work, autotuning, capture)
        _warm(lane, batched_inputs[b], warmup_s / len(sizes))
    frames, meta = [], {}
    for r in range(rounds):
        for k in rng.permutation(len(points)):
            p = points[k]
            _warm(lane, batched_inputs[1], min(0.03, warmup_s))  # after a switch, as lib.sweep.bench does
            if p.experiment == "closed":
                rows, window = closed_loop(engine.lane, batched_inputs[1], p.concurrency, round_s, min_requests,
                                           lanes=lanes)
                extra = {"overloaded": False, "drain_s": 0.0, "offered": len(rows), "served": len(rows)}
            else:
                seconds = max(round_s, min_requests / p.rate)
                arrivals = poisson_arrivals(p.rate, seconds, seed=int(rng.integers(2**31)))
                rows, window, extra = open_loop(lane, batched_inputs, arrivals, p.policy)
            f = pd.DataFrame(rows)
            f["round"] = r
            if "request" not in f:
                f = f.sort_values("arrival_s", kind="stable").reset_index(drop=True)
                f["request"] = np.arange(len(f))
            for col, value in (("experiment", p.experiment), ("concurrency", p.concurrency), ("rate", p.rate),
                               ("max_batch", p.policy.max_batch), ("max_delay_ms", p.policy.max_delay_ms)):
                f[col] = value
            frames.append(f[REQUEST_COLUMNS])
            meta.setdefault(k, []).append({"window_s": window, **extra})
            if log:
                log(f"  round {r + 1}/{rounds} {p.label}: {len(f)} requests, median "
                    f"{f['latency_ms'].median():.4g} ms, {len(f) / window:.4g} req/s")
    requests = pd.concat(frames, ignore_index=True)
    table = [point_rows(p, requests, meta[k], lane.kind, noise_spread) for k, p in enumerate(points)]
    return requests, pd.DataFrame(table, columns=POINT_COLUMNS)


def _warm(lane, inputs, seconds):
    t0 = clock()
    for _ in range(2):
        lane(inputs)
    while clock() - t0 < seconds:
        lane(inputs)


def point_rows(p: LoadPoint, requests: pd.DataFrame, rounds_meta: list[dict], lane_kind: str,
               noise_spread: float) -> dict:
    """A measured point's figures: latency over every request of every round (raw, pooled), throughput
    the median of its rounds' (requests served / window), interval and noise from the round medians."""
    f = requests[(requests["experiment"] == p.experiment) & (requests["concurrency"] == p.concurrency)
                 & (requests["max_batch"] == p.policy.max_batch)
                 & (requests["max_delay_ms"] == p.policy.max_delay_ms)]
    if p.experiment == "open":
        f = f[f["rate"] == p.rate]
    s = summarize(f["latency_ms"].to_numpy(float))
    medians = f.groupby("round")["latency_ms"].median().to_numpy(float)
    lo, hi = round_interval(medians, s.get("median_ms", np.nan))
    spread = round_spread(medians, s.get("median_ms", np.nan))
    counts = f.groupby("round").size()
    thr = [counts.get(i, 0) / m["window_s"] for i, m in enumerate(rounds_meta)]
    by_round = f.groupby("round")["latency_ms"].median()
    sustained = p.experiment == "closed" or all(
        not m["overloaded"] and m["served"] == m["offered"]
        and m["drain_s"] <= DRAIN_SHARE * (m["window_s"] - m["drain_s"]) + 2e-3 * by_round.get(i, np.inf)
        for i, m in enumerate(rounds_meta))
    return {"experiment": p.experiment, "concurrency": p.concurrency, "rate": p.rate,
            "max_batch": p.policy.max_batch, "max_delay_ms": p.policy.max_delay_ms, "source": "measured",
            "n": s.get("n", 0), "rounds": len(rounds_meta), "window_s": float(sum(m["window_s"] for m in rounds_meta)),
            "throughput_rps": float(np.median(thr)), "median_ms": s.get("median_ms", np.nan),
            "p90_ms": s.get("p90_ms", np.nan), "p99_ms": s.get("p99_ms", np.nan), "tail_q": s.get("tail_q", 0),
            "tail_ms": s.get("tail_ms", np.nan), "mean_ms": s.get("mean_ms", np.nan),
            "mean_batch": float(f["batch"].mean()) if len(f) else np.nan, "ci_low_ms": lo, "ci_high_ms": hi,
            "round_spread": spread, "noisy": bool(spread > noise_spread), "sustained": bool(sustained),
            "lane_kind": lane_kind}
