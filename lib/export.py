"""Export steps, each cached on disk and composable: torch module -> FP32 ONNX -> FP16 ONNX.

``onnx_fp32(...)`` exports with ``torch.onnx.export`` (dynamo), marks the batch dim and every
``-1`` runtime dim dynamic with the profile's min/max, checks the file with ``onnx.checker`` and
compares ONNX Runtime (CPU) against PyTorch on the example input; ``onnx_fp16(...)`` converts that
with onnxconverter-common, keeping FP32 inputs and outputs. Each result lives in
``<cache_root>/<model>/<key>/`` where the key hashes what determines it (config, load code,
weights, library versions, this file); a valid manifest there means "skip".
"""

from __future__ import annotations

import importlib.metadata as md
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import sha256_bytes, sha256_file, valid_artifact, write_manifest
from .errors import BenchbookError
from .inputs import make_inputs
from .model_config import BATCH_DIM, ModelConfig, Shape

__all__ = ["ExportResult", "export_key", "onnx_fp32", "onnx_fp16", "ensure_onnx", "OPSET"]

OPSET = 20


@dataclass
class ExportResult:
    path: Path
    cache_hit: bool
    seconds: float  # export time of this call (0 on a cache hit); the original is in the manifest
    manifest: dict


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "-"


def export_key(cfg: ModelConfig, weights: Path | str | None = None) -> str:
    """sha256 (16 hex) of everything the FP32 ONNX depends on."""
    parts = [cfg.path.read_bytes()]
    load_py = cfg.folder / "load.py"
    parts.append(load_py.read_bytes() if load_py.exists() else b"")
    parts.append(sha256_file(weights).encode() if weights else b"random-weights")
    here = Path(__file__).parent
    for code in ("export.py", "models.py", "inputs.py"):  # how the module is built, seeded and exported
        parts.append((here / code).read_bytes())
    parts.append(f"opset={OPSET}|torch={_version('torch')}|torchvision={_version('torchvision')}|"
                 f"onnx={_version('onnx')}|onnxscript={_version('onnxscript')}".encode())
    return sha256_bytes(b"\0".join(parts))[:16]


def _example_shape(cfg: ModelConfig) -> tuple[int, Shape]:
    first = cfg.inputs[0]
    batch = first.example[first.dims.index(BATCH_DIM)]
    values = []
    for dim in cfg.shape_dims:
        for spec in cfg.inputs:
            if dim in spec.dims:
                values.append((dim, spec.example[spec.dims.index(dim)]))
                break
    return batch, Shape(tuple(values))


def _dynamic_shapes(cfg: ModelConfig):
    from torch.export import Dim

    dims = {}
    for spec in cfg.inputs:
        for i, (d, r) in enumerate(zip(spec.dims, spec.runtime)):
            if r == -1 and d not in dims:
                lo, hi = cfg.profile_range(d)
                # torch.export specialises sizes 0 and 1; the min of 1 is still allowed as a bound.
                dims[d] = Dim(d, min=lo, max=hi)
    return tuple({i: dims[d] for i, (d, r) in enumerate(zip(s.dims, s.runtime)) if r == -1} for s in cfg.inputs)


def _torch_reference(model, cfg: ModelConfig, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from .engines.torch_engine import as_output_list

    with torch.inference_mode():
        outs = as_output_list(model(*[torch.from_numpy(inputs[s.name]) for s in cfg.inputs]))
    return {o.name: t.float().numpy() for o, t in zip(cfg.outputs, outs)}


def _ort_outputs(path: Path, cfg: ModelConfig, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def _check_parity(path: Path, cfg: ModelConfig, inputs, reference, precision: str) -> dict:
    from .parity import compare_outputs

    got = _ort_outputs(path, cfg, inputs)
    result = compare_outputs(got, reference, precision, cfg.top_k_output)
    if not result["passed"]:
        raise BenchbookError(f"export of {cfg.name!r}: ONNX Runtime output differs from PyTorch ({precision}): "
                             f"{result['problems']}")
    return {k: result[k] for k in ("max_abs_err", "rel_err", "cosine", "top1_agree")}


def onnx_fp32(cfg: ModelConfig, cache_root: Path, weights: Path | str | None = None, log=print,
              build: bool = True) -> ExportResult:
    """The FP32 ONNX of ``cfg``: from the cache when valid, else (``build``) exported, checked and cached."""
    folder = Path(cache_root) / cfg.name / export_key(cfg, weights)
    manifest, why = valid_artifact(folder, "model.onnx")
    if manifest:
        return ExportResult(folder / "model.onnx", True, 0.0, manifest)
    if not build:
        raise BenchbookError(f"no valid FP32 ONNX of {cfg.name!r} in {folder}: {why}")
    if why != "not built yet":
        log(f"[export] rebuilding: {why}")
    import onnx
    import torch

    from .models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_model(cfg, weights)
    batch, shape = _example_shape(cfg)
    inputs = make_inputs(cfg, batch, shape, seed=1234)
    args = tuple(torch.from_numpy(inputs[s.name]) for s in cfg.inputs)
    tmp = folder / "model.onnx.partial"
    log(f"[export] {cfg.name}: torch.onnx.export (dynamo, opset {OPSET}) ...")
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model, args, str(tmp), dynamo=True, opset_version=OPSET, external_data=False,
                          input_names=[s.name for s in cfg.inputs], output_names=[o.name for o in cfg.outputs],
                          dynamic_shapes=_dynamic_shapes(cfg), verbose=False)
    export_s = time.perf_counter() - t0
    onnx.checker.check_model(str(tmp), full_check=True)
    reference = _torch_reference(model, cfg, inputs)
    parity = _check_parity(tmp, cfg, inputs, reference, "fp32")
    tmp.replace(folder / "model.onnx")
    manifest = write_manifest(folder, "model.onnx", precision="fp32", export_s=round(export_s, 3), opset=OPSET,
                              torch=_version("torch"), onnx=_version("onnx"), onnxscript=_version("onnxscript"),
                              weights=str(weights) if weights else None, parity_vs_torch=parity)
    log(f"[export] {cfg.name}: FP32 ONNX in {export_s:.1f} s, ONNX Runtime vs PyTorch cosine "
        f"{parity['cosine']:.6f}")
    return ExportResult(folder / "model.onnx", False, export_s, manifest)


def onnx_fp16(cfg: ModelConfig, fp32: ExportResult, log=print, build: bool = True) -> ExportResult:
    """FP16 weights and math with FP32 inputs/outputs (onnxconverter-common), next to the FP32 file."""
    folder = fp32.path.parent / f"fp16-{sha256_bytes(_version('onnxconverter-common').encode())[:8]}"
    manifest, why = valid_artifact(folder, "model.onnx")
    if manifest:
        return ExportResult(folder / "model.onnx", True, 0.0, manifest)
    if not build:
        raise BenchbookError(f"no valid FP16 ONNX of {cfg.name!r} in {folder}: {why}")
    if why != "not built yet":
        log(f"[export] rebuilding FP16: {why}")
    import onnx
    from onnxconverter_common import float16

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = float16.convert_float_to_float16(onnx.load(str(fp32.path)), keep_io_types=True)
    tmp = folder / "model.onnx.partial"
    onnx.save(model, str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)
    seconds = time.perf_counter() - t0
    tmp.replace(folder / "model.onnx")
    manifest = write_manifest(folder, "model.onnx", precision="fp16", convert_s=round(seconds, 3),
                              converter=f"onnxconverter-common {_version('onnxconverter-common')}",
                              keep_io_types=True, source_sha256=fp32.manifest["sha256"])
    log(f"[export] {cfg.name}: FP16 ONNX (I/O kept FP32) in {seconds:.1f} s")
    return ExportResult(folder / "model.onnx", False, seconds, manifest)


def ensure_onnx(cfg: ModelConfig, cache_root: Path, precisions=("fp32",), weights=None,
                log=print, build: bool = True) -> dict[str, ExportResult]:
    """Every ONNX variant the run needs, by precision (fp32 always; fp16 when asked).
    ``build=False`` only reads the cache (raises if a file is missing or corrupt)."""
    results = {"fp32": onnx_fp32(cfg, cache_root, weights, log, build)}
    if "fp16" in precisions:
        results["fp16"] = onnx_fp16(cfg, results["fp32"], log, build)
    return results


def export_summary(results: dict[str, ExportResult], run_dir: Path | str | None = None):
    """A table of the ONNX files this run uses; also written to ``<run_dir>/export.json``."""
    import pandas as pd

    from .cache import atomic_write_json

    rows = [{"precision": p, "path": str(r.path), "cache hit": r.cache_hit,
             "export/convert s (original)": r.manifest.get("export_s", r.manifest.get("convert_s")),
             "MB": round(r.manifest["bytes"] / 1e6, 2), "sha256": r.manifest["sha256"][:16],
             "ORT vs PyTorch cosine": (r.manifest.get("parity_vs_torch") or {}).get("cosine")}
            for p, r in results.items()]
    if run_dir:
        atomic_write_json(Path(run_dir) / "export.json", {"files": rows})
    return pd.DataFrame(rows)
