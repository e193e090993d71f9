"""``reports/index.html``: every run, newest first, with its status (complete, interrupted, failed), device,
a headline figure and a link; runs without a report are listed too, and an empty index says so."""

from __future__ import annotations

import html
import urllib.parse
from pathlib import Path

from ..common.cache import atomic_write_text, read_json

__all__ = ["run_status", "headline", "render_index"]


def run_status(run_dir: Path) -> str:
    """``complete``, ``complete, N failed`` (a backend or the export failed, the rest is in the report),
    ``failed`` (no report, and a step recorded a failure) or ``interrupted`` (no report, nothing failed:
    stopped, or still running; RUN_ID=<id> resumes it)."""
    failed = len(list(run_dir.glob("bench/*/notebook.failed.json"))) + (run_dir / "export.failed.json").exists()
    if (run_dir / "report.html").exists():
        return f"complete, {failed} failed" if failed else "complete"
    return "failed" if failed else "interrupted"


def headline(run_dir: Path) -> str:
    """The fastest configuration at the run's smallest batch (device-resident median) from points.parquet;
    empty when the run has none (no analysis yet)."""
    path = run_dir / "points.parquet"
    if not path.exists():
        return ""
    import pandas as pd

    try:
        p = pd.read_parquet(path, columns=["backend", "precision", "batch", "mode", "median_ms", "parity_passed"])
    except (OSError, ValueError, KeyError):
        return ""
    p = p[(p["mode"] == "device") & p["parity_passed"].fillna(True).astype(bool)]
    p = p[p["batch"] == p["batch"].min()].sort_values("median_ms")
    if p.empty:
        return ""
    r = p.iloc[0]
    return f"{r['backend']}/{r['precision']}: {r['median_ms']:.3g} ms at batch {int(r['batch'])} (device-resident median)"


def _device(run_dir: Path, plan: dict) -> str:
    for eng in sorted(run_dir.glob("bench/*/engine.json")):
        try:
            gpu = (read_json(eng).get("environment") or {}).get("gpu") or {}
        except (OSError, ValueError):
            continue
        if gpu.get("name"):
            return gpu["name"]
    return str(plan.get("device", ""))


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1240px;padding:0 20px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}"
        "th{background:#f3f5f7}.failed,.interrupted{color:#b00020}.scroll{overflow-x:auto}")


def render_index(reports_dir: Path) -> Path:
    reports_dir = Path(reports_dir)
    runs = []
    for plan_path in reports_dir.glob("*/*/plan.json"):
        run_dir = plan_path.parent
        try:
            params, plan = read_json(run_dir / "params.json"), read_json(plan_path)
        except (OSError, ValueError):
            continue
        runs.append((run_dir.name, run_dir, params, plan))
    rows = []
    for run_id, run_dir, params, plan in sorted(runs, key=lambda r: r[0], reverse=True):  # ids start with UTC time
        status = run_status(run_dir)
        rel = run_dir.relative_to(reports_dir).as_posix()
        link = (f'<a href="{html.escape(urllib.parse.quote(rel))}/report.html">{html.escape(run_id)}</a>' if status.startswith("complete")
                else f'{html.escape(run_id)} <small>(no report; folder {html.escape(rel)}/)</small>')
        css = status.split(",")[0]
        rows.append(f"<tr><td>{link}</td><td>{html.escape(str(params.get('model', '')))}</td>"
                    f"<td class=\"{css}\">{html.escape(status)}</td><td>{html.escape(_device(run_dir, plan))}</td>"
                    f"<td>{html.escape(headline(run_dir))}</td>"
                    f"<td>{len(plan.get('combos', []))} × {len(plan.get('batch_sizes', []))} × "
                    f"{len(plan.get('shapes', []))}</td></tr>")
    compares = [f"<li><a href=\"{html.escape(urllib.parse.quote(page.relative_to(reports_dir).as_posix()))}\">"
                f"{html.escape(page.parent.name)}</a></li>"
                for page in sorted(reports_dir.glob("compare/*/compare.html"), reverse=True)]
    if rows:
        body = ("<div class=\"scroll\"><table><tr><th>run</th><th>model</th><th>status</th><th>device</th>"
                "<th>headline</th><th>backend/precision × batch sizes × shapes</th></tr>"
                + "".join(rows) + "</table></div>")
    else:
        body = (f"<p>No runs yet under {html.escape(str(reports_dir))}. <code>make report MODEL=efficientnet_b1</code> "
                f"makes one; <code>make models</code> lists the models.</p>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width, initial-scale=1'><title>benchbook runs</title>"
            f"<style>{_CSS}</style></head><body><h1>benchbook runs</h1>"
            "<p>Newest first. Interrupted runs resume with <code>make report ... RUN_ID=&lt;run&gt;</code>.</p>"
            + body + (f"<h2>Comparisons</h2><ul>{''.join(compares)}</ul>" if compares else "") + "</body></html>")
    out = reports_dir / "index.html"
    atomic_write_text(out, page)
    return out
