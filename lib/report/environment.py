"""Sections "Engines and export", "Environment" and "Parameters": what ran, on what, with which settings.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from ..results.run import Run


def environment_table(run: Run) -> pd.DataFrame:
    env = dict(run.environment)
    libs = env.pop("libraries", {})
    gpu = env.pop("gpu", None) or {}
    rows = [(k, v) for k, v in env.items()]
    rows += [(f"gpu.{k}", v) for k, v in gpu.items()]
    rows += [(f"version: {k}", v) for k, v in libs.items()]
    if not gpu:
        rows.append(("gpu", "none (no NVIDIA GPU visible to NVML)"))
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})


def params_table(run: Run) -> pd.DataFrame:
    rows = [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in run.params.items()]
    rows += [("resolved device", run.plan["device"]), ("resolved batch sizes", run.plan["batch_sizes"]),
             ("resolved shapes", run.plan["shapes"])]
    return pd.DataFrame(rows, columns=["parameter", "value"]).astype({"value": str})


def engines_table(run: Run) -> pd.DataFrame:
    rows = []
    for name, e in run.engines.items():
        info = e.get("info", {})
        rows.append({"backend/precision": name, "what": e.get("summary", ""), "timer": e.get("timer"),
                     "load/build s": e.get("load_s", float("nan")),
                     "details": ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("compile_s", "compile_graphs"))[:300],
                     "parity reference": e.get("reference")})
    return pd.DataFrame(rows)


def export_table(run: Run) -> pd.DataFrame:
    """The exported ONNX files for a reader: the path under the cache folder (not the absolute one),
    a short hash; everything else the export recorded is in the run folder's ``export.json``."""
    files = run.export.get("files") if run.export else None
    if files:
        d = pd.DataFrame(files)
        cache = str(run.params.get("cache_dir") or "")
        if "path" in d:
            d["path"] = d["path"].map(lambda v: os.path.relpath(str(v), cache) if cache and str(v).startswith(cache)
                                      else str(v))
            d = d.rename(columns={"path": f"file (under CACHE_DIR)" if cache else "file"})
        if "sha256" in d:
            d["sha256"] = d["sha256"].map(lambda v: str(v)[:12])
        # the reader's order and short headers; a column with nothing in it (no FP16 file) is left out
        names = {"precision": "precision", "source": "source", "file (under CACHE_DIR)": "file (under CACHE_DIR)",
                 "file": "file", "MB": "MB", "export/convert s (original)": "export s", "cache hit": "cache hit",
                 "ORT vs PyTorch cosine": "ORT vs PyTorch cosine",
                 "FP16 vs FP32 ONNX cosine (ORT CPU)": "FP16 vs FP32 cosine", "sha256": "sha256"}
        cols = [c for c in names if c in d and d[c].notna().any()] + [c for c in d if c not in names]
        return d[cols].rename(columns=names)
    why = (run.export or {}).get("error") or (run.export or {}).get("note") or "no export record in this run"
    return pd.DataFrame({"export": [str(why)[-600:]]})
