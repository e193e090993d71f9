"""Section "Method": how the numbers were measured, and the rule for calling a difference (shared with the
compare page).
"""

from __future__ import annotations

from ..results.run import Run
from ..results.stages import time_spent
from ..common.stats import SAME_MARGIN
from .markup import md
from .points import MODE_LABELS, tail_label
from .stability import outlier_note, sentinel_kind


def ratio_rule(subject: str, neither: str = "no clear difference") -> str:
    """How a ratio of two medians is called (``lib.common.stats.verdict``), in words; the report's method and the
    compare page's both say it this way."""
    return (f"{subject} use Welch's t on both sides' log round medians and are called only beyond "
            f"±{SAME_MARGIN:.0%}; anything else is *{neither}* (inconclusive).")


def method_markdown(run: Run) -> str:
    p = run.params
    timers = sorted({e.get("timer") for e in run.engines.values()} - {None})
    return "\n".join([
        "How these numbers were measured:",
        f"- Every backend is timed by one module (`lib/measure/timing.py`) with timer(s): {md(', '.join(timers) or 'n/a')} "
        "(`cuda_event` = CUDA events on the engine's stream; `perf_counter` = host clock).",
        f"- **Rounds**: every point and mode is measured in at least {p.get('rounds', 1)} rounds. A round is a "
        f"same-shape warm-up (the point's first: {p['warmup']} s and ≥ 2 iterations; after a switch from another "
        f"point: 0.03 s) and then at least {p['iters']} iterations and {p['duration']} s. Each round visits every "
        "point and mode once, in a seeded random order; the backends run in two passes (pass 1 in plan order, "
        "a process per backend; pass 2 in reverse, every backend in one process), half of the minimum rounds in "
        f"each, so every backend is measured at two moments of the run. After the minimum, a point gets more rounds (pass 2) until its 95% interval is within "
        f"±{float(p.get('ci_target', 0.01)):.0%} of its median or it reached {p.get('point_cap', '?')} timed "
        "seconds. Every timed iteration is kept raw (`iterations.parquet`, `rounds.parquet`).",
        "- **Figures and intervals**: a point's figure is the median over all its raw samples. Its 95% interval "
        "comes from its round medians (Student t on their logarithms; where the two passes disagree more than the "
        "rounds within them, the passes' spread is used), never from resampling single iterations, which share "
        "the host's state of their round. " + ratio_rule("Speedups"),
        f"- **Host sentinel**: before every round, {sentinel_kind(run)} is timed; a round whose sentinel is more "
        f"than {float(p.get('host_slow', 0.10)):.0%} above the run's best (5th percentile) ran on a slow host.",
        *[f"- **{k}**: {v}." for k, v in MODE_LABELS.items()],
        "- On a CPU nothing is asynchronous: the throughput figure is batch / median device-resident latency.",
        f"- {outlier_note(run)}",
        f"- Decisions (summary, budget) use the tail ({tail_label(run)}) over *every* sample and leave out points "
        "that failed parity. Speedups are median(torch/fp32) / median(configuration) at the same batch, shape and "
        "mode; '=' marks one within the noise.",
        "- Resource figures of a point are over its rounds' timed windows (after the first 0.25 s of a window, or "
        "its second half when shorter: NVML averages utilisation over its last sample period); memory peaks are "
        "from the point's characterisation, when it was bound alone.",
        "- Resources: psutil (process RSS, CPU %) and NVML (utilisation, memory, clocks, temperature, power, "
        "throttle reasons) sampled in a background thread at ~10 Hz.",
        "- Load the raw data: `import lib; run = lib.load_run('<this run folder>')` → `run.iterations`, "
        "`run.samples`, `run.points`, `run.failures`.",
        *_time_spent(run),
    ])


def _time_spent(run: Run) -> list[str]:
    """The stages' wall times (``stages.jsonl``) up to this analysis, which is still running when this is read."""
    spent = time_spent(run.path)
    if not spent:
        return []
    return [f"- **Time spent** on this run before its analysis: {md(spent)}. A cached export runs no stage; a "
            "resumed run counts both commands' stages, not the time between them (`stages.jsonl`)."]
