"""What the notebooks need besides the report's content: their default folders, resolved against the
repository (whatever folder papermill or JupyterLab runs them from), the run they open when none is
named, and errors a reader can act on shown as one line instead of a traceback."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import BenchbookError

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "repo_path", "newest_runs", "plain_errors"]


def repo_path(value: str | Path | None, default: str) -> Path:
    """``value`` as a folder: empty means ``<repository>/<default>``; a relative path is relative to the
    repository, as it is for ``make`` (which runs there); ``~`` is expanded."""
    text = str(value or "").strip() or default
    path = Path(text).expanduser()
    return path if path.is_absolute() else REPO / path


def newest_runs(reports_dir: str | Path | None = None, model: str = "", count: int = 1) -> list[Path]:
    """The ``count`` newest run folders of ``model`` (empty: the model of the newest run), newest first.

    Raises a BenchbookError that says what to run when there are not that many."""
    root = repo_path(reports_dir, "reports")
    runs = sorted(root.glob(f"{model or '*'}/*/plan.json"), key=lambda p: p.parent.name, reverse=True)
    if runs and not model:
        model = runs[0].parent.parent.name
        runs = [p for p in runs if p.parent.parent.name == model]
    if len(runs) < count:
        have = f"{len(runs)} run{'s' if len(runs) != 1 else ''}" + (f" of {model}" if model else "")
        raise BenchbookError(f"{have} under {root}, {count} needed: run `make report MODEL={model or '<name>'}` "
                             f"{'first' if not runs else 'again'}, or name the run folder(s) in this notebook's "
                             f"parameters")
    return [p.parent for p in runs[:count]]


def plain_errors() -> None:
    """In a notebook's kernel: a BenchbookError (bad input, no run yet) shows as ``error: <message>``, one
    line, the way the command line prints it; the cell still fails, so papermill stops there.
    Any other exception keeps its full traceback. Outside IPython this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def show(self, etype, value, tb, tb_offset=None):
        stb = [f"error: {' '.join(str(value).split())}"]
        self._showtraceback(etype, value, stb)  # IPython leaves the display to the handler
        return stb

    shell.set_custom_exc((BenchbookError,), show)
