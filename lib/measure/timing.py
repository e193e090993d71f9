"""The one timing module: every backend is timed here, the same way.

Three measurements of one benchmark point:

* ``latency`` (device-resident or end-to-end): one request at a time. Each iteration
  is issued, then waited for, before the next starts, so it measures what a caller of
  a single request sees. On a GPU the per-iteration time comes from CUDA events
  recorded on the engine's stream around the request (sync point: the end event, after
  it has been recorded); the host ``perf_counter`` span is kept beside it as ``wall_ms``.
  On a CPU it is ``perf_counter``.
* ``throughput``: pipelined. ``window`` requests are enqueued back to back with no sync
  between them, then one sync; each window gives one sample in ms per request. On a CPU
  nothing is asynchronous, so a pipelined window is the same as sequential requests.

Both keep every timed iteration raw; warm-up runs on the same inputs (same shape)
until ``warmup_s`` has passed and at least ``MIN_WARMUP_ITERS`` ran. The timed loop runs
until at least ``min_iters`` iterations AND ``min_duration_s`` seconds (trtexec's rule),
capped by ``max_iters`` so a microsecond kernel cannot fill memory. One call is one *round*
of a point: ``lib.sweep.bench`` calls these several times per point, interleaved with other points.

``HostSentinel`` times a fixed, tiny reference workload through ``measure_latency`` before
every round, so the report can tell a slow host from a slow configuration: on a GPU the host
cost of a burst of empty kernel launches (what every launch-bound configuration pays), on a
CPU a fixed arithmetic loop.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["TimingPolicy", "Timings", "CpuTimer", "CudaEventTimer", "measure_latency", "measure_throughput",
           "HostSentinel", "warm_up", "throughput_window", "cpu_wait_ms"]

MIN_WARMUP_ITERS = 2


@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up and measure one point (seconds, iterations)."""

    warmup_s: float = 0.2
    min_iters: int = 20
    min_duration_s: float = 1.0
    max_iters: int = 100_000
    throughput_window_s: float = 0.05  # a pipelined window lasts about this long
    min_windows: int = 5

    def __post_init__(self):
        from ..common.errors import ConfigError

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)

        # Each check runs only after the ones before it passed, so a value of the wrong type is a
        # ConfigError naming it (not a TypeError from comparing it).
        checks = (
            ("WARMUP", self.warmup_s, lambda v: is_num(v) and v >= 0, "seconds >= 0"),
            ("ITERS", self.min_iters, lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            ("DURATION", self.min_duration_s, lambda v: is_num(v) and v >= 0, "seconds >= 0"),
            ("max_iters", self.max_iters, lambda v: is_int(v) and v >= self.min_iters,
             f"an integer >= ITERS ({self.min_iters})"),
            ("throughput_window_s", self.throughput_window_s, lambda v: is_num(v) and v > 0, "seconds > 0"),
            ("min_windows", self.min_windows, lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        )
        for name, value, ok, valid in checks:
            if not ok(value):
                raise ConfigError(f"{name}={value!r} is not valid: expected {valid}")


@dataclass
class Timings:
    """Raw samples of one measurement. ``ms`` is the primary figure per sample."""

    mode: str                 # "device", "end_to_end" or "throughput"
    timer: str                # "cuda_event" or "perf_counter"
    ms: np.ndarray            # per iteration (latency) or per request within a window (throughput)
    wall_ms: np.ndarray       # host perf_counter span of the same sample
    t_start: np.ndarray       # perf_counter at each sample's start (s), to align with sampler ticks
    t_end: np.ndarray         # perf_counter at each sample's end (s)
    requests_per_sample: int = 1
    warmup_iters: int = 0
    warmup_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def window(self) -> tuple[float, float]:
        """(start, end) of the timed window in perf_counter seconds."""
        return float(self.t_start[0]), float(self.t_end[-1])


class CpuTimer:
    """Host clock; the step must be synchronous (it is, on a CPU backend)."""

    name = "perf_counter"

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._t1 = time.perf_counter()

    def elapsed_ms(self) -> float:
        return (self._t1 - self._t0) * 1e3

    def sync(self) -> None:
        pass


class CudaEventTimer:
    """CUDA events recorded on the engine's stream (a ``torch.cuda.Stream``)."""

    name = "cuda_event"

    def __init__(self, stream):
        import torch

        self._stream = stream
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record(self._stream)

    def stop(self) -> None:
        self._end.record(self._stream)

    def sync(self) -> None:
        # Waits for the end event only: what was enqueued on the stream before it is done.
        self._end.synchronize()

    def elapsed_ms(self) -> float:
        return self._start.elapsed_time(self._end)


def warm_up(step: Callable[[], None], timer, seconds: float) -> tuple[int, float]:
    """Run ``step`` untimed until ``seconds`` passed and at least ``MIN_WARMUP_ITERS`` ran, each one
    waited for (sync on the timer's stream); returns (iterations, seconds)."""
    t0 = time.perf_counter()
    n = 0
    while n < MIN_WARMUP_ITERS or time.perf_counter() - t0 < seconds:
        step()
        timer.stop()
        timer.sync()
        n += 1
    return n, time.perf_counter() - t0


def _warm_up(step: Callable[[], None], timer, policy: TimingPolicy) -> tuple[int, float]:
    return warm_up(step, timer, policy.warmup_s)


def measure_latency(step: Callable[[], None], timer, policy: TimingPolicy, mode: str) -> Timings:
    """Time ``step`` one request at a time (see module docstring)."""
    n_warm, warm_s = _warm_up(step, timer, policy)
    ms, wall, starts, ends = [], [], [], []
    clock = time.perf_counter
    t_begin = clock()
    while True:
        t0 = clock()
        timer.start()
        step()
        timer.stop()
        timer.sync()
        t1 = clock()
        ms.append(timer.elapsed_ms())
        wall.append((t1 - t0) * 1e3)
        starts.append(t0)
        ends.append(t1)
        n = len(ms)
        if (n >= policy.min_iters and t1 - t_begin >= policy.min_duration_s) or n >= policy.max_iters:
            break
    return Timings(mode=mode, timer=timer.name, ms=np.asarray(ms), wall_ms=np.asarray(wall),
                   t_start=np.asarray(starts), t_end=np.asarray(ends),
                   warmup_iters=n_warm, warmup_s=warm_s)


def throughput_window(policy: TimingPolicy, est_ms: float) -> int:
    """Requests per pipelined window: enough to last about ``policy.throughput_window_s``."""
    return max(1, min(1000, int(policy.throughput_window_s * 1e3 / max(est_ms, 1e-3))))


def measure_throughput(step: Callable[[], None], timer, policy: TimingPolicy, est_ms: float,
                       window: int | None = None) -> Timings:
    """Pipelined: windows of back-to-back requests with one sync each; ``est_ms`` sizes the windows.

    ``est_ms`` is a per-request estimate (the device-resident median); a window holds enough
    requests to last about ``policy.throughput_window_s`` (``window`` fixes it instead, so every
    round of a point uses the same). Warm-up reuses the latency warm-up rule. A sample is a
    window's time divided by its requests (ms per request).
    """
    window = window or throughput_window(policy, est_ms)
    n_warm, warm_s = _warm_up(step, timer, policy)
    ms, wall, starts, ends = [], [], [], []
    clock = time.perf_counter
    t_begin = clock()
    while True:
        t0 = clock()
        timer.start()
        for _ in range(window):
            step()
        timer.stop()
        timer.sync()
        t1 = clock()
        ms.append(timer.elapsed_ms() / window)
        wall.append((t1 - t0) * 1e3 / window)
        starts.append(t0)
        ends.append(t1)
        n = len(ms)
        if (n >= policy.min_windows and t1 - t_begin >= policy.min_duration_s) or n * window >= policy.max_iters:
            break
    return Timings(mode="throughput", timer=timer.name, ms=np.asarray(ms), wall_ms=np.asarray(wall),
                   t_start=np.asarray(starts), t_end=np.asarray(ends),
                   requests_per_sample=window, warmup_iters=n_warm, warmup_s=warm_s)


def cpu_wait_ms() -> float:
    """Milliseconds this process's threads have spent runnable but off a core, waiting in the scheduler's run
    queue, summed over its live threads (Linux schedstat, second field, in ns); NaN where /proc does not give it.

    Its change across a round is the time other work on the machine (other processes, or this process's own
    spare threads) kept the round's threads waiting: the direct sign of a contended CPU, which the host sentinel
    can only infer from its own speed (measured here: a 2-core VM with a model on 2 torch threads waited 1.2-1.4 %
    of the time alone, 100 % of it beside a 2-process spinner). A slower machine under a VM (its neighbours, its
    clocks) does not show here: that is the sentinel's part. About 30 µs per thread to read, so it is read per
    round, not per iteration."""
    total, seen = 0, False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return float("nan")
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
            seen = True
        except (OSError, IndexError, ValueError):  # a thread that just ended, or no schedstat in this kernel
            continue
    return total / 1e6 if seen else float("nan")


class HostSentinel:
    """A fixed reference workload whose time follows the host's speed, not the configuration's.

    ``measure()`` returns the median time (microseconds) of one unit over a short block timed by
    ``measure_latency``. On a GPU one unit is one empty kernel launch (``LAUNCHES`` of them on a
    one-element tensor, then a sync): the host's launch cost, which every launch-bound configuration
    pays. On a CPU one unit is ``CPU_ADDS`` element-wise additions of ``CPU_ELEMENTS`` floats, which
    torch splits over all its intra-op threads like an inference does: a core taken by another
    process stalls the whole parallel region, as it stalls the model (a single-threaded loop would
    not see it; measured here: a contended 2-core host slowed a 2-thread model 200x while a Python
    loop did not move). The block lasts about a millisecond on a GPU and 10 ms on a CPU (see
    ``CPU_BLOCK_S``), so timing it before and after every round costs about 1 % of the run.
    """

    LAUNCHES = 20
    CPU_ADDS = 4
    CPU_ELEMENTS = 1 << 18
    POLICY = TimingPolicy(warmup_s=0.0, min_iters=9, min_duration_s=0.0)

    def __init__(self, gpu: bool):
        import torch

        self.gpu = gpu
        self.seen: list[float] = []  # every value measured: the settle gate's "best so far"
        self.waited_s, self._t_first = 0.0, None
        if gpu:
            self.kind = f"{self.LAUNCHES} empty CUDA kernel launches + sync, µs per launch"
            self._x = torch.zeros(1, device="cuda")
            self._sync = torch.cuda.synchronize
        else:
            self.kind = (f"{self.CPU_ADDS} additions of {self.CPU_ELEMENTS} floats on {torch.get_num_threads()} "
                         f"torch threads, µs")
            self._x = torch.zeros(self.CPU_ELEMENTS)
            self._y = torch.ones(self.CPU_ELEMENTS)
            self._add = torch.add

    def _gpu_step(self) -> None:
        x = self._x
        for _ in range(self.LAUNCHES):
            x.add_(0.0)  # one tiny kernel: its cost is the host's launch path
        self._sync()

    def _cpu_step(self) -> None:
        for _ in range(self.CPU_ADDS):
            self._add(self._x, self._y, out=self._x)

    # On a CPU the block runs for at least CPU_BLOCK_S and its *mean* is taken: the scheduler hands out slices
    # of milliseconds, longer than one unit, so a median of units reads "quiet" whenever the block fits between
    # two preemptions (seen here under a periodic all-core hog: medians of 45 µs while the model ran 5-30x
    # slower); the mean over a longer block sees the share of the cores the process actually got, which is
    # what a 20-400 ms inference sees.
    CPU_BLOCK_S = 0.01
    CPU_POLICY = TimingPolicy(warmup_s=0.0, min_iters=9, min_duration_s=CPU_BLOCK_S)

    def measure(self) -> float:
        """Microseconds per unit: the median over a short block of launches on a GPU (µs per launch), the mean
        over a block of at least CPU_BLOCK_S on a CPU (µs per block of additions)."""
        if self.gpu:
            t = measure_latency(self._gpu_step, CpuTimer(), self.POLICY, "sentinel")
            value = float(np.median(t.ms)) * 1e3 / self.LAUNCHES
        else:
            t = measure_latency(self._cpu_step, CpuTimer(), self.CPU_POLICY, "sentinel")
            value = float(np.mean(t.ms)) * 1e3
        self.seen.append(value)
        return value

    # Settle gate (CPU): before a round, wait (in short sleeps, up to SETTLE_MAX_S) while the sentinel says the
    # host is slower than its best so far by more than host_slow, so a periodic hog or a burst from another
    # process does not land in the timed block; every round is still kept whatever the wait found. The total wait
    # of a process is capped at SETTLE_SHARE of its time in rounds (plus SETTLE_ALLOWANCE_S), so a host that
    # stays slow costs little time: there the rounds are measured anyway and the analysis marks them. On a GPU
    # the gate only measures: there the sentinel follows the host's launch path, whose slow phases last tens of
    # seconds (the lent H200: most rounds of a run >10 % above the best), so a wait of a second would not reach a
    # fast phase and would only lengthen the run.
    SETTLE_MAX_S = 1.2     # > one on-period of `make reproducibility HOG=1:2` (1 s)
    SETTLE_STEP_S = 0.05
    SETTLE_MIN_SEEN = 3    # sentinel values before "best so far" means anything (``prime`` takes them)
    SETTLE_SHARE = 0.2
    SETTLE_ALLOWANCE_S = 2.0

    def prime(self, spacing_s: float = 0.05) -> None:
        """A first few values, spaced out, so the gate works from the first round of a process."""
        for i in range(self.SETTLE_MIN_SEEN - min(len(self.seen), self.SETTLE_MIN_SEEN)):
            if i:
                time.sleep(spacing_s)
            self.measure()

    def settle(self, host_slow: float) -> tuple[float, float]:
        """Sentinel before a round, after waiting for the host to be within ``host_slow`` of its best so far:
        returns (sentinel µs, seconds waited)."""
        from ..common.stats import host_slow_limit

        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now
        value = self.measure()
        if self.gpu or len(self.seen) < self.SETTLE_MIN_SEEN:
            return value, 0.0
        limit = host_slow_limit(self.seen, host_slow)
        budget = self.SETTLE_SHARE * (now - self._t_first) + self.SETTLE_ALLOWANCE_S - self.waited_s
        t0 = time.perf_counter()
        if not (value > limit and budget > 0):
            return value, 0.0
        while value > limit and time.perf_counter() - t0 < min(self.SETTLE_MAX_S, budget):
            time.sleep(self.SETTLE_STEP_S)
            value = self.measure()
        waited = time.perf_counter() - t0
        self.waited_s += waited
        return value, waited
