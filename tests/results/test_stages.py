"""stages.jsonl: each stage's wall time and outcome, summed per stage group (lib/results/stages.py)."""

from __future__ import annotations

import json
import time

import pytest

from lib.common.errors import RunInterrupted
from lib.results.stages import (STAGES_FILE, fmt_duration, read_stages, record_stage, stage_totals, time_spent,
                                timed_stage)


def test_a_run_without_the_file_has_no_stages(tmp_path):
    assert read_stages(tmp_path).empty and time_spent(tmp_path) is None


def test_stages_are_summed_per_group_in_pipeline_order_with_unfinished_attempts_counted(tmp_path):
    t = time.time()
    rows = [("benchmark pass 1 torch-fp32", 100.0, "ok"), ("export", 40.0, "ok"),
            ("benchmark pass 1 ort-fp32", 50.0, "interrupted"), ("benchmark pass 1 ort-fp32", 60.0, "ok"),
            ("benchmark pass 2", 70.0, "ok"), ("load", 30.0, "failed"), ("analysis", 9.6, "ok")]
    with open(tmp_path / STAGES_FILE, "w") as f:
        for stage, s, status in rows:
            f.write(json.dumps({"stage": stage, "started": t, "ended": t + s, "s": s, "status": status}) + "\n")
        f.write('{"stage": "render", "s": 1\n')  # a line cut short: skipped, not taken as whole
        f.write('["not", "a", "stage"]\n')
    assert len(read_stages(tmp_path)) == len(rows)
    assert stage_totals(read_stages(tmp_path)) == [("export", 40.0), ("benchmark pass 1", 210.0),
                                                   ("benchmark pass 2", 70.0), ("load", 30.0), ("analysis", 9.6)]
    assert time_spent(tmp_path) == ("6 min 00 s: export 40 s, benchmark pass 1 "
                                    "3 min 30 s, benchmark pass 2 1 min 10 s, load 30 s, analysis 10 s (including 2 "
                                    "stage attempts that did not finish)")


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (3725, "1 h 02 min")])
def test_durations_read_as_a_person_writes_them(seconds, text):
    assert fmt_duration(seconds) == text


def test_timed_stage_records_ok_failed_and_interrupted(tmp_path):
    with timed_stage(tmp_path, "export") as outcome:
        time.sleep(0.02)
        outcome["rc"] = 0
    with timed_stage(tmp_path, "analysis") as outcome:
        outcome["rc"] = 1
    with pytest.raises(ValueError), timed_stage(tmp_path, "load"):
        raise ValueError("boom")
    with pytest.raises(RunInterrupted), timed_stage(tmp_path, "benchmark pass 2"):
        raise RunInterrupted("stopped")
    s = read_stages(tmp_path)
    assert list(zip(s["stage"], s["status"])) == [("export", "ok"), ("analysis", "failed"), ("load", "failed"),
                                                  ("benchmark pass 2", "interrupted")]
    assert s["s"].iloc[0] >= 0.02 and (s["ended"] >= s["started"]).all()


def test_a_resumed_run_appends(tmp_path):
    record_stage(tmp_path, "benchmark pass 1 torch-fp32", time.time() - 5, "interrupted")
    record_stage(tmp_path, "benchmark pass 1 torch-fp32", time.time() - 3, "ok")
    (g, v), = stage_totals(read_stages(tmp_path))
    assert g == "benchmark pass 1" and v == pytest.approx(8, abs=0.5)
