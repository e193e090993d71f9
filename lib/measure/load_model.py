"""The dynamic batcher's policy and a small discrete-event model of a served model under Poisson load.

* ``BatchPolicy`` / ``take_batch``: Triton-style dynamic batching, the one decision rule that both the live
  server (``lib.measure.load.open_loop``) and the model use, so they cannot drift apart.
* ``padded_batch``: the batcher runs only the benchmarked batch sizes, a batch of n padded up to the next one,
  as servers of per-shape engines do (a CUDA graph, a torch.compile graph, a TensorRT profile, an ORT session
  each fixed to one shape: on an H200 a new batch size cost 6-30 s of capture or compilation, so a batcher that
  ran every size from 1 to 32 spent minutes compiling and timed the compiles as requests).
* ``simulate``: the same policy over the same kind of arrival process with a service time ``s(b)`` per batch
  of b, on ``instances`` servers: deterministic (``service_curve``: the benchmark's median end-to-end latency
  at the padded size), or drawn from the benchmark's raw samples (``sampled_service``), which keeps the spread
  a shared host adds. ``predict`` gives a point's figures.
* ``mdl_mean_sojourn``: M/D/1's closed form (Pollaczek–Khinchine), what the simulator is tested against.
* ``max_rate_within``: the highest arrival rate whose predicted tail latency stays within a budget (bisection
  on the rate: the tail grows with the rate), and ``best_policy`` the policy that sustains the most.

The model knows nothing the measurement does not: no host jitter, no interference between a batch and the
generator, a service time that does not depend on the load. ``lib.report.load`` shows its error against the
measured points, so how far to trust it is on the page.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["BatchPolicy", "take_batch", "padded_batch", "poisson_arrivals", "service_curve", "sampled_service", "simulate", "predict",
           "mdl_mean_sojourn", "max_rate_within", "candidate_policies", "best_policy", "MODEL_REQUESTS"]

MODEL_REQUESTS = 4000  # arrivals per predicted point: the p99 rests on ~40 requests above it
TAIL_Q = 99


@dataclass(frozen=True)
class BatchPolicy:
    """Dynamic batching: up to ``max_batch`` requests, waiting at most ``max_delay_ms`` after the oldest."""

    max_batch: int = 1
    max_delay_ms: float = 0.0

    def __post_init__(self):
        from ..common.errors import ConfigError

        if not (isinstance(self.max_batch, (int, np.integer)) and not isinstance(self.max_batch, bool)
                and self.max_batch >= 1):
            raise ConfigError(f"max_batch={self.max_batch!r} is not valid: expected a whole number >= 1")
        if not (isinstance(self.max_delay_ms, (int, float)) and np.isfinite(self.max_delay_ms)
                and self.max_delay_ms >= 0):
            raise ConfigError(f"max_delay_ms={self.max_delay_ms!r} is not valid: expected milliseconds >= 0")

    @property
    def label(self) -> str:
        return "no batching" if self.max_batch == 1 else f"batch ≤ {self.max_batch}, delay ≤ {self.max_delay_ms:.3g} ms"


def take_batch(waiting_arrivals, now: float, policy: BatchPolicy, next_arrival: float = np.inf) -> tuple[int, float]:
    """The batcher's decision for a free instance at ``now`` (seconds): (how many to take, when to decide again).

    ``waiting_arrivals``: arrival times of the queued requests, oldest first (at least one). Take at once when
    a full batch waits or there is no delay; else when the oldest request's deadline (arrival + max delay) has
    come, take what waits; else take none and decide again at the deadline or at ``next_arrival`` (when the
    next request arrives: it may fill the batch), whichever is first."""
    n = len(waiting_arrivals)  # plain Python: the live server calls this once per batch, microseconds count
    if n >= policy.max_batch or policy.max_delay_ms <= 0:
        return min(n, policy.max_batch), now
    deadline = float(waiting_arrivals[0]) + policy.max_delay_ms / 1e3
    if deadline <= now:
        return n, now
    return 0, float(min(deadline, next_arrival))


def padded_batch(n: int, sizes) -> int:
    """The batch size a batch of ``n`` requests runs at: the smallest of ``sizes`` (the benchmarked batch
    sizes) that holds it; ``n`` itself past the largest (the model's extrapolation; the live batcher's
    max_batch is one of the sizes, so it never forms such a batch)."""
    fit = [int(b) for b in sizes if b >= n]
    return min(fit) if fit else int(n)


def poisson_arrivals(rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Arrival times (s from 0, below ``seconds``) of a Poisson process at ``rate``/s: seeded exponential gaps."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds * 1.3) + 20
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < seconds:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < seconds]


def service_curve(batch_ms: dict[int, float]):
    """s(b) in seconds from measured median latencies (ms) by batch size: a batch of b takes the time of the
    measured size it is padded to (``padded_batch``); past the largest, linear in b from the last two points."""
    bs = np.array(sorted(batch_ms), float)
    ms = np.array([batch_ms[int(b)] for b in bs], float)

    def s(b: int) -> float:
        if len(bs) == 1:
            return float(ms[0] / 1e3 * (b / bs[0] if b > bs[0] else 1.0))
        if b > bs[-1]:
            slope = (ms[-1] - ms[-2]) / (bs[-1] - bs[-2])
            return float(ms[-1] + slope * (b - bs[-1])) / 1e3
        return float(batch_ms[padded_batch(b, batch_ms)]) / 1e3
    return s


def sampled_service(batch_ms: dict[int, float], samples: dict[int, np.ndarray], seed: int = 0):
    """s(b) in seconds drawn at random from the raw samples (ms) of the batch size b is padded to (else of the
    sampled size nearest to it), scaled by s_median(b) / that batch's median: the service time keeps the spread and the tail the
    benchmark saw on this host (an M/G/1-like model), where ``service_curve`` keeps only its median."""
    median = service_curve(batch_ms)
    rng = np.random.default_rng(seed)
    keys = np.array(sorted(b for b in samples if len(samples[b])))
    pools = {int(b): np.asarray(samples[int(b)], float) for b in keys}
    scale = {int(b): 1.0 / float(np.median(pools[int(b)])) for b in keys}

    def s(b: int) -> float:
        run = padded_batch(b, batch_ms)  # the size it runs at: its own samples where the benchmark kept them
        near = run if run in pools else int(keys[np.argmin(np.abs(keys - run))])
        pool = pools[near]
        return float(pool[rng.integers(len(pool))]) * scale[near] * median(b)
    return s


def simulate(arrivals: np.ndarray, service, policy: BatchPolicy, instances: int = 1) -> pd.DataFrame:
    """Each request's arrival, start, done (s) and batch under the batcher, ``instances`` servers whose time
    for a batch of b is ``service(b)`` seconds."""
    arrivals = np.asarray(arrivals, float)
    n = len(arrivals)
    free = [0.0] * instances
    heapq.heapify(free)
    start, done, size = np.empty(n), np.empty(n), np.empty(n, int)
    i = 0
    while i < n:
        now = max(heapq.heappop(free), arrivals[i])
        while True:
            j = int(np.searchsorted(arrivals, now, side="right"))  # requests arrived by now: i..j-1
            take, when = take_batch(arrivals[i:min(j, i + policy.max_batch)], now, policy,
                                    next_arrival=arrivals[j] if j < n else np.inf)
            if take:
                break
            now = when
        s = service(take)
        start[i:i + take], done[i:i + take], size[i:i + take] = now, now + s, take
        heapq.heappush(free, now + s)
        i += take
    return pd.DataFrame({"arrival_s": arrivals, "start_s": start, "done_s": done, "batch": size,
                         "latency_ms": (done - arrivals) * 1e3})


def predict(batch_ms: dict[int, float], rate: float, policy: BatchPolicy, requests: int = MODEL_REQUESTS,
            seed: int = 1, instances: int = 1, samples: dict[int, np.ndarray] | None = None) -> dict:
    """A predicted open-loop point at ``rate`` under ``policy``: median, p90, p99 and mean latency (ms),
    throughput, mean batch, and whether it is sustained (the queue does not grow: the last tenth of the
    requests waits no longer than the first half did, and throughput keeps up with the rate). With
    ``samples`` (raw benchmark samples by batch size) service times are drawn from them (``sampled_service``);
    without, each batch takes its median (``service_curve``)."""
    arrivals = poisson_arrivals(rate, requests / rate, seed)
    service = sampled_service(batch_ms, samples, seed) if samples else service_curve(batch_ms)
    sim = simulate(arrivals, service, policy, instances)
    wait = (sim["start_s"] - sim["arrival_s"]).to_numpy()
    n = len(sim)
    growing = wait[-max(1, n // 10):].mean() > 2 * wait[: max(1, n // 2)].mean() + 2 * service_curve(batch_ms)(1)
    thr = n / float(sim["done_s"].max() - arrivals[0]) if n > 1 else np.nan
    lat = sim["latency_ms"].to_numpy()
    p50, p90, p99 = np.percentile(lat, [50, 90, TAIL_Q])
    return {"rate": rate, "max_batch": policy.max_batch, "max_delay_ms": policy.max_delay_ms, "n": n,
            "throughput_rps": thr, "median_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(lat.mean()), "mean_batch": float(sim["batch"].mean()),
            "sustained": bool(not growing and thr >= 0.95 * rate)}


def mdl_mean_sojourn(rate: float, service_s: float) -> float:
    """M/D/1 mean time in system (s): service + Pollaczek–Khinchine mean wait rho s / (2 (1 - rho))."""
    rho = rate * service_s
    if rho >= 1:
        return float("inf")
    return service_s + rho * service_s / (2 * (1 - rho))


def capacity(batch_ms: dict[int, float], policy: BatchPolicy) -> float:
    """Requests/s one instance serves when every batch is full: max_batch / s(max_batch)."""
    return policy.max_batch / service_curve(batch_ms)(policy.max_batch)


def max_rate_within(batch_ms: dict[int, float], policy: BatchPolicy, budget_ms: float, steps: int = 12,
                    samples: dict[int, np.ndarray] | None = None) -> float:
    """The highest arrival rate (req/s) whose predicted p99 is within ``budget_ms`` and that is sustained;
    0 when even a trickle misses the budget (a lone request's latency is above it)."""
    def ok(rate):
        p = predict(batch_ms, rate, policy, samples=samples)
        return p["sustained"] and p["p99_ms"] <= budget_ms

    lo, hi = 0.0, capacity(batch_ms, policy)
    if not ok(hi * 0.02):
        return 0.0
    lo = hi * 0.02
    for _ in range(steps):  # bisection: the tail grows with the rate
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def candidate_policies(batch_ms: dict[int, float], max_batch: int) -> list[BatchPolicy]:
    """The policies the model searches: no batching, and a largest batch of each benchmarked size above 1 up to
    ``max_batch`` (a batch is padded to one of them anyway) with a queue delay of 0, 0.5, 1 or 2 times a single
    request's latency."""
    s1 = service_curve(batch_ms)(1) * 1e3
    out = [BatchPolicy(1, 0.0)]
    for b in sorted(int(k) for k in batch_ms if 1 < k <= max_batch):
        out.extend(BatchPolicy(b, round(f * s1, 4)) for f in (0.0, 0.5, 1.0, 2.0))
    return out


def best_policy(batch_ms: dict[int, float], budget_ms: float, max_batch: int,
                samples: dict[int, np.ndarray] | None = None) -> tuple[BatchPolicy, float]:
    """(policy, rate): the candidate policy that sustains the highest rate within ``budget_ms``."""
    best = (BatchPolicy(1, 0.0), 0.0)
    for pol in candidate_policies(batch_ms, max_batch):
        r = max_rate_within(batch_ms, pol, budget_ms, samples=samples)
        if r > best[1] * 1.001:
            best = (pol, r)
    return best
