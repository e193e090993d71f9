"""Sections "Results as data" and "Notebooks": the report's tables written as CSV/Parquet into the run
folder, and the files a reader finds there (named, not linked: a mailed report carries none of them).
"""

from __future__ import annotations

import pandas as pd

from ..results.run import Run
from .energy import energy_table
from .markup import code, md
from .measurements import summary_table
from .parity import parity_table


def write_tables(run: Run, sp: pd.DataFrame | None = None, eff: pd.DataFrame | None = None) -> list[str]:
    """The run's tidy tables as Parquet (``Run.to_parquet``) and the report's tables as CSV, in the run folder."""
    written = [p.name for p in run.to_parquet()]
    frames = {"summary": summary_table(run), "parity": parity_table(run), "failures": run.failures,
              "speedup": sp, "efficiency": eff, "energy": energy_table(run)}
    for name, frame in frames.items():
        if frame is None or frame.empty:
            continue
        frame.to_csv(run.path / f"{name}.csv", index=False)
        written.append(f"{name}.csv")
    return written


def data_markdown(run: Run, written: list[str]) -> str:
    # Names, not links: a report mailed or copied on its own carries none of these files (they stay in the
    # run folder), and a link to one would be dead.
    files = ", ".join(f"`{w}`" for w in written)
    return (f"In the run folder `{run.path.name}/` beside this report (they do not travel inside it): {files}.\n\n"
            "- `iterations.parquet`: a row per timed sample (backend, precision, batch, shape, mode, iter, ms, "
            "wall_ms, t_s, requests).\n"
            "- `samples.parquet`: a row per resource-sampler tick (backend, precision, t_s, label, rss_mib, "
            "cpu_percent and on a GPU gpu_util, sm_clock_mhz, mem_clock_mhz, temp_c, power_w, throttle_reasons, ...).\n"
            "- `points.parquet`: a row per point and mode with its statistics, resources and parity.\n"
            "- `kernel_points.parquet`, `kernels.parquet` (GPU runs): a row per kernel-profiled point (GPU busy ms "
            "per request beside the timed median), and a row per kernel name there (category, launches, ms).\n\n"
            "The schema is in `reports/README.md` and `lib/results/run.py`. Load: "
            "`pandas.read_parquet('<run>/iterations.parquet')`, or everything with "
            "`import lib; run = lib.load_run('<run>')` (`run.iterations`, `run.samples`, `run.points`, "
            "`run.failures`, `run.kernel_points`, `run.kernels`).")


def notebooks_markdown(run: Run) -> str:
    """The executed notebooks in the run folder, by path (not linked: they do not travel with a mailed report)."""
    lines = []
    for c in run.plan.get("combos", []):
        combo = f"{c['backend']}-{c['precision']}"
        rel = f"bench/{combo}/benchmark.ipynb"
        exists = (run.path / rel).exists()
        failed = " — **failed**, see *Failures and skips*" if (run.path / f"bench/{combo}/notebook.failed.json").exists() else ""
        if exists:
            lines.append(f"- {md(c['backend'] + '/' + c['precision'])}: {code(rel)}{failed}")
        else:
            lines.append(f"- {md(c['backend'] + '/' + c['precision'])}: no executed notebook ({code(rel)} is missing)"
                         f"{failed}")
    for name, what in (("export.ipynb", "export (PyTorch → ONNX)"), ("analysis.ipynb", "this analysis")):
        # analysis.ipynb gets its name only once it completes (lib/pipeline/cli.py), after this cell ran
        if (run.path / name).exists() or name == "analysis.ipynb":
            lines.append(f"- {what}: `{name}`")
    return (f"Executed notebooks of this run, in its folder `{run.path.name}/` (open them with `make lab` or "
            "JupyterLab; they are not inside this report):\n\n" + "\n".join(lines))
