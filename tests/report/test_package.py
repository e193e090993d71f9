"""``lib.report`` and its modules import without side effects.
"""

from __future__ import annotations

def test_importing_the_report_and_compare_modules_changes_nothing_global():
    """No side effects at import: a user's own plots in the same kernel keep their style, the environment its
    variables (the notebooks call plots.use_style() themselves)."""
    import subprocess
    import sys

    code = ("import os, matplotlib; before = dict(matplotlib.rcParams); env = dict(os.environ)\n"
            "import lib.report, lib.report.compare, lib.report.plots\n"
            "changed = [k for k in before if matplotlib.rcParams[k] != before[k]]\n"
            "assert not changed, changed\n"
            "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
            "lib.report.plots.use_style(); assert matplotlib.rcParams['axes.grid'] is True\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
