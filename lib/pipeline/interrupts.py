"""How a run step ends on Ctrl-C or ``kill``: every round measured so far stays on disk, the step says what was
kept and how to resume, and the makes above it end as a Ctrl-C ends them.

``terminate`` is the step's SIGINT/SIGTERM handler. The notebook's kernel runs in a session of its own
(jupyter_client starts it so), so the signal does not reach it directly: papermill's clean-up interrupts it, then
stops it. The second pass's worker shares the step's process group and gets the signal itself. Writes in both are
deferred past an interrupt (``lib.common.cache.signals_deferred``); what a kill leaves is removed here once no
child is left, and before a resume (``lib.sweep.bench``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from ..common.cache import read_json, remove_partial_writes
from ..common.errors import RunInterrupted


def rounds_on_disk(run_dir: Path) -> tuple[int, int]:
    """(rounds, points with at least one round) measured so far in the run folder."""
    rounds = points = 0
    for pj in run_dir.glob("bench/*/points/*.json"):
        try:
            n = len(read_json(pj).get("rounds") or [])
        except Exception:  # a half-written or foreign file: counted as nothing
            n = 0
        rounds += n
        points += n > 0
    return rounds, points


def interrupted(run_dir: Path, step: str) -> RunInterrupted:
    """The error that ends an interrupted step: what was kept, and the RUN_ID that resumes."""
    if children_ended():  # no kernel or worker of this step still writes: clear what a killed one left
        remove_partial_writes(run_dir / "bench")
    rounds, points = rounds_on_disk(run_dir)
    what = (f"the {rounds} round{'s' if rounds != 1 else ''} ({points} point{'s' if points != 1 else ''}) "
            f"measured so far {'are' if rounds != 1 else 'is'} kept")
    return RunInterrupted(f"interrupted during {step}: {what} in {run_dir}; to resume, rerun the same command with "
                          f"RUN_ID={run_dir.name} (rounds on disk are not measured again)")


def children_ended(wait_s: float = 5.0) -> bool:
    """Wait up to ``wait_s`` for this process's kernels and workers to end (jupyter_client interrupts a kernel,
    then stops it; the worker gets the signal itself), killing those still alive then. True once none is left."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
        _, alive = psutil.wait_procs(children, timeout=wait_s)
        for proc in alive:
            proc.kill()
        _, alive = psutil.wait_procs(alive, timeout=2.0)
        return not alive
    except Exception:  # psutil missing or a process gone meanwhile: leave the files to the resume's clean-up
        return False


# Set when Ctrl-C or `kill` reaches this process. papermill's clean-up then interrupts the kernel, and when the
# kernel's KeyboardInterrupt reaches papermill first it is reported as a cell error: that must still end the run
# as an interruption, never be recorded as a crashed backend.
SIGNALLED = threading.Event()
HARD_EXIT_AFTER_S = 15.0
SIGNUMS: list[int] = []  # the signal that interrupted this process


def interrupt_makes() -> None:
    """A Ctrl-C that reached this step but not the makes above it (a SIGINT sent to this process alone, or one
    this process saw first): make would report the step's exit 130 as its own error and exit 2. Interrupting
    each make above this process makes them end as a Ctrl-C does (killed by SIGINT: status 130 in a shell).
    Only makes in this process's own process group: those a terminal's Ctrl-C would have reached. A make further
    up in another group (a `make test` whose test started this run in a session of its own, a CI job) is not
    this run's, and interrupting it made a passing `make test` end with status 130."""
    if SIGNUMS[:1] != [signal.SIGINT]:
        return
    try:
        import psutil

        group = os.getpgid(0)
        for proc in psutil.Process().parents():
            if (os.path.basename((proc.cmdline() or [""])[0]) in ("make", "gmake")
                    and os.getpgid(proc.pid) == group):
                os.kill(proc.pid, signal.SIGINT)
    except Exception:  # psutil missing or a parent gone: the exit status is then make's own
        pass


def terminate(signum, frame):
    """The step's SIGINT and SIGTERM handler: ``kill`` is handled like Ctrl-C."""
    if not SIGNALLED.is_set():
        SIGNALLED.set()
        SIGNUMS.append(signum)
        # The exception raised below can land inside papermill's event loop, whose clean-up may then wait
        # forever: if this process is still alive after a grace period, end it (and its kernels) hard.
        # Every measured point is already on disk (atomic writes), so nothing is lost.
        watchdog = threading.Timer(HARD_EXIT_AFTER_S, hard_exit)
        watchdog.daemon = True
        watchdog.start()
    raise KeyboardInterrupt


def quiet_abandoned_tasks() -> None:
    """An interrupt leaves papermill's cell task unawaited; asyncio would print its traceback at exit."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def hard_exit() -> None:
    children_ended(wait_s=0.0)  # kill the kernels and workers at once
    print(f"\ninterrupted: clean-up did not finish within {HARD_EXIT_AFTER_S:.0f} s, stopped hard; every point "
          f"measured so far is on disk (rerun with the same RUN_ID to resume)", file=sys.stderr, flush=True)
    interrupt_makes()
    os._exit(130)


def reraise_if_interrupted(exc: BaseException) -> None:
    if SIGNALLED.is_set() or getattr(exc, "ename", None) == "KeyboardInterrupt":
        raise KeyboardInterrupt from None
