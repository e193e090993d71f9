"""lib.measure.load and lib.measure.load_model: the batcher's policy, the discrete-event model against M/D/1, and the real load
generator on the CPU over torch and ort engines of the tiny model (closed loop at concurrency 1 against the
single-request timing loop, throughput as concurrency rises, Poisson open loop through the batcher).

The host these run on is shared (two cores, other benchmarks beside): one round of a point can be 100x slower
than the next. Comparisons therefore pair rounds measured back to back and take the median over the pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.backends import Artifacts, EngineSpec, make_engine
from lib.common.errors import ConfigError
from lib.config.inputs import make_inputs
from lib.measure.load import LoadPoint, closed_loop, measure_load, open_loop
from lib.measure.load_model import (BatchPolicy, best_policy, padded_batch, candidate_policies, max_rate_within, mdl_mean_sojourn,
                                    sampled_service, poisson_arrivals, predict, service_curve, simulate, take_batch)
from lib.measure.timing import CpuTimer, TimingPolicy, measure_latency


# --- the batcher's policy --------------------------------------------------------------------------

def test_policy_takes_a_full_batch_at_once():
    assert take_batch([0.0, 0.001, 0.002], now=0.003, policy=BatchPolicy(2, 5.0)) == (2, 0.003)
    assert take_batch([0.0], now=0.0, policy=BatchPolicy(1, 5.0)) == (1, 0.0)


def test_policy_waits_for_the_oldest_requests_deadline_or_the_next_arrival():
    p = BatchPolicy(4, 2.0)
    assert take_batch([0.010], now=0.0105, policy=p) == (0, pytest.approx(0.012))  # wait until 10 ms + 2 ms
    assert take_batch([0.010], now=0.0105, policy=p, next_arrival=0.011) == (0, 0.011)  # decide again then
    assert take_batch([0.010, 0.0111], now=0.012, policy=p) == (2, 0.012)  # deadline reached: take what waits
    assert take_batch([0.010, 0.011], now=0.011, policy=BatchPolicy(4, 0.0)) == (2, 0.011)  # no delay: at once


def test_bad_policy_is_refused():
    with pytest.raises(ConfigError, match="max_batch=0"):
        BatchPolicy(0, 1.0)
    with pytest.raises(ConfigError, match="max_delay_ms=-1"):
        BatchPolicy(2, -1.0)


# --- the model ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.3, 0.6, 0.85])
def test_simulator_matches_md1_mean_time_in_system(rho):
    service_s = 0.002
    rate = rho / service_s
    arrivals = poisson_arrivals(rate, 400.0, seed=3)
    sim = simulate(arrivals, lambda b: service_s * b, BatchPolicy(1, 0.0))
    expected = mdl_mean_sojourn(rate, service_s)
    # 400 s of arrivals (60k-170k requests): the sample mean's error is well under 5 % at rho <= 0.85
    assert sim["latency_ms"].mean() / 1e3 == pytest.approx(expected, rel=0.05)
    assert (sim["start_s"] >= sim["arrival_s"]).all() and (sim["batch"] == 1).all()


def test_two_instances_serve_what_one_cannot():
    s = service_curve({1: 2.0})
    assert predict({1: 2.0}, 800.0, BatchPolicy(1, 0.0))["sustained"] is False  # rho 1.6 on one server
    assert predict({1: 2.0}, 800.0, BatchPolicy(1, 0.0), instances=2)["sustained"] is True
    sim = simulate(poisson_arrivals(800.0, 10.0, seed=4), s, BatchPolicy(1, 0.0), instances=2)
    assert sim["latency_ms"].min() == pytest.approx(2.0)


def test_simulator_batches_under_load_and_respects_the_delay():
    s = service_curve({1: 1.0, 8: 2.0})  # ms: batching is cheap per item
    # a batch of 4 runs padded to the benchmarked 8 (the live batcher does the same): it takes batch 8's time
    assert s(1) == pytest.approx(1e-3) and s(8) == pytest.approx(2e-3) and s(4) == pytest.approx(2e-3)
    assert padded_batch(4, {1: 1.0, 8: 2.0}) == 8 and padded_batch(1, (1, 8)) == 1 and padded_batch(9, (1, 8)) == 9
    assert [p.max_batch for p in candidate_policies({1: 1.0, 8: 2.0, 32: 5.0}, 32)] == [1] + [8] * 4 + [32] * 4
    arrivals = poisson_arrivals(2000.0, 20.0, seed=1)  # twice what batch 1 can serve
    assert predict({1: 1.0, 8: 2.0}, 2000.0, BatchPolicy(1, 0.0))["sustained"] is False
    sim = simulate(arrivals, s, BatchPolicy(8, 1.0))
    assert sim["batch"].mean() > 2 and sim["batch"].max() <= 8
    assert predict({1: 1.0, 8: 2.0}, 2000.0, BatchPolicy(8, 1.0))["sustained"] is True  # batching adds capacity
    light = simulate(poisson_arrivals(50.0, 20.0, seed=2), s, BatchPolicy(8, 1.0))
    # light load: a request waits at most the delay plus one batch in service
    assert (light["start_s"] - light["arrival_s"]).max() <= 1e-3 + 2e-3 + 1e-9
    assert light["latency_ms"].median() == pytest.approx(2.0, abs=0.2)  # alone: waits the 1 ms delay, serves 1 ms


def test_max_rate_within_a_budget_and_the_policy_that_reaches_it():
    curve = {1: 1.0, 8: 2.0}
    no_batch = max_rate_within(curve, BatchPolicy(1, 0.0), budget_ms=10.0)
    assert 500 < no_batch < 1000  # below capacity (1000/s), where M/D/1's tail passes 10 ms
    assert max_rate_within(curve, BatchPolicy(1, 0.0), budget_ms=0.5) == 0.0  # a lone request takes 1 ms
    pol, rate = best_policy(curve, budget_ms=10.0, max_batch=8)
    assert pol.max_batch > 1 and rate > 1.5 * no_batch
    assert BatchPolicy(1, 0.0) in candidate_policies(curve, 8) and len(candidate_policies(curve, 1)) == 1


# --- the real load generator on the CPU ----------------------------------------------------------------

@pytest.fixture(scope="module", params=["torch", "ort"])
def engine(request, tiny, tiny_onnx):
    onnx = {p: r.path for p, r in tiny_onnx.items()}
    e = make_engine(request.param, EngineSpec(model=tiny, precision="fp32", device="cpu",
                                              artifacts=Artifacts(onnx=onnx)))
    e.load()
    yield e
    e.close()


def _shape(tiny):
    return tiny.default_shapes("cpu")[0]


def test_lanes_say_what_concurrency_means(engine):
    lane = engine.lane()
    assert lane.parallel is (engine.backend == "ort") and lane.kind  # torch eager on a CPU: serial


def test_concurrency_one_matches_the_single_request_latency(engine, tiny):
    """The closed loop at N=1 issues what the timing loop issues (one end-to-end request at a time, from the
    measuring thread), so they agree. Nine pairs of rounds, each pair back to back so that a neighbour on the
    shared cores hits both sides of a pair alike; the median over the pairs of their ratio must lie within 1.4x
    either way. The earlier generator, which ran every lane on a worker thread, gave 1.5-2.3x here for torch
    (an OpenMP team of its own costs 0.15 ms per request at batch 8) and fails this test; so does the opposite
    slip seen after it, single requests slowed to ~64 ms once worker threads had run torch kernels.
    (The fastest round of each side is not a fairer figure here: under heavy contention the hand-off's cost
    hides in it.)"""
    x = make_inputs(tiny, 8, _shape(tiny), 0)
    engine.bind(x)
    pol = TimingPolicy(warmup_s=0.05, min_iters=30, min_duration_s=0.15)
    lanes = [engine.lane()]
    ratios, pairs = [], []
    for _ in range(9):
        single = float(np.median(measure_latency(lambda: engine.infer(x), CpuTimer(), pol, "end_to_end").ms))
        rows, _ = closed_loop(engine.lane, x, 1, 0.15, 30, lanes=lanes)
        loaded = float(np.median([r["latency_ms"] for r in rows]))
        ratios.append(loaded / single)
        pairs.append((round(single, 4), round(loaded, 4)))
    assert 1 / 1.4 <= float(np.median(ratios)) <= 1.4, pairs


def test_throughput_does_not_fall_as_concurrency_rises(engine, tiny):
    """Kernel-bound requests (batch 32 of the tiny CNN: 0.4-0.7 ms of convolution each): more in flight must
    not cost throughput. Fifteen repetitions of a round at N = 1, 2 and 4 back to back (the order rotated, so no N
    always runs first); per N the median over the repetitions of (its throughput / that repetition's N = 1)
    must be >= 0.7. It guards the closed loop's accounting (a loop that lost the other lanes' requests fails
    it) and lanes that serialise with overhead. Measured, so that nobody leans on it for more: torch lanes on
    threads with an OpenMP team each, which double each other's latency, kept the throughput at batch 32 and
    pass it; the test of N=1 above is the one that catches the hand-off."""
    x = make_inputs(tiny, 32, _shape(tiny), 0)
    lanes = [engine.lane() for _ in range(4)] if engine.lane().parallel else [engine.lane()]
    ratios, seen = {2: [], 4: []}, []
    for rep in range(15):  # nine were flipped once in about ten runs while a neighbour benchmarked
        thr = {}
        order = (1, 2, 4)[rep % 3:] + (1, 2, 4)[:rep % 3]
        for n in order:
            rows, window = closed_loop(engine.lane, x, n, 0.08, 20, lanes=lanes)
            thr[n] = len(rows) / window
        for n in (2, 4):
            ratios[n].append(thr[n] / thr[1])
        seen.append({n: round(v) for n, v in thr.items()})
    for n, r in ratios.items():
        assert float(np.median(r)) >= 0.7, (n, seen)


def test_closed_loop_records_every_request(engine, tiny):
    x = make_inputs(tiny, 1, _shape(tiny), 0)
    rows, window = closed_loop(engine.lane, x, 3, 0.1, 30)
    f = pd.DataFrame(rows)
    assert len(f) >= 30 and set(f["lane"]) == {0, 1, 2} and (f["latency_ms"] > 0).all()
    assert f["done_s"].max() == pytest.approx(window) and (f["start_s"] >= f["arrival_s"]).all()
    if not engine.lane().parallel:  # 3 clients queue for one instance: each waits for the other two
        assert (f["queue_ms"] > 0).mean() > 0.5


def test_open_loop_poisson_through_the_batcher(engine, tiny):
    shape = _shape(tiny)
    batched = {b: make_inputs(tiny, b, shape, 0) for b in range(1, 5)}
    arrivals = poisson_arrivals(100.0, 0.5, seed=0)
    rows, window, extra = open_loop(engine.lane(), batched, arrivals, BatchPolicy(4, 3.0))
    f = pd.DataFrame(rows)
    assert extra["offered"] == len(arrivals) and extra["served"] == len(f)
    if not extra["overloaded"]:  # a stall of the shared host longer than 4 round lengths stops it early
        assert sorted(f["request"]) == list(range(len(arrivals)))
    assert f["batch"].max() <= 4
    assert (f["queue_ms"] >= 0).all() and (f["latency_ms"] >= (f["done_s"] - f["start_s"]) * 1e3 - 1e-6).all()
    # the delay rule, whatever the host's speed: a batch that is not full starts only once its oldest request
    # has waited the 3 ms (at 100 req/s most batches are a lone request that waited exactly that)
    oldest = f.sort_values("arrival_s").groupby("start_s").agg(n=("batch", "size"), wait=("queue_ms", "max"))
    assert (oldest.loc[oldest["n"] < 4, "wait"] >= 3.0 - 1e-6).all() and (oldest["n"] < 4).any()
    assert (f["run_batch"] == f["batch"]).all()  # inputs of every size: nothing padded


def test_open_loop_runs_only_the_sizes_it_has_inputs_for(engine, tiny):
    """Inputs of batch 1 and 4 only (the benchmarked sizes): a batch of 2 or 3 requests runs at 4, padded; a
    batcher whose largest batch no input holds is refused before any request."""
    shape = _shape(tiny)
    batched = {b: make_inputs(tiny, b, shape, 0) for b in (1, 4)}
    arrivals = poisson_arrivals(2000.0, 0.2, seed=3)  # far above what batch 1 serves: batches form
    rows, _, _ = open_loop(engine.lane(), batched, arrivals, BatchPolicy(4, 2.0))
    f = pd.DataFrame(rows)
    assert set(f["run_batch"]) <= {1, 4} and (f["run_batch"] >= f["batch"]).all()
    assert ((f["batch"] > 1) & (f["batch"] < 4)).any() or (f["batch"] == 4).any()
    assert (f.loc[f["batch"] > 1, "run_batch"] == 4).all()
    with pytest.raises(ValueError, match=r"batch sizes \[1, 4\] cannot hold a batch of 8"):
        open_loop(engine.lane(), batched, arrivals, BatchPolicy(8, 2.0))


def test_measure_load_rounds_and_points(engine, tiny):
    shape = _shape(tiny)
    batched = {b: make_inputs(tiny, b, shape, 0) for b in range(1, 3)}
    points = [LoadPoint("closed", 1), LoadPoint("closed", 2), LoadPoint("open", rate=200.0),
              LoadPoint("open", rate=200.0, policy=BatchPolicy(2, 1.0))]
    requests, table = measure_load(engine, points, batched, rounds=3, round_s=0.05, min_requests=10,
                                   warmup_s=0.02, seed=1)
    assert set(requests["round"]) == {0, 1, 2} and len(table) == 4
    assert (table["rounds"] == 3).all() and (table["n"] >= 10).all()  # open: ~10 Poisson arrivals a round
    assert (table["ci_low_ms"] <= table["median_ms"]).all() and (table["median_ms"] <= table["ci_high_ms"]).all()
    closed = table[table["experiment"] == "closed"]
    assert closed["sustained"].all() and (closed["mean_batch"] == 1).all()
    assert table.iloc[3]["mean_batch"] >= 1 and table["lane_kind"].str.len().min() > 0


def test_sampled_service_keeps_the_benchmarks_spread():
    """Drawn service times follow the raw samples (here: 90 % at 1 ms, 10 % at 5 ms), scaled between batch
    sizes by the median curve; a tail in the samples gives the model a tail a deterministic service lacks."""
    samples = {1: np.array([1.0] * 9 + [5.0]), 4: np.array([2.0] * 9 + [10.0])}
    s = sampled_service({1: 1.0, 4: 2.0}, samples, seed=0)
    draws = np.array([s(1) for _ in range(4000)]) * 1e3
    assert set(np.round(draws, 6)) == {1.0, 5.0} and 0.07 < (draws == 5.0).mean() < 0.13
    assert {round(s(4) * 1e3, 6) for _ in range(200)} == {2.0, 10.0}
    assert {round(s(2) * 1e3, 6) for _ in range(200)} == {2.0, 10.0}  # padded to batch 4: its samples
    flat = predict({1: 1.0, 4: 2.0}, 300.0, BatchPolicy(1, 0.0))
    spread = predict({1: 1.0, 4: 2.0}, 300.0, BatchPolicy(1, 0.0), samples=samples)
    assert spread["p99_ms"] > 2 * flat["p99_ms"]


def test_sustained_rule_of_a_measured_open_loop_point():
    """A round is sustained when it served everything and drained within a tenth of its arrivals' span plus
    twice its median latency: a last request still in service is not a backlog, a queue that grew is."""
    from lib.measure.load import point_rows

    p = LoadPoint("open", rate=100.0)
    f = pd.DataFrame({"experiment": "open", "concurrency": 1, "rate": 100.0, "max_batch": 1, "max_delay_ms": 0.0,
                      "round": 0, "latency_ms": [20.0] * 30, "batch": 1})
    ok = {"window_s": 0.31, "drain_s": 0.02, "overloaded": False, "served": 30, "offered": 30}
    assert point_rows(p, f, [ok], "lane", 0.05)["sustained"]  # 20 ms after a 0.29 s span: its last request
    grew = {**ok, "window_s": 0.45, "drain_s": 0.16}
    assert not point_rows(p, f, [grew], "lane", 0.05)["sustained"]
    assert not point_rows(p, f, [{**ok, "served": 29}], "lane", 0.05)["sustained"]
    assert not point_rows(p, f, [{**ok, "overloaded": True}], "lane", 0.05)["sustained"]
