"""What a run prints to the terminal besides the notebooks' own log lines: the kernels' printed lines
passed through (never their tables or other display outputs), a live bar of a benchmark pass's rounds
(on a terminal only), and the end-of-run summary read from the run's files (``python -m lib.pipeline.cli summary
RUN_DIR``)."""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class SweepProgress:
    """A live progress bar (tqdm) for one benchmark pass, on a terminal only: rounds on disk in the combo's
    point files against the rounds the pass needs at least (adaptive rounds raise the total as they come).

    It reads the files the sweep writes after every round (``points/*.json``, atomically replaced), so it
    shows what is measured and kept, never a guess; the kernel's own lines are printed above the bar
    (``write``). Off a terminal (CI, a log file, tests) it is silent and ``write`` prints the line."""

    INTERVAL_S = 1.0

    def __init__(self, points_dir: Path | list[Path], total: int, desc: str, stream=None):
        # several folders: the second pass, every backend's in one bar
        self.points_dirs = [Path(d) for d in points_dir] if isinstance(points_dir, (list, tuple)) else [Path(points_dir)]
        self.total, self.desc = int(total), desc
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._stop = None
        self._thread = None

    def rounds_on_disk(self) -> int:
        import json

        n = 0
        for f in (f for d in self.points_dirs for f in d.glob("*.json")):
            try:
                n += len(json.loads(f.read_text()).get("rounds") or [])
            except (OSError, ValueError, AttributeError):
                continue  # being replaced, or corrupt (the sweep names those itself)
        return n

    def __enter__(self):
        isatty = getattr(self.stream, "isatty", None)
        if self.total <= 0 or not (isatty and isatty()):
            return self
        import threading

        from tqdm import tqdm

        self._bar = tqdm(total=self.total, initial=min(self.rounds_on_disk(), self.total), desc=self.desc,
                         unit="round", file=self.stream, leave=False, dynamic_ncols=True,
                         bar_format="{desc}: {n}/{total} rounds {bar} {elapsed}<{remaining}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="benchbook-progress", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.refresh()

    def refresh(self) -> None:
        if self._bar is None:
            return
        n = self.rounds_on_disk()
        if n > self._bar.total:
            self._bar.total = n  # adaptive rounds beyond the minimum
        self._bar.n = n
        self._bar.refresh()

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._bar.close()
            self._bar = None


class KernelEcho:
    """A file-like sink for what a notebook's kernel prints (papermill's ``stdout_file``/``stderr_file``).

    Only the kernel's printed text arrives here: papermill sends display outputs (tables, figures,
    returned values) to its logger, which benchbook does not echo. Each non-blank line goes to the
    terminal as it is, and the last ``lines`` are kept for a failure record."""

    def __init__(self, stream=None, lines: int = 30):
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._partial = ""
        self.progress: SweepProgress | None = None  # when set, lines are printed above its bar

    def write(self, text: str) -> int:
        self._partial += _ANSI.sub("", str(text)).replace("\r\n", "\n").replace("\r", "\n")
        *done, self._partial = self._partial.split("\n")
        for line in done:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        line = line.rstrip()
        if not line.strip():
            return  # papermill hands over each print with its newline: blank lines are noise
        self.lines.append(line)
        if self.progress is not None:
            self.progress.write(line)
            return
        stream = self.stream if self.stream is not None else sys.stderr
        print(line, file=stream, flush=True)

    def flush(self) -> None:
        if self._partial.strip():
            self._emit(self._partial)
        self._partial = ""


def _series(row) -> str:
    return f"{row['backend']}/{row['precision']}"


def _fmt_ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def _load_line(run_dir: Path) -> str | None:
    """The highest arrival rate a configuration sustains within the load stage's p99 budget, as the
    discrete-event model predicts it from measured batch latencies (``load_capacity.parquet``)."""
    import pandas as pd

    path = run_dir / "load_capacity.parquet"
    cap = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    if cap.empty or "max_rate_rps" not in cap:
        return None
    if not (cap["max_rate_rps"] > 0).any():  # the stage ran: that nothing fits is its answer, not silence
        return (f"[done] under load: no configuration the load stage ran sustains any request rate with p99 within "
                f"{cap['budget_ms'].iloc[0]:.3g} ms (the report's Latency under load section)")
    r = cap.sort_values("max_rate_rps", ascending=False).iloc[0]
    policy = str(r["policy"])
    if policy != "no batching" and pd.notna(r.get("max_batch")):
        policy += f", max batch {int(r['max_batch'])}, {r['max_delay_ms']:.3g} ms delay"
    return (f"[done] under load, p99 within {r['budget_ms']:.3g} ms: {_series(r)} sustains up to "
            f"{r['max_rate_rps']:,.0f} req/s ({policy}; {r['source']}, the report's Latency under load section)")


def run_summary(run_dir: Path | str) -> list[str]:
    """A few lines on a finished run, from its ``points.parquet``, ``failures.csv`` and
    ``load_capacity.parquet``: the best configuration per goal (lowest latency at the smallest batch, highest
    throughput, and, where the load stage ran, the highest request rate within its p99 budget), how many
    points were unstable or noisy, how long each stage took (``stages.jsonl``), and where the report is."""
    import pandas as pd

    run_dir = Path(run_dir)
    lines = []
    points = run_dir / "points.parquet"
    p = pd.read_parquet(points) if points.exists() else pd.DataFrame()
    if not p.empty:
        ok = p[p["parity_passed"].fillna(True).astype(bool)] if "parity_passed" in p else p
        parts = []
        lat_mode = "end_to_end" if (ok["mode"] == "end_to_end").any() else "device"
        lat = ok[(ok["mode"] == lat_mode) & (ok["batch"] == ok["batch"].min())].sort_values("median_ms")
        if len(lat):
            r = lat.iloc[0]
            parts.append(f"lowest latency: {_series(r)} at batch {int(r['batch'])}"
                         + (f", shape {r['shape']}" if p["shape"].nunique() > 1 else "")
                         + f", {_fmt_ms(r['median_ms'])} ms median {lat_mode.replace('_', '-')}")
        rate_mode = "throughput" if (ok["mode"] == "throughput").any() else lat_mode
        rate = ok[ok["mode"] == rate_mode].sort_values("items_per_s", ascending=False)
        if len(rate):
            r = rate.iloc[0]
            parts.append(f"highest throughput: {_series(r)} at batch {int(r['batch'])}"
                         + (f", shape {r['shape']}" if p["shape"].nunique() > 1 else "")
                         + f", {r['items_per_s']:,.0f} items/s")
        if parts:
            lines.append("[done] " + "; ".join(parts))
        served = _load_line(run_dir)
        if served:
            lines.append(served)
        flags = []
        for col in ("unstable", "noisy"):
            if col in p:
                flags.append(f"{int(p[col].fillna(False).astype(bool).sum())} {col}")
        failed = run_dir / "failures.csv"
        f = pd.read_csv(failed) if failed.exists() and failed.stat().st_size > 1 else pd.DataFrame()
        n_failed = int((~f["status"].isin(["unavailable", "skipped"])).sum()) if "status" in f else 0
        lines.append(f"[done] {len(p)} measurements (point x mode): " + ", ".join(flags)
                     + (f", {n_failed} failed" if n_failed else "")
                     + " (the report's Stability and Failures sections say which)")
    else:
        lines.append(f"[done] no measurements in {run_dir} (the report's Failures section says why)")
    from ..results.stages import time_spent

    spent = time_spent(run_dir)
    if spent:
        lines.append(f"[done] time: {spent}")
    lines.append(f"report: {run_dir / 'report.html'}")
    return lines
