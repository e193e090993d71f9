"""lib.measure.timing: policy validation, and the measurement loops on a real clock (CpuTimer) with steps that
sleep: warm-up of at least 2 iterations, min_iters AND min_duration, the max_iters cap, throughput
windows, every sample kept raw. No assertion on how fast anything is."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from lib.common.errors import ConfigError
from lib.measure.timing import (MIN_WARMUP_ITERS, CpuTimer, TimingPolicy, Timings, measure_latency, measure_throughput)


# The loop's clock starts just before the first sample's t_start: a preemption in between (a loaded
# machine) makes the recorded span shorter than DURATION by that much.
SLACK = 0.02


class Counter:
    """A step that counts its calls and sleeps ``sleep_s`` (0: returns at once)."""

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)


# --- policy ---------------------------------------------------------------------------------------------
def test_policy_defaults():
    p = TimingPolicy()
    assert (p.warmup_s, p.min_iters, p.min_duration_s) == (0.2, 20, 1.0)
    assert p.max_iters >= p.min_iters and p.throughput_window_s > 0 and p.min_windows >= 1


@pytest.mark.parametrize("kw, name", [
    (dict(warmup_s=-0.1), "WARMUP"), (dict(warmup_s=math.inf), "WARMUP"), (dict(warmup_s=math.nan), "WARMUP"),
    (dict(warmup_s="0.2"), "WARMUP"),
    (dict(min_iters=0), "ITERS"), (dict(min_iters=-3), "ITERS"), (dict(min_iters=2.5), "ITERS"),
    (dict(min_iters="5"), "ITERS"), (dict(min_iters=True), "ITERS"),
    (dict(min_duration_s=-1.0), "DURATION"), (dict(min_duration_s=math.nan), "DURATION"),
    (dict(min_duration_s=math.inf), "DURATION"), (dict(min_duration_s=None), "DURATION"),
    (dict(min_iters=50, max_iters=10), "max_iters"), (dict(max_iters=1e6), "max_iters"),
    (dict(throughput_window_s=0.0), "throughput_window_s"), (dict(throughput_window_s=-1), "throughput_window_s"),
    (dict(min_windows=0), "min_windows"), (dict(min_windows=1.5), "min_windows"),
])
def test_policy_errors_name_the_parameter_and_value(kw, name):
    with pytest.raises(ConfigError) as e:
        TimingPolicy(**kw)
    (value,) = kw.values() if len(kw) == 1 else [kw["max_iters"]]
    assert str(e.value).startswith(f"{name}={value!r} is not valid: expected ")


def test_policy_accepts_zero_warmup_and_duration():
    p = TimingPolicy(warmup_s=0, min_iters=1, min_duration_s=0, max_iters=1)
    assert p.min_iters == p.max_iters == 1


# --- latency --------------------------------------------------------------------------------------------
def _check_raw(t: Timings, n_timed: int):
    assert len(t.ms) == len(t.wall_ms) == len(t.t_start) == len(t.t_end) == n_timed
    assert np.all(t.t_end >= t.t_start) and np.all(np.diff(t.t_start) > 0)
    assert np.all(t.t_start[1:] >= t.t_end[:-1])  # one request at a time: no overlap
    assert t.window == (float(t.t_start[0]), float(t.t_end[-1]))


def test_min_iters_bound_when_duration_is_zero():
    step = Counter()
    t = measure_latency(step, CpuTimer(), TimingPolicy(warmup_s=0, min_iters=37, min_duration_s=0), "device")
    assert len(t.ms) == 37  # stops exactly at min_iters
    assert t.warmup_iters == MIN_WARMUP_ITERS == 2  # warm-up: at least 2 iterations even with WARMUP=0
    assert step.calls == t.warmup_iters + 37
    assert t.mode == "device" and t.timer == "perf_counter" and t.requests_per_sample == 1
    _check_raw(t, 37)


def test_min_duration_bound_when_iters_are_few():
    step = Counter(0.002)
    policy = TimingPolicy(warmup_s=0, min_iters=3, min_duration_s=0.12)
    t = measure_latency(step, CpuTimer(), policy, "end_to_end")
    n = len(t.ms)
    assert n > 3
    span = t.t_end - t.t_start[0]
    assert span[-1] >= 0.12 - SLACK  # ran for at least DURATION ...
    assert span[-2] < 0.12  # ... and stopped at the first iteration that reached it
    assert step.calls == t.warmup_iters + n
    assert np.all(t.ms >= 2.0 - 0.05)  # each sample times the 2 ms step (perf_counter, ms)
    _check_raw(t, n)


def test_both_bounds_must_hold():
    """ITERS reached early does not stop the loop before DURATION, and DURATION reached early not before ITERS."""
    step = Counter(0.001)
    t = measure_latency(step, CpuTimer(), TimingPolicy(warmup_s=0, min_iters=5, min_duration_s=0.06), "device")
    assert len(t.ms) >= 5 and t.t_end[-1] - t.t_start[0] >= 0.06 - SLACK
    step = Counter(0.004)
    t = measure_latency(step, CpuTimer(), TimingPolicy(warmup_s=0, min_iters=30, min_duration_s=0.01), "device")
    assert len(t.ms) == 30


def test_max_iters_caps_the_loop():
    step = Counter()
    policy = TimingPolicy(warmup_s=0, min_iters=5, min_duration_s=3600, max_iters=64)
    t = measure_latency(step, CpuTimer(), policy, "device")
    assert len(t.ms) == 64 and step.calls == t.warmup_iters + 64


def test_warmup_runs_for_warmup_seconds():
    step = Counter(0.005)
    t = measure_latency(step, CpuTimer(), TimingPolicy(warmup_s=0.08, min_iters=2, min_duration_s=0), "device")
    assert t.warmup_s >= 0.08 and t.warmup_iters >= 2
    assert t.warmup_iters <= 0.08 / 0.005 + 1  # stopped once WARMUP had passed (each call sleeps >= 5 ms)
    assert step.calls == t.warmup_iters + len(t.ms)


class RecordingTimer(CpuTimer):
    """CpuTimer that records the order of calls, to check the loop's contract with a device timer."""

    name = "recording"

    def __init__(self, log):
        self.log = log

    def start(self):
        self.log.append("start")
        super().start()

    def stop(self):
        self.log.append("stop")
        super().stop()

    def sync(self):
        self.log.append("sync")

    def elapsed_ms(self):
        self.log.append("elapsed")
        return super().elapsed_ms()


def test_each_timed_iteration_is_start_step_stop_sync_then_read():
    log = []

    def step():
        log.append("step")

    t = measure_latency(step, RecordingTimer(log), TimingPolicy(warmup_s=0, min_iters=4, min_duration_s=0), "device")
    assert t.timer == "recording"
    warm = ["step", "stop", "sync"] * t.warmup_iters  # warm-up waits for each request too
    assert log == warm + ["start", "step", "stop", "sync", "elapsed"] * 4


# --- throughput -----------------------------------------------------------------------------------------
def test_throughput_windows():
    step = Counter(0.001)
    policy = TimingPolicy(warmup_s=0, min_iters=1, min_duration_s=0, throughput_window_s=0.01, min_windows=4)
    t = measure_throughput(step, CpuTimer(), policy, est_ms=1.0)
    assert t.mode == "throughput" and t.requests_per_sample == 10  # 10 ms window / 1 ms per request
    assert len(t.ms) == 4
    assert step.calls == t.warmup_iters + 4 * 10
    assert np.all(t.ms >= 1.0 - 0.05)  # per request: each sleeps >= 1 ms
    window_s = t.t_end - t.t_start
    np.testing.assert_allclose(t.wall_ms, window_s * 1e3 / 10)
    _check_raw(t, 4)


def test_throughput_runs_for_duration():
    step = Counter(0.001)
    policy = TimingPolicy(warmup_s=0, min_iters=1, min_duration_s=0.1, throughput_window_s=0.005, min_windows=2)
    t = measure_throughput(step, CpuTimer(), policy, est_ms=1.0)
    assert len(t.ms) > 2 and t.t_end[-1] - t.t_start[0] >= 0.1 - SLACK
    assert step.calls == t.warmup_iters + len(t.ms) * t.requests_per_sample


@pytest.mark.parametrize("est_ms, window", [(1e-9, 1000), (0.0, 1000), (200.0, 1), (2.5, 20)])
def test_throughput_window_size_is_clamped(est_ms, window):
    step = Counter()
    policy = TimingPolicy(warmup_s=0, min_iters=1, min_duration_s=0, throughput_window_s=0.05, min_windows=1)
    t = measure_throughput(step, CpuTimer(), policy, est_ms=est_ms)
    assert t.requests_per_sample == window and len(t.ms) == 1


def test_throughput_max_iters_counts_requests():
    step = Counter()
    policy = TimingPolicy(warmup_s=0, min_iters=1, min_duration_s=3600, max_iters=100, throughput_window_s=0.01,
                          min_windows=1)
    t = measure_throughput(step, CpuTimer(), policy, est_ms=1.0)  # 10 requests per window
    assert len(t.ms) == 10 and step.calls == t.warmup_iters + 100


def test_cpu_timer():
    timer = CpuTimer()
    timer.start()
    time.sleep(0.01)
    timer.stop()
    timer.sync()
    assert 10.0 - 0.05 <= timer.elapsed_ms()


# --- the settle gate (HostSentinel.settle) -------------------------------------------------------------
def test_settle_does_not_wait_on_a_host_at_its_best():
    from lib.measure.timing import HostSentinel

    s = HostSentinel(gpu=False)
    s.seen.extend([1e9] * HostSentinel.SETTLE_MIN_SEEN)  # a "best so far" no block can exceed: never slow
    value, waited = s.settle(host_slow=0.10)
    assert waited == 0.0 and value > 0 and len(s.seen) == HostSentinel.SETTLE_MIN_SEEN + 1


def test_settle_waits_while_slow_but_never_past_its_caps():
    from lib.measure.timing import HostSentinel

    s = HostSentinel(gpu=False)
    s.measure()  # torch's thread pool starts here, not inside the timed waits
    s.seen.extend([1e-6] * 100)  # a best no real block reaches: the host always looks slow
    # One sentinel block can overrun a cap (a contended host stalls it): allow one block's time
    slack = 1.0
    t0 = time.perf_counter()
    waits = [s.settle(host_slow=0.10)[1] for _ in range(8)]
    elapsed = time.perf_counter() - t0
    assert waits[0] >= HostSentinel.SETTLE_MAX_S - 0.01  # it did wait: the host looked slow
    assert all(w <= HostSentinel.SETTLE_MAX_S + slack for w in waits)
    assert sum(waits) == pytest.approx(s.waited_s)
    # without the process's budget, 8 rounds would wait 8 x 1.2 s
    assert sum(waits) <= HostSentinel.SETTLE_ALLOWANCE_S + HostSentinel.SETTLE_SHARE * elapsed + slack


def test_settle_needs_a_baseline_before_it_waits():
    from lib.measure.timing import HostSentinel

    s = HostSentinel(gpu=False)
    for _ in range(HostSentinel.SETTLE_MIN_SEEN - 1):
        assert s.settle(host_slow=-0.99)[1] == 0.0  # a threshold every block exceeds, but too few values yet


def test_prime_tops_the_baseline_up_to_what_the_gate_needs():
    from lib.measure.timing import HostSentinel

    s = HostSentinel(gpu=False)
    s.seen.append(50.0)  # one value from an earlier pass
    s.prime(spacing_s=0.0)
    assert len(s.seen) == HostSentinel.SETTLE_MIN_SEEN and all(v > 0 for v in s.seen)
    s.prime(spacing_s=0.0)
    assert len(s.seen) == HostSentinel.SETTLE_MIN_SEEN  # nothing more once it has them


def _spin_for(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_wait_counts_the_time_other_processes_keep_this_one_off_a_core():
    """Real processes, no stand-in: with a spinner on every core, a busy thread here spends a large share of its
    time runnable but waiting in the run queue; the counter never goes back."""
    import multiprocessing as mp

    from lib.measure.timing import cpu_wait_ms

    def busy_share():  # this thread's wait in the run queue per ms, over 1 s of spinning
        w0, t0 = cpu_wait_ms(), time.perf_counter()
        _spin_for(1.0)
        return (cpu_wait_ms() - w0) / ((time.perf_counter() - t0) * 1e3)

    before = cpu_wait_ms()
    if before != before:
        pytest.skip("this kernel has no /proc/self/task/*/schedstat")
    alone = busy_share()
    spinners = [mp.get_context("spawn").Process(target=_spin_for, args=(3.0,), daemon=True)
                for _ in range(os.cpu_count() or 1)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0)  # the spinners are up (a spawned interpreter takes a moment)
        share = busy_share()
    finally:
        for p in spinners:
            p.join(timeout=10)
    assert cpu_wait_ms() >= before
    # n + 1 busy threads on n cores: this one waits about 1 / (n + 1) of the time or more; a fifth of that is
    # far above what a thread alone on a core waits (1-2 % measured on the 2-core CI machine)
    assert share > 0.2 / ((os.cpu_count() or 1) + 1), share
    # and it is the wait, not the time on a core (which a spinning thread has more of alone than beside others)
    assert share > 3 * alone, (share, alone)
