"""lib.runner.terminal: the live progress bar of a benchmark pass reads the rounds the sweep wrote, shows only on a
terminal, and the kernel's lines still reach the terminal (above the bar)."""

from __future__ import annotations

import io
import json
import time

from lib.runner.terminal import KernelEcho, SweepProgress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _point(folder, name, rounds):
    (folder / f"{name}.json").write_text(json.dumps({"status": "ok", "rounds": [{"round": i} for i in range(rounds)]}))


def test_the_bar_counts_the_rounds_on_disk_and_grows_with_adaptive_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(SweepProgress, "INTERVAL_S", 0.05)
    _point(tmp_path, "bs1_32x32", 2)
    (tmp_path / "bs4_32x32.json").write_bytes(b"\x00 garbage")  # a corrupt file is skipped, not fatal
    out = _Tty()
    with SweepProgress(tmp_path, total=8, desc="torch/fp32 pass 2", stream=out) as bar:
        assert bar.rounds_on_disk() == 2
        _point(tmp_path, "bs8_32x32", 4)
        time.sleep(0.3)  # the poller reads the files again
        assert "torch/fp32 pass 2: 6/8 rounds" in out.getvalue()
        _point(tmp_path, "bs16_32x32", 5)  # adaptive rounds beyond the minimum: the total follows
        bar.refresh()
        assert "11/11 rounds" in out.getvalue()


def test_kernel_lines_print_above_the_bar_and_plainly_off_a_terminal(tmp_path):
    out = _Tty()
    echo = KernelEcho(stream=out)
    with SweepProgress(tmp_path, total=4, desc="ort/fp32 pass 1", stream=out) as bar:
        echo.progress = bar
        echo.write("[ort/fp32] pass 1 round 1: 4 measurements in 1.3 s\n")
    assert "[ort/fp32] pass 1 round 1: 4 measurements in 1.3 s\n" in out.getvalue()
    assert "0/4 rounds" in out.getvalue()

    plain = io.StringIO()  # not a terminal: no bar at all, lines as they are
    echo = KernelEcho(stream=plain)
    with SweepProgress(tmp_path, total=4, desc="ort/fp32 pass 1", stream=plain) as bar:
        echo.progress = bar
        echo.write("[ort/fp32] pass 1 done\n")
    assert plain.getvalue() == "[ort/fp32] pass 1 done\n"


def test_run_summary_names_the_best_per_goal_and_the_rate_under_load(tmp_path):
    import pandas as pd

    from lib.runner.terminal import run_summary

    rows = [dict(backend=b, precision="fp32", batch=bs, shape="static", mode=m, median_ms=ms, items_per_s=bs * 1e3 / ms,
                 parity_passed=True, unstable=False, noisy=b == "torch")
            for b, k in (("torch", 2.0), ("ort", 1.0)) for bs in (1, 8) for m in ("end_to_end", "throughput")
            for ms in [k * (1 + bs / 4)]]
    pd.DataFrame(rows).to_parquet(tmp_path / "points.parquet")
    lines = run_summary(tmp_path)
    assert lines[0].startswith("[done] lowest latency: ort/fp32 at batch 1, 1.25 ms")
    assert len(lines) == 3 and "4 noisy" in lines[1] and lines[-1] == f"report: {tmp_path / 'report.html'}"
    pd.DataFrame([dict(backend="ort", precision="fp32", shape="static", policy=p, max_batch=mb, max_delay_ms=d,
                       max_rate_rps=r, budget_ms=10.0, source="predicted")
                  for p, mb, d, r in (("no batching", 1, 0.0, 700.0), ("measured batcher", 8, 2.0, 2400.0))]
                 ).to_parquet(tmp_path / "load_capacity.parquet")
    lines = run_summary(tmp_path)
    assert lines[1] == ("[done] under load, p99 within 10 ms: ort/fp32 sustains up to 2,400 req/s (measured batcher, "
                        "max batch 8, 2 ms delay; predicted, the report's Latency under load section)")
    pd.DataFrame([dict(backend="ort", precision="fp32", shape="static", policy="no batching", max_batch=1,
                       max_delay_ms=0.0, max_rate_rps=0.0, budget_ms=10.0, source="predicted")]
                 ).to_parquet(tmp_path / "load_capacity.parquet")
    assert run_summary(tmp_path)[1] == ("[done] under load: no configuration the load stage ran sustains any request "
                                        "rate with p99 within 10 ms (the report's Latency under load section)")
