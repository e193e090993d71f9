"""``lib.report.latency``: the figures vs batch size.
"""

from __future__ import annotations

from lib.report import latency


def test_parity_failed_points_are_marked_in_the_plots(gpu_run):
    """The fake run's torch/fp16 batch 1 failed parity: the latency plot crosses it out and says so."""
    import matplotlib.pyplot as plt

    fig = latency.plot_latency_vs_batch(gpu_run, "device")
    labels = [t.get_text() for lg in fig.legends for t in lg.get_texts()]  # one legend, below the panels
    assert "parity failed" in labels
    crosses = [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [1]
    plt.close("all")
