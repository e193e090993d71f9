"""A notebook run by papermill in a kernel of its own: the kernel's stderr goes to a ``*kernel.log`` beside the
executed notebook, its printed lines reach the terminal, and a kernel that crashes (segfault, abort, killed) is
described from its exit signal, the Python stack that ``faulthandler`` wrote into that log, and the last lines
the notebook printed.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from pathlib import Path

from .terminal import KernelEcho

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = {"export": "00_export.ipynb", "benchmark": "10_benchmark.ipynb", "load": "15_load.ipynb",
             "analysis": "20_analysis.ipynb",
             "compare": "30_compare.ipynb"}
RECORD_CHARS = 1500  # a failure record's length: the report shows the last 1500 characters (lib/results/run.py)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_QUIET = ("Executing", "Input Notebook", "Output Notebook", "Working directory", "Black is not", "Unable to parse",
          "Executing Cell", "Ending Cell")


class Kernel:
    """What is known about one notebook's kernel: its log file, its process and what it printed."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process = None
        self.ipc_prefix = ""
        self.tail = KernelEcho()  # what the kernel prints reaches the terminal through it; it keeps the last lines

    def manager_class(self):
        """A kernel manager that sends the kernel's stderr to ``log_path`` and remembers the process."""
        from jupyter_client.manager import AsyncKernelManager

        kernel = self

        class _LoggedKernelManager(AsyncKernelManager):
            def __init__(self, **kw):
                super().__init__(**kw)
                # Unix sockets named after the kernel's connection file: no TCP port to race other kernels
                # for ("Address already in use" when many kernels start at once), nothing on the network.
                if os.name == "posix":
                    import tempfile
                    import uuid

                    self.transport = "ipc"  # sockets <ip>-1 .. <ip>-5, removed when the kernel is shut down
                    self.ip = os.path.join(tempfile.gettempdir(), f"benchbook-kernel-{uuid.uuid4().hex[:12]}")
                    kernel.ipc_prefix = self.ip

            async def start_kernel(self, **kw):
                log = open(kernel.log_path, "wb")  # the child keeps its own copy of the descriptor
                try:
                    kw.setdefault("stdout", log)
                    kw.setdefault("stderr", log)
                    await super().start_kernel(**kw)
                    kernel.process = getattr(self.provisioner, "process", None)
                    if kernel.process is not None:
                        log.write(f"[benchbook] kernel pid {kernel.process.pid}\n".encode())
                finally:
                    log.close()

        return _LoggedKernelManager

    def remove_sockets(self) -> None:
        """The kernel's Unix sockets (jupyter_client leaves them behind when the kernel died)."""
        if self.ipc_prefix:
            for i in range(1, 6):
                Path(f"{self.ipc_prefix}-{i}").unlink(missing_ok=True)

    def exit_status(self) -> int | None:
        try:
            return self.process.wait(timeout=5) if self.process is not None else None
        except Exception:
            return None

    def fault_report(self) -> list[str]:
        """The Python stack faulthandler wrote when the kernel crashed (most recent call first)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        start = text.rfind("Fatal Python error")
        if start < 0:
            return []
        lines = text[start:].splitlines()
        frames = [ln.strip() for ln in lines if ln.startswith("  File ")]
        return [lines[0].strip(), *frames[:12]] + ([f"... ({len(frames) - 12} more frames)"] if len(frames) > 12 else [])


def _signal_name(status: int | None) -> str:
    if status is None or status >= 0:
        return f"exit status {status}" if status is not None else "exit status unknown"
    try:
        sig = signal.Signals(-status)
        return f"{sig.name}: {signal.strsignal(sig) or ''}".rstrip(": ")
    except ValueError:
        return f"signal {-status}"


def describe_failure(exc: BaseException, kernel: Kernel) -> tuple[str, str]:
    """(one line for the terminal, the error record) of a notebook that raised or whose kernel died."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # an exception raised in a cell: its traceback, without colour codes
        tb = [ln.rstrip() for ln in _ANSI.sub("", "\n".join(getattr(exc, "traceback", None) or [])).splitlines()]
        tb = [ln for ln in tb if ln.strip() and not set(ln.strip()) <= {"-"}]
        summary = f"{ename}: {' '.join(str(evalue).split())}"
        body = "\n".join(tb[-25:])
        if not body.rstrip().endswith(str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ename):
            body += "\n" + summary
        return summary, body[-RECORD_CHARS:]
    dead = type(exc).__name__ == "DeadKernelError" or "kernel died" in str(exc).lower()
    if not dead:
        summary = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        record = summary[:600] + "\nlast output:\n" + "\n".join(ln[:160] for ln in list(kernel.tail.lines)[-5:])
        return summary[:500], record[:RECORD_CHARS]
    return describe_crash(kernel)


def describe_crash(kernel: Kernel, what: str = "kernel") -> tuple[str, str]:
    """(one line, the error record) of a process that died (``what``: a notebook's kernel, or another process
    described the same way): its exit signal, faulthandler's stack from its log, its last printed lines."""
    status = kernel.exit_status()
    how = _signal_name(status)
    if status == -signal.SIGKILL:
        how += ", killed from outside: out of host memory? the OOM killer sends SIGKILL"
    fault = kernel.fault_report()  # [fatal error line, frames most recent first]
    frames = [m.groups() for m in (re.match(r'File "(.+)", line (\d+) in (.+)', ln) for ln in fault) if m]
    # frames in user or benchbook code, not in Python's library or an installed package
    ours = [f for f in frames if "site-packages" not in f[0] and "/lib/python3" not in f[0] and "<" not in f[0]]
    where = "{} line {} in {}".format(*(ours or frames)[0]) if frames else ""
    summary = f"{what} crashed ({how})" + (f" at {where}" if where else "")
    shown = ([frames[0]] if frames and frames[0] not in ours else []) + ours  # innermost first
    stack = [f'File "{f}", line {n} in {fn}'[:160] for f, n, fn in reversed(shown[:8])]
    tail = [ln[:160] for ln in list(kernel.tail.lines)[-10:] if not ln.startswith("Kernel died")]
    # Like a Python traceback, the record ends with what matters most (the report shows its tail):
    # the last output, then the crashing stack (most recent call last), then the summary line.
    while True:
        parts = (["last output:", *tail] if tail else []) + [f"{what} log: {kernel.log_path}"]
        if fault:
            parts += ["crash report (faulthandler; most recent call last):", *stack, fault[0]]
        parts.append(summary)
        record = "\n".join(parts)
        if len(record) <= RECORD_CHARS or not (tail or len(stack) > 2):
            return summary, record[-RECORD_CHARS:]
        if tail:
            tail.pop(0)
        else:
            stack.pop(0)


def _kernel_env() -> None:
    """Kernels run with notebooks/ as their folder: they import ``lib`` through PYTHONPATH."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])


def run_papermill(name: str, output: Path, parameters: dict, kernel: Kernel) -> None:
    import papermill

    # papermill's own log lines (which notebook, which cell) are noise here; its warnings are not.
    logger = logging.getLogger("papermill")
    if not any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(lambda r: not r.getMessage().startswith(_QUIET))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    # What the kernel prints (progress lines) reaches the terminal line by line; its display outputs
    # (tables, figures) stay in the executed notebook: log_output=False, the printed streams go to stdout_file.
    _kernel_env()
    output.parent.mkdir(parents=True, exist_ok=True)
    kernel.log_path.parent.mkdir(parents=True, exist_ok=True)
    # faulthandler writes the Python stack of a crash (segfault, abort) into the kernel's log.
    fault = f"__import__('faulthandler').enable(open({str(kernel.log_path)!r}, 'a'), all_threads=False)"
    try:
        papermill.execute_notebook(str(ROOT / "notebooks" / NOTEBOOKS[name]), str(output), parameters=parameters,
                                   kernel_name="python3", log_output=False, progress_bar=False,
                                   stdout_file=kernel.tail, stderr_file=kernel.tail,
                                   cwd=str(ROOT / "notebooks"), request_save_on_cell_execute=True,
                                   kernel_manager_class=kernel.manager_class(),
                                   extra_arguments=[f"--IPKernelApp.exec_lines={fault}"])
    finally:
        kernel.tail.flush()
        kernel.remove_sockets()
