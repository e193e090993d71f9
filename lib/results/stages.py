"""How long each stage of a run took: ``<run>/stages.jsonl``, one line per stage the Makefile ran.

``make report`` runs its stages through ``lib.pipeline.cli`` (export, each backend's pass 1, pass 2, load,
analysis, render); each appends one JSON line here when it ends, finished or not: ``stage``, ``started``
and ``ended`` (Unix seconds), ``s`` (wall seconds) and ``status`` (``ok``, ``failed``, ``interrupted``). A
resumed run appends to the same file, so the sum of its stages is the time spent on it, without the gap
between the two commands. A cached export runs no stage and has no line. Data, never code: a line that
cannot be read is skipped.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

__all__ = ["STAGES_FILE", "record_stage", "timed_stage", "read_stages", "stage_totals", "fmt_duration", "time_spent"]

STAGES_FILE = "stages.jsonl"

# The groups a reader cares about, in pipeline order: every backend's pass 1 is one "benchmark pass 1".
_GROUPS = (("export", "export"), ("benchmark pass 1+2", "benchmark (both passes)"), ("benchmark pass 1", "benchmark pass 1"), ("benchmark pass 2", "benchmark pass 2"),
           ("load", "load"), ("analysis", "analysis"), ("render", "render"))


def record_stage(run_dir: Path | str, stage: str, started: float, status: str) -> None:
    """Append the stage that began at ``started`` (``time.time()``) and ends now. One ``write`` of one short
    line in append mode: stages run one at a time (the Makefile is .NOTPARALLEL), and a killed process
    leaves at worst no line, never half of one that a reader would take as whole."""
    ended = time.time()
    line = json.dumps({"stage": stage, "started": round(started, 3), "ended": round(ended, 3),
                       "s": round(ended - started, 3), "status": status}) + "\n"
    path = Path(run_dir) / STAGES_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


@contextmanager
def timed_stage(run_dir: Path | str, stage: str):
    """Time the block as ``stage``: ``ok`` when it ends with ``outcome["rc"]`` 0 (or unset), ``failed`` on another
    exit code or an exception, ``interrupted`` on Ctrl-C / SIGTERM (``RunInterrupted``). The record is written
    on the way out, whatever happened; a disk that refuses it costs the record, not the stage."""
    from ..common.errors import RunInterrupted

    outcome: dict = {}
    started, status = time.time(), "failed"
    try:
        yield outcome
        status = "ok" if outcome.get("rc", 0) == 0 else "failed"
    except (RunInterrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        try:
            record_stage(run_dir, stage, started, status)
        except OSError:
            pass


def read_stages(run_dir: Path | str) -> pd.DataFrame:
    """The stages of a run, in the order they ended (columns: stage, started, ended, s, status); empty for a
    run made before this file existed."""
    path = Path(run_dir) / STAGES_FILE
    rows = []
    if path.exists():
        for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(text)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("stage"), str) and isinstance(row.get("s"), (int, float)):
                rows.append(row)
    return pd.DataFrame(rows, columns=["stage", "started", "ended", "s", "status"])


def _group(stage: str) -> str:
    return next((g for prefix, g in _GROUPS if stage.startswith(prefix)), stage)


def stage_totals(stages: pd.DataFrame) -> list[tuple[str, float]]:
    """[(group, seconds)] in pipeline order, every attempt counted (a failed or interrupted stage took its
    time too)."""
    if stages.empty:
        return []
    s = stages.assign(group=stages["stage"].map(_group)).groupby("group", sort=False)["s"].sum()
    order = [g for _, g in _GROUPS]
    return sorted(((str(g), float(v)) for g, v in s.items()),
                  key=lambda gv: order.index(gv[0]) if gv[0] in order else len(order))


def fmt_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def time_spent(run_dir: Path | str) -> str | None:
    """'6 min 02 s: export 41 s, benchmark pass 1 3 min 10 s, ...' over the stages recorded so far, with how
    many were attempts that did not finish and whether the run was resumed; None without a record."""
    stages = read_stages(run_dir)
    totals = stage_totals(stages)
    if not totals:
        return None
    text = (f"{fmt_duration(sum(v for _, v in totals))}: "
            + ", ".join(f"{g} {fmt_duration(v)}" for g, v in totals))
    unfinished = int((stages["status"] != "ok").sum())
    if unfinished:
        text += f" (including {unfinished} stage attempt{'s' if unfinished > 1 else ''} that did not finish)"
    return text
