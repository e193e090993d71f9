"""Latency under load: a real load generator over one loaded ``Engine``, a dynamic batcher in front of it,
and a small discrete-event model that predicts the same curves from measured batch latencies.

A request is one item (batch 1) given as host arrays; its latency runs from its *scheduled* arrival to
the moment its outputs are on the host, so queueing, batching delay, copies and a late generator are all
counted (no coordinated omission). Clocks: ``time.perf_counter``, the host clock of ``lib.timing``
(every request ends with host outputs, so the host clock sees its whole latency).

* **Closed loop** (``closed_loop``): N requests in flight, each on its own *lane* (``Engine.lane()``: a
  thread with its own CUDA stream and buffers for PyTorch eager, concurrent ``session.run`` calls for
  ONNX Runtime, one request at a time for the backends that cannot run two at once, said so in
  ``lane_kind``). A lane issues its next request when the last one returned.
* **Open loop** (``open_loop``): Poisson arrivals at a rate (seeded exponential gaps), queued; one model
  instance served by the **dynamic batcher**: when the instance is free and a request waits, it takes
  up to ``max_batch`` requests at once, waiting at most ``max_delay_ms`` after the oldest one's arrival
  for the batch to fill (Triton's ``max_queue_delay_microseconds`` rule). ``max_batch=1`` is no batching.
* **Model** (``simulate``): the same policy over the same arrival process with service time
  ``s(b)`` = the measured median latency of a batch of b (interpolated between measured batch sizes),
  deterministic; k instances. ``mdl_mean_sojourn`` is M/D/1's closed form it is tested against.

Measurement length: at least ``TimingPolicy.min_iters`` requests and ``min_duration_s`` seconds after a
warm-up of ``warmup_s`` (the benchmark's rule). An open-loop point is *sustained* when the queue never held
more than ``MAX_BACKLOG_S`` seconds of arrivals (else the generator stops early: the rate is beyond
capacity) and it emptied within 10 % of the window (at least 50 ms) after the last arrival.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["BatchPolicy", "LoadResult", "closed_loop", "open_loop", "simulate", "mdl_mean_sojourn",
           "take_batch", "service_curve", "REQUEST_COLUMNS", "POINT_COLUMNS", "SUSTAINED_SHARE"]

SUSTAINED_SHARE = 0.95
MAX_BACKLOG_S = 1.0
clock = time.perf_counter  # lib.timing's host clock

REQUEST_COLUMNS = ["experiment", "concurrency", "rate", "max_batch", "max_delay_ms", "request", "arrival_s",
                   "start_s", "done_s", "latency_ms", "queue_ms", "batch", "lane"]
POINT_COLUMNS = ["experiment", "concurrency", "rate", "max_batch", "max_delay_ms", "source", "n", "window_s",
                 "throughput_rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "mean_batch", "sustained", "lane_kind"]


@dataclass(frozen=True)
class BatchPolicy:
    """Triton-style dynamic batching: up to ``max_batch`` requests, waiting at most ``max_delay_ms``."""

    max_batch: int = 1
    max_delay_ms: float = 0.0

    def __post_init__(self):
        from .errors import ConfigError

        if not (isinstance(self.max_batch, (int, np.integer)) and self.max_batch >= 1):
            raise ConfigError(f"max_batch={self.max_batch!r} is not valid: expected a whole number >= 1")
        if not (np.isfinite(self.max_delay_ms) and self.max_delay_ms >= 0):
            raise ConfigError(f"max_delay_ms={self.max_delay_ms!r} is not valid: expected milliseconds >= 0")

    @property
    def label(self) -> str:
        return "no batching" if self.max_batch == 1 else f"batch ≤ {self.max_batch}, delay ≤ {self.max_delay_ms:g} ms"


def take_batch(waiting_arrivals, now: float, policy: BatchPolicy, next_arrival: float = np.inf) -> tuple[int, float]:
    """The batcher's decision for a free instance at ``now``: (how many to take, when to start).

    ``waiting_arrivals``: arrival times of the queued requests, oldest first (at least one).
    ``next_arrival``: when the next request not yet queued arrives (the simulator knows; the live batcher
    passes inf and re-decides when one arrives). Start at once when the batch is full; else at the
    oldest request's deadline (arrival + max delay) or when enough requests have arrived to fill it."""
    q = list(waiting_arrivals)
    if len(q) >= policy.max_batch or policy.max_delay_ms <= 0:
        return min(len(q), policy.max_batch), now
    deadline = q[0] + policy.max_delay_ms / 1e3
    if deadline <= now:
        return len(q), now
    return 0, min(deadline, next_arrival)  # wait: re-decide then


@dataclass
class LoadResult:
    experiment: str                 # "closed" or "open"
    concurrency: int
    rate: float                     # offered requests/s (open loop), NaN for closed
    policy: BatchPolicy
    requests: pd.DataFrame          # REQUEST_COLUMNS
    window_s: float
    lane_kind: str = ""
    overloaded: bool = False
    extra: dict = field(default_factory=dict)

    def point(self) -> dict:
        r = self.requests
        lat = r["latency_ms"].to_numpy(float)
        done = len(r)
        thr = done / self.window_s if self.window_s > 0 else np.nan
        # open loop: every request offered was served, and the queue emptied soon after the last arrival
        drained = self.extra.get("drain_s", 0.0) <= max(0.05, 0.1 * self.window_s)
        sustained = not self.overloaded and (self.experiment == "closed" or drained)
        return {"experiment": self.experiment, "concurrency": self.concurrency, "rate": self.rate,
                "max_batch": self.policy.max_batch, "max_delay_ms": self.policy.max_delay_ms, "source": "measured",
                "n": done, "window_s": self.window_s, "throughput_rps": thr,
                **_latency_stats(lat), "mean_batch": float(r["batch"].mean()) if done else np.nan,
                "sustained": bool(sustained), "lane_kind": self.lane_kind}


def _latency_stats(lat: np.ndarray) -> dict:
    if not len(lat):
        return {"p50_ms": np.nan, "p90_ms": np.nan, "p99_ms": np.nan, "mean_ms": np.nan}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(lat.mean())}


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=REQUEST_COLUMNS)


# --- closed loop ---------------------------------------------------------------------------------

def closed_loop(engine, inputs: dict, concurrency: int, policy) -> LoadResult:
    """N lanes, each with one request in flight; ``policy`` is a ``lib.timing.TimingPolicy``."""
    lanes = [engine.lane() for _ in range(concurrency)]
    kind = getattr(lanes[0], "kind", "")
    for lane in lanes:  # warm-up: each lane's own buffers, streams and first-call work
        t0 = clock()
        for _ in range(2):
            lane(inputs)
        while clock() - t0 < policy.warmup_s / concurrency:
            lane(inputs)
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
        except BaseException as e:  # reported in the caller's thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    begin = clock()
    while not stop.is_set():
        time.sleep(0.01)
        done = sum(len(x) for x in per_lane)
        if clock() - begin >= policy.min_duration_s and done >= policy.min_iters:
            break
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    end = clock()
    rows = [{"experiment": "closed", "concurrency": concurrency, "rate": np.nan, "max_batch": 1, "max_delay_ms": 0.0,
             "arrival_s": a - begin, "start_s": a - begin, "done_s": b - begin, "latency_ms": (b - a) * 1e3,
             "queue_ms": 0.0, "batch": 1, "lane": i} for i, lane_rows in enumerate(per_lane) for a, b in lane_rows]
    rows.sort(key=lambda r: r["arrival_s"])
    for k, r in enumerate(rows):
        r["request"] = k
    # the window: from the common start to the last completion (requests still running at stop finish in it)
    return LoadResult("closed", concurrency, np.nan, BatchPolicy(), _frame(rows), end - begin, kind)


# --- open loop: Poisson arrivals, dynamic batcher, one instance -------------------------------------

def poisson_arrivals(rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Arrival times (s from 0) of a Poisson process: seeded exponential gaps."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds * 1.3) + 20
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < seconds:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < seconds]


def open_loop(engine, batched_inputs: dict[int, dict], rate: float, batch_policy: BatchPolicy, policy,
              seed: int = 0) -> LoadResult:
    """Poisson arrivals at ``rate`` requests/s into the dynamic batcher in front of one lane.

    ``batched_inputs[b]``: host inputs of a batch of b requests, for b = 1..max_batch (made before the
    clock starts, so building a batch costs nothing measured; a server would concatenate)."""
    lane = engine.lane()
    kind = getattr(lane, "kind", "")
    for b in sorted(batched_inputs):  # warm-up at every batch size the batcher can form
        t0 = clock()
        lane(batched_inputs[b])
        while clock() - t0 < policy.warmup_s / len(batched_inputs):
            lane(batched_inputs[b])
    seconds = max(policy.min_duration_s, policy.min_iters / rate)
    arrivals = poisson_arrivals(rate, seconds, seed)
    queue: list[tuple[int, float]] = []   # (request id, scheduled arrival in s from begin)
    cond = threading.Condition()
    state = {"generated": 0, "done_generating": False, "overloaded": False}
    rows: list[dict] = []
    errors: list[BaseException] = []
    begin = clock() + 0.005

    def generate():
        for i, a in enumerate(arrivals):
            delay = begin + a - clock()
            if delay > 0:
                time.sleep(delay)
            with cond:
                queue.append((i, a))
                state["generated"] = i + 1
                if len(queue) > max(rate * MAX_BACKLOG_S, 2 * batch_policy.max_batch):
                    state["overloaded"] = True
                cond.notify()
            if state["overloaded"] or errors:
                break
        with cond:
            state["done_generating"] = True
            cond.notify()

    def serve():
        try:
            while True:
                with cond:
                    while True:
                        if queue:
                            now = clock() - begin
                            n, start = take_batch([a for _, a in queue], now, batch_policy)
                            if state["done_generating"]:
                                n = n or min(len(queue), batch_policy.max_batch)  # nothing more will come
                            if n:
                                taken, queue[:n] = queue[:n], []
                                break
                            cond.wait(max(start - now, 0.0))
                        elif state["done_generating"]:
                            return
                        else:
                            cond.wait()
                t_start = clock() - begin
                lane(batched_inputs[len(taken)])
                t_done = clock() - begin
                for i, a in taken:
                    rows.append({"experiment": "open", "concurrency": 1, "rate": rate,
                                 "max_batch": batch_policy.max_batch, "max_delay_ms": batch_policy.max_delay_ms,
                                 "request": i, "arrival_s": a, "start_s": t_start, "done_s": t_done,
                                 "latency_ms": (t_done - a) * 1e3, "queue_ms": (t_start - a) * 1e3,
                                 "batch": len(taken), "lane": 0})
        except BaseException as e:
            errors.append(e)
            with cond:
                state["done_generating"] = True

    server = threading.Thread(target=serve, daemon=True)
    gen = threading.Thread(target=generate, daemon=True)
    server.start()
    gen.start()
    gen.join()
    server.join()
    if errors:
        raise errors[0]
    frame = _frame(sorted(rows, key=lambda r: r["request"]))
    # throughput = requests served / time from the start to the last completion
    last_arrival = float(arrivals[state["generated"] - 1]) if state["generated"] else 0.0
    last_done = float(frame["done_s"].max()) if len(frame) else last_arrival
    return LoadResult("open", 1, rate, batch_policy, frame, max(last_done, 1e-9), kind, bool(state["overloaded"]),
                      extra={"drain_s": last_done - last_arrival, "offered": state["generated"]})


# --- the discrete-event model ----------------------------------------------------------------------

def service_curve(batch_ms: dict[int, float]):
    """s(b) in seconds from measured median latencies by batch size (linear between them, and past the
    largest measured batch linear in b from the last two points)."""
    bs = np.array(sorted(batch_ms), float)
    ms = np.array([batch_ms[int(b)] for b in bs], float)

    def s(b: int) -> float:
        if len(bs) == 1:
            return ms[0] / 1e3 * (b / bs[0] if b > bs[0] else 1.0)
        if b > bs[-1]:
            slope = (ms[-1] - ms[-2]) / (bs[-1] - bs[-2])
            return (ms[-1] + slope * (b - bs[-1])) / 1e3
        return float(np.interp(b, bs, ms)) / 1e3
    return s


def simulate(arrivals: np.ndarray, service, batch_policy: BatchPolicy, instances: int = 1) -> pd.DataFrame:
    """Each request's (arrival, start, done, batch) under the batcher with ``instances`` servers whose time
    for a batch of b is ``service(b)`` seconds."""
    arrivals = np.asarray(arrivals, float)
    n = len(arrivals)
    free = [0.0] * instances
    heapq.heapify(free)
    start = np.empty(n)
    done = np.empty(n)
    size = np.empty(n, int)
    i = 0
    while i < n:
        t_free = heapq.heappop(free)
        now = max(t_free, arrivals[i])
        while True:
            j = int(np.searchsorted(arrivals, now, side="right"))  # requests arrived by now: i..j-1
            nxt = arrivals[j] if j < n else np.inf
            take, when = take_batch(arrivals[i:j], now, batch_policy, next_arrival=nxt)
            if take:
                break
            now = when
        take = min(take, j - i)
        s = service(take)
        start[i:i + take], done[i:i + take], size[i:i + take] = now, now + s, take
        heapq.heappush(free, now + s)
        i += take
    return pd.DataFrame({"arrival_s": arrivals, "start_s": start, "done_s": done, "batch": size,
                         "latency_ms": (done - arrivals) * 1e3})


def predict(batch_ms: dict[int, float], rate: float, batch_policy: BatchPolicy, seconds: float = 20.0,
            seed: int = 1, instances: int = 1) -> dict:
    """A predicted open-loop point (POINT_COLUMNS) at ``rate`` under ``batch_policy``."""
    arrivals = poisson_arrivals(rate, seconds, seed)
    sim = simulate(arrivals, service_curve(batch_ms), batch_policy, instances)
    backlog_ok = (sim["start_s"] - sim["arrival_s"]).iloc[-len(sim) // 10:].mean() < MAX_BACKLOG_S
    thr = len(sim) / max(sim["done_s"].max(), arrivals[-1])
    return {"experiment": "open", "concurrency": 1, "rate": rate, "max_batch": batch_policy.max_batch,
            "max_delay_ms": batch_policy.max_delay_ms, "source": "predicted", "n": len(sim), "window_s": seconds,
            "throughput_rps": thr, **_latency_stats(sim["latency_ms"].to_numpy()),
            "mean_batch": float(sim["batch"].mean()), "sustained": bool(backlog_ok and thr >= SUSTAINED_SHARE * rate),
            "lane_kind": "model"}


def mdl_mean_sojourn(rate: float, service_s: float) -> float:
    """M/D/1 mean time in system (s): service + Pollaczek–Khinchine wait rho / (2 mu (1 - rho))."""
    rho = rate * service_s
    if rho >= 1:
        return np.inf
    return service_s + rho * service_s / (2 * (1 - rho))
