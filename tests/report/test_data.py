"""``lib.report.data``: the report's tables written into the run folder, and the files named (not linked).
"""

from __future__ import annotations

from lib.report import data, summary


def test_write_tables_and_links(gpu_run):
    sp = summary.speedups(gpu_run)
    written = data.write_tables(gpu_run, sp)
    for name in ("iterations.parquet", "samples.parquet", "points.parquet", "summary.csv", "failures.csv",
                 "speedup.csv"):
        assert name in written and (gpu_run.path / name).exists()
    md = data.notebooks_markdown(gpu_run)
    assert "`bench/torch-fp32/benchmark.ipynb`" in md and "`bench/trt-fp16/benchmark.ipynb`" in md
    assert "ort/fp32: no executed notebook" in md and "is missing" in md  # crashed before writing it
    # issue 14: named, not linked: a report mailed on its own has no dead links
    assert "](" not in md and "](" not in data.data_markdown(gpu_run, written)
