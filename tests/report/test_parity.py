"""``lib.report.parity``: the parity table.
"""

from __future__ import annotations

import json

import lib
from lib.report import parity

from .fake_runs import make_fake_run


def test_parity_table_has_a_row_per_output(tmp_path):
    run_dir = make_fake_run(tmp_path, gpu=False, failures=False)
    for pj in run_dir.glob("bench/*/points/*.json"):
        rec = json.loads(pj.read_text())
        rec["parity"]["outputs"] = {"logits": {"cosine": 0.99999, "rel_err": 1e-4, "max_abs_err": 1e-4,
                                               "centred_cosine": 0.9999, "centred_rel_err": 1e-3},
                                    "embedding": {"cosine": 0.9991, "rel_err": 2e-3, "max_abs_err": 3e-3,
                                                  "centred_cosine": 0.9990, "centred_rel_err": 1e-2}}
        pj.write_text(json.dumps(rec))
    t = parity.parity_table(lib.load_run(run_dir))
    assert set(t["output"]) == {"logits", "embedding"} and len(t) == 2 * len(t.drop_duplicates(
        ["backend", "precision", "batch", "shape"]))
    assert "cosine, input-dependent part" in t.columns
