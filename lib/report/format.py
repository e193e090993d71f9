"""Display helpers every section uses: ``table()`` (index hidden, numbers rounded for reading, a missing
value shown as "–"), ``styled()``, ``show()`` (a figure as an embedded PNG), and the number formats
(``fmt_num``, ``fmt_pct``, ``fmt_x``, ``fmt_g``). They know nothing about a run.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def show(fig, dpi: int = 100) -> None:
    """Display a figure (or a list of them) as embedded PNGs whatever matplotlib backend is active,
    then free it (the HTML report then carries the image itself, and no figure is shown twice)."""
    from IPython.display import Image, Markdown, display

    if fig is None:
        return
    if isinstance(fig, str):
        display(Markdown(fig))
        return
    if isinstance(fig, (list, tuple)):
        for f in fig:
            show(f, dpi)
        return
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))


def is_missing(x) -> bool:
    try:
        return x is None or (isinstance(x, float) and math.isnan(x)) or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def fmt_num(x, sig: int = 3) -> str:
    """A number for reading: 3 significant digits, thousands separated, no needless decimals
    (482.7 -> '483', 0.02811 -> '0.0281', 12345.6 -> '12,346'); missing -> '–'."""
    if is_missing(x):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax < 1e-4:
        return f"{x:.{sig - 1}e}"
    if ax >= 10 ** (sig - 1):
        return f"{x:,.0f}"
    decimals = max(0, sig - 1 - int(math.floor(math.log10(ax))))
    return f"{x:,.{decimals}f}"


def fmt_pct(x) -> str:
    """A fraction as a percentage: 0.0523 -> '5.2%', 0.00041 -> '0.041%'."""
    if is_missing(x):
        return "–"
    v = float(x) * 100
    if v != 0 and abs(v) < 0.001:
        return "<0.001%"
    return f"{fmt_num(v, 2) if abs(v) < 1 else f'{v:.1f}'}%"


def fmt_x(x) -> str:
    """A speedup or ratio: 1.3612 -> '1.36×', 3193.7 -> '3,194×'."""
    return "–" if is_missing(x) else f"{fmt_num(float(x))}×"


def fmt_g(x) -> str:
    """A parameter value in prose: 10.0 -> '10', 2.5 -> '2.5'."""
    return f"{float(x):g}"


def _fmt_bool(v) -> str:
    return "–" if is_missing(v) else ("yes" if v else "no")


def table(frame: pd.DataFrame, formats: dict | None = None, highlight: str | None = None, max_rows: int = 500,
          when_empty: str | None = "(none)"):
    """A DataFrame ready to display: index hidden, numbers formatted for reading, missing as '–'.

    Columns named 'CV', '% ...' or 'share ...' are fractions shown as percentages; bool columns as
    yes/no; other numbers with ``fmt_num``. ``highlight``: a bool column whose true rows are shaded.
    ``when_empty``: what an empty table shows; ``None`` shows nothing (a section whose prose already
    says why it has no rows, e.g. a run without a load stage)."""
    if frame is None:
        frame = pd.DataFrame()
    if frame.empty and when_empty is None:
        from IPython.display import Markdown

        return Markdown("")
    if frame.empty:
        frame = pd.DataFrame({"": [when_empty]}) if frame.columns.empty else frame
    frame = frame.head(max_rows).reset_index(drop=True)
    fmt = {}
    for c in frame.columns:
        col = frame[c]
        name = str(c)
        if formats and c in formats:
            fmt[c] = formats[c]
        elif name == "cosine":  # parity thresholds sit at 0.999..0.9999: show enough nines
            fmt[c] = lambda v: "–" if is_missing(v) else f"{float(v):.6f}"
        elif name == "CV" or name.startswith("% ") or name.startswith("share"):
            fmt[c] = fmt_pct
        elif col.dtype == bool or (col.dtype == object and col.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all()
                                   and col.notna().any()):
            fmt[c] = _fmt_bool
        elif pd.api.types.is_numeric_dtype(col):
            fmt[c] = fmt_num
    # escape: cells are data (kernel names like "f<float>", error messages), never markup
    st = frame.style.format(fmt, na_rep="–", escape="html").hide(axis="index")
    st = st.set_table_attributes('class="bb-table"')
    text = [c for c in frame.columns if c not in fmt or fmt[c] is _fmt_bool]
    numeric = [c for c in frame.columns if c not in text]
    if numeric:
        st = st.set_properties(subset=numeric, **{"white-space": "nowrap"})
    if text:  # words read left-aligned, numbers right-aligned
        st = st.set_properties(subset=text, **{"text-align": "left"})
        st = st.set_table_styles([{"selector": f"th.col{list(frame.columns).index(c)}", "props": "text-align: left"}
                                  for c in text], overwrite=False)
    if highlight and highlight in frame:
        flags = frame[highlight].fillna(False).astype(bool).to_numpy()
        st = st.apply(lambda r: ["background-color: #fff3cd" if flags[r.name] else "" for _ in r], axis=1)
    return st


def counted(count: int, noun: str) -> str:
    """'1 configuration', '3 configurations'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def styled(frame: pd.DataFrame):
    """The full measurement table, flagged rows shaded (``table`` with the highlight)."""
    return table(frame.assign(flagged=frame["noisy"] | frame["unstable"]) if "noisy" in frame else frame,
                 highlight="flagged" if "noisy" in frame else "unstable")


def relpath(target: Path | str, start: Path | str) -> str:
    """A relative link from folder ``start`` to ``target`` (POSIX separators, for HTML)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()
