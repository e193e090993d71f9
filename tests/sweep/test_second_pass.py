"""Pass 2 of every backend in one process (lib/sweep/second_pass.py), on the tiny model's measured run."""

from __future__ import annotations

import json

from lib.common.cache import atomic_write_text, read_json
from lib.runner.worker import second_pass_combos
from lib.sweep.bench import combo_dir
from lib.sweep.second_pass import DONE, STARTED, run_second_pass

from conftest import Log, strip_pass2


def test_combos_left_for_the_second_pass(copy_run):
    torch_dir = strip_pass2(copy_run, "torch-fp32")
    ort_dir = combo_dir(copy_run, "ort", "fp32")
    atomic_write_text(ort_dir / "pass1.done", "1\n")
    # ort finished (done.json); torch's pass 1 only; a combo whose pass 1 never finished is left out
    assert second_pass_combos(copy_run, ["ort-fp32", "torch-fp32", "ghost-fp32"]) == ["torch-fp32"]
    (torch_dir / "notebook.failed.json").write_text(json.dumps({"pass": 1}))  # its pass 1 crashed: not run again
    assert second_pass_combos(copy_run, ["torch-fp32"]) == []


def test_a_failing_backend_is_recorded_and_the_next_runs(copy_run):
    """A backend whose pass 2 raises (here one the registry does not know) is recorded as failed in pass 2; the
    next backend's pass 2 runs in the same process and finishes."""
    torch_dir = strip_pass2(copy_run, "torch-fp32")
    (copy_run / "bench" / "nosuch-fp32").mkdir()
    log = Log()
    outcome = run_second_pass(copy_run, ["nosuch-fp32", "torch-fp32"], log=log)
    assert outcome["torch-fp32"] == "ok" and "nosuch" in outcome["nosuch-fp32"]
    failed = read_json(copy_run / "bench" / "nosuch-fp32" / "notebook.failed.json")
    assert failed["pass"] == 2 and "nosuch" in failed["summary"]
    assert "[nosuch/fp32] pass 2 FAILED (recorded; the next backend runs)" in log.text
    assert read_json(torch_dir / DONE)["ok"] == 2 and (torch_dir / STARTED).exists()
    passes = {r["pass"] for pj in (torch_dir / "points").glob("*.json") for r in read_json(pj)["rounds"]}
    assert passes == {1, 2}
