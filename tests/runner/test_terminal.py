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
