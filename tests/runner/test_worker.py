"""The second pass's worker process (lib/runner/worker.py), on the tiny model's measured run: it runs the pass in
a process of its own and passes its lines through. (A worker that crashes: tests/pipeline/test_faults.py.)"""

from __future__ import annotations

from lib.common.cache import read_json
from lib.runner.terminal import KernelEcho
from lib.runner.worker import run_second_pass_worker
from lib.sweep.second_pass import DONE

from conftest import Log, strip_pass2


def test_the_worker_runs_the_pass_in_a_process_of_its_own(copy_run):
    torch_dir = strip_pass2(copy_run, "torch-fp32")
    echo, log = KernelEcho(), Log()
    assert run_second_pass_worker(copy_run, ["torch-fp32"], echo, log) == []
    assert read_json(torch_dir / DONE)["ok"] == 2
    assert any("[torch/fp32] pass 2 done: 2 of 2 points measured" in ln for ln in echo.lines), list(echo.lines)
    assert (copy_run / "bench" / "second-pass.log").exists()
