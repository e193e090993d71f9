"""``lib.report.points``: which points a decision may use.
"""

from __future__ import annotations

from lib.report import points


def test_no_usable_points_gives_an_empty_frame_not_rows_of_nan(gpu_run):
    gpu_run.points["parity_passed"] = False
    assert points.usable_points(gpu_run).empty
