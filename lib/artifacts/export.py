"""Export steps, each cached on disk and composable: torch module -> FP32 ONNX -> FP16 ONNX (and INT8 ONNX,
``lib.artifacts.quantize``).

``onnx_fp32(...)`` exports with ``torch.onnx.export`` (dynamo), marks the batch dim and every
``-1`` runtime dim dynamic with the profile's min/max, checks the file with ``onnx.checker`` and
compares ONNX Runtime (CPU) against PyTorch on the example input; ``onnx_fp16(...)`` converts that
with onnxconverter-common, keeping FP32 inputs and outputs, and compares it with the FP32 file on
ONNX Runtime's CPU EP. Each result lives in ``<cache_root>/<model>/<key>/`` where the key hashes
what determines it (config, load code, weights, library versions, this file); a valid manifest
there means "skip".

A model may also come as ONNX (``config.yaml`` + ``model.onnx``, no ``load.py``): ``onnx_given``
checks that file against its config (names, dtypes, static and dynamic dims, one ONNX Runtime run)
and uses it in place of an export; its FP16 variant goes to ``<cache_root>/<model>/given-<key>/``.
``ensure_onnx`` picks the right path for either kind of model.
"""

from __future__ import annotations

import importlib.metadata as md
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..common.cache import sha256_bytes, sha256_file, valid_artifact, write_manifest
from ..common.errors import BenchbookError
from ..config.dtypes import ONNX_ELEM_TYPES
from ..config.inputs import make_inputs
from ..config.model_config import BATCH_DIM, ModelConfig, Shape
from ..config.models import is_given_onnx
from ..measure.reference import onnx_cpu_outputs, torch_outputs

__all__ = ["ExportResult", "example_shape", "export_key", "onnx_fp32", "onnx_fp16", "onnx_given", "ensure_onnx",
           "cached_onnx", "OPSET"]

OPSET = 20


@dataclass
class ExportResult:
    path: Path | None  # None: this variant failed (``manifest["error"]`` says why)
    cache_hit: bool
    seconds: float  # export time of this call (0 on a cache hit); the original is in the manifest
    manifest: dict
    folder: Path | None = None  # the cache folder derived files go in (None: the file's own folder)

    @property
    def cache_folder(self) -> Path:
        return self.folder if self.folder is not None else self.path.parent


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "-"


def export_key(cfg: ModelConfig, weights: Path | str | None = None) -> str:
    """sha256 (16 hex) of everything the FP32 ONNX depends on (for a given ONNX: that file)."""
    parts = [cfg.path.read_bytes()]
    load_py = cfg.folder / "load.py"
    parts.append(load_py.read_bytes() if load_py.exists() else b"")
    if is_given_onnx(cfg):
        parts.append(f"given-onnx={sha256_file(cfg.folder / 'model.onnx')}".encode())
    parts.append(sha256_file(weights).encode() if weights else b"random-weights")
    lib_dir = Path(__file__).resolve().parents[1]
    # how the module is built, seeded and exported
    for code in ("artifacts/export.py", "config/models.py", "config/inputs.py"):
        parts.append((lib_dir / code).read_bytes())
    parts.append(f"opset={OPSET}|torch={_version('torch')}|torchvision={_version('torchvision')}|"
                 f"transformers={_version('transformers')}|"
                 f"onnx={_version('onnx')}|onnxscript={_version('onnxscript')}".encode())
    return sha256_bytes(b"\0".join(parts))[:16]


def example_shape(cfg: ModelConfig) -> tuple[int, Shape]:
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


def _check_parity(path: Path, cfg: ModelConfig, inputs, reference, precision: str) -> dict:
    from ..measure.parity import compare_outputs

    got = onnx_cpu_outputs(path, inputs)
    result = compare_outputs(got, reference, precision, cfg.top_k_output)
    if not result["passed"]:
        raise BenchbookError(f"export of {cfg.name!r}: ONNX Runtime output differs from PyTorch ({precision}): "
                             f"{result['problems']}")
    return {k: result[k] for k in ("max_abs_err", "rel_err", "cosine", "top1_agree")}



def cached_onnx(folder: Path, what: str, model: str, build: bool, log, rebuilding: str | None = None) -> "ExportResult | None":
    """The cached ``model.onnx`` in ``folder`` when its manifest is valid; else None when it may be built
    (saying why it is rebuilt), or an error naming the folder when ``build`` is False. ``what``: "FP32",
    "FP16", "INT8" ... for the messages."""
    manifest, why = valid_artifact(folder, "model.onnx")
    if manifest:
        return ExportResult(folder / "model.onnx", True, 0.0, manifest)
    if not build:
        raise BenchbookError(f"no valid {what} ONNX of {model!r} in {folder}: {why}")
    if why != "not built yet":
        log(f"[export] {rebuilding or 'rebuilding ' + what}: {why}")
    return None

def onnx_fp32(cfg: ModelConfig, cache_root: Path, weights: Path | str | None = None, log=print,
              build: bool = True) -> ExportResult:
    """The FP32 ONNX of ``cfg``: from the cache when valid, else (``build``) exported, checked and cached."""
    folder = Path(cache_root) / cfg.name / export_key(cfg, weights)
    cached = cached_onnx(folder, "FP32", cfg.name, build, log, rebuilding="rebuilding")
    if cached is not None:
        return cached
    import onnx
    import torch

    from ..config.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_model(cfg, weights, cache_dir=Path(cache_root).parent)  # cache_root is <CACHE_DIR>/onnx
    batch, shape = example_shape(cfg)
    inputs = make_inputs(cfg, batch, shape, seed=1234)
    args = tuple(torch.from_numpy(inputs[s.name]) for s in cfg.inputs)
    reference = torch_outputs(model, cfg, inputs)  # first: a module that does not fit the config fails here
    tmp = folder / "model.onnx.partial"
    log(f"[export] {cfg.name}: torch.onnx.export (dynamo, opset {OPSET}) ...")
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(model, args, str(tmp), dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=[s.name for s in cfg.inputs], output_names=[o.name for o in cfg.outputs],
                              dynamic_shapes=_dynamic_shapes(cfg), verbose=False)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise BenchbookError(f"export of {cfg.name!r}: torch.onnx.export (dynamo) failed with the dynamic dims "
                             f"{', '.join(f'{d} {lo}..{hi}' for d, (lo, hi) in ((d, cfg.profile_range(d)) for d in [BATCH_DIM, *cfg.shape_dims]))} "
                             f"from {cfg.path}: {type(e).__name__}: {str(e)[:1500]} (docs/adding-a-model.md, "
                             f"'When the export fails', lists the usual causes)") from e
    export_s = time.perf_counter() - t0
    onnx.checker.check_model(str(tmp), full_check=True)
    parity = _check_parity(tmp, cfg, inputs, reference, "fp32")
    tmp.replace(folder / "model.onnx")
    manifest = write_manifest(folder, "model.onnx", precision="fp32", export_s=round(export_s, 3), opset=OPSET,
                              torch=_version("torch"), onnx=_version("onnx"), onnxscript=_version("onnxscript"),
                              weights=str(weights) if weights else None, parity_vs_torch=parity)
    log(f"[export] {cfg.name}: FP32 ONNX in {export_s:.1f} s, ONNX Runtime vs PyTorch cosine "
        f"{parity['cosine']:.6f}")
    return ExportResult(folder / "model.onnx", False, export_s, manifest)


def _isolate_graph_outputs(model):
    """Give every graph output that nodes also read its own Identity node, in place; returns ``model``.

    BERT's pooler reads ``last_hidden_state``, a graph output. With ``keep_io_types`` the FP16 converter
    casts graph outputs back to FP32 but leaves such readers on the FP32 name with FP16 types
    recorded, and the checker rejects the file ("Inferred elem type differs ... Gather"). After this
    step readers take the internal tensor and only the Identity writes the graph output.
    """
    import onnx

    g = model.graph
    outputs = {o.name for o in g.output}
    read = {name for node in g.node for name in node.input} & outputs
    if not read:
        return model
    renamed = {name: f"{name}__internal" for name in sorted(read)}
    for node in g.node:
        for i, name in enumerate(node.output):
            if name in renamed:
                node.output[i] = renamed[name]
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for vi in g.value_info:
        if vi.name in renamed:
            vi.name = renamed[vi.name]
    for name, internal in renamed.items():
        g.node.append(onnx.helper.make_node("Identity", [internal], [name], name=f"{name}__output"))
    return model


def _fp16_check(cfg: ModelConfig, fp16_path: Path, fp32_path: Path) -> dict:
    """The FP16 file against the FP32 one on ONNX Runtime's CPU EP at the example input (FP16 thresholds).
    Recorded, never raised: the benchmark compares every point again on the real backend."""
    from ..measure.parity import compare_outputs

    batch, shape = example_shape(cfg)
    inputs = make_inputs(cfg, batch, shape, seed=1234)
    try:
        result = compare_outputs(onnx_cpu_outputs(fp16_path, inputs), onnx_cpu_outputs(fp32_path, inputs), "fp16",
                                 cfg.top_k_output)
    except Exception as e:  # e.g. an op without an FP16 kernel on the CPU EP
        return {"checked": False, "reason": f"ONNX Runtime (CPU EP) could not run it: {type(e).__name__}: "
                                            f"{str(e)[:300]}"}
    return {"checked": True, **{k: result[k] for k in ("passed", "max_abs_err", "rel_err", "cosine", "top1_agree",
                                                       "problems")}}


def onnx_fp16(cfg: ModelConfig, fp32: ExportResult, log=print, build: bool = True) -> ExportResult:
    """FP16 weights and math with FP32 inputs/outputs (onnxconverter-common), in the FP32 file's cache folder."""
    folder = fp32.cache_folder / f"fp16-{sha256_bytes(_version('onnxconverter-common').encode())[:8]}"
    cached = cached_onnx(folder, "FP16", cfg.name, build, log)
    if cached is not None:
        return cached
    import onnx
    from onnxconverter_common import float16

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = folder / "model.onnx.partial"
    try:
        with warnings.catch_warnings(record=True) as clipped:  # one warning per weight clipped to the FP16 range
            warnings.simplefilter("always")
            model = float16.convert_float_to_float16(_isolate_graph_outputs(onnx.load(str(fp32.path))),
                                                     keep_io_types=True)
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise BenchbookError(f"{cfg.name!r}: the FP16 conversion of {fp32.path} (onnxconverter-common "
                             f"{_version('onnxconverter-common')}, FP32 inputs/outputs kept) failed: "
                             f"{type(e).__name__}: {str(e)[:500]}; FP16 backends cannot run this model "
                             f"(PRECISIONS=fp32 runs the rest)") from e
    seconds = time.perf_counter() - t0
    check = _fp16_check(cfg, tmp, fp32.path)
    tmp.replace(folder / "model.onnx")
    manifest = write_manifest(folder, "model.onnx", precision="fp16", convert_s=round(seconds, 3),
                              converter=f"onnxconverter-common {_version('onnxconverter-common')}",
                              keep_io_types=True, source_sha256=fp32.manifest["sha256"],
                              values_clipped_to_fp16_range=len(clipped), parity_vs_fp32=check)
    if not check["checked"]:
        note = f"not compared with FP32 ({check['reason']})"
    elif check["passed"]:
        note = f"ONNX Runtime (CPU EP) vs FP32 ONNX cosine {check['cosine']:.6f}"
    else:
        note = f"WARNING: differs from the FP32 ONNX beyond FP16 tolerance: {check['problems']}"
    log(f"[export] {cfg.name}: FP16 ONNX (I/O kept FP32) in {seconds:.1f} s; {note}")
    return ExportResult(folder / "model.onnx", False, seconds, manifest)




def _check_given(cfg: ModelConfig, path: Path) -> dict:
    """``path`` against ``cfg``: valid ONNX, the config's input/output names, dtypes and dims, one run.
    Errors name the config field to fix (or the ONNX file when it is broken)."""
    import onnx

    from ..common.errors import ConfigError, ModelError

    try:
        onnx.checker.check_model(str(path))  # from the path: works for files with external data too
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path} is not a valid ONNX model: {type(e).__name__}: {str(e)[:500]}") from None
    g = model.graph
    weights = {i.name for i in g.initializer}
    onnx_inputs = {i.name: i for i in g.input if i.name not in weights}
    wanted = [s.name for s in cfg.inputs]
    if sorted(onnx_inputs) != sorted(wanted):
        raise ConfigError(f"{cfg.path}: inputs: the names {wanted} do not match the inputs of {path}: "
                          f"{sorted(onnx_inputs)}")
    for i, spec in enumerate(cfg.inputs):
        t = onnx_inputs[spec.name].type.tensor_type
        dtype = ONNX_ELEM_TYPES.get(t.elem_type, f"ONNX type {t.elem_type}")
        if dtype != spec.dtype:
            raise ConfigError(f"{cfg.path}: inputs[{i}].dtype: {spec.dtype!r}, but {path} takes {spec.name!r} "
                              f"as {dtype!r}")
        dims = [(d.dim_value if d.HasField("dim_value") else -1) for d in t.shape.dim]
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        if len(dims) != len(spec.dims):
            raise ConfigError(f"{cfg.path}: inputs[{i}].dims: {len(spec.dims)} dims {list(spec.dims)}, but "
                              f"{path}'s input {spec.name!r} has {len(dims)}: {shown}")
        for j, (have, rt) in enumerate(zip(dims, spec.runtime)):
            if have == -1:
                continue  # dynamic in the ONNX: any size the config asks for
            if rt == -1 and spec.dims[j] == BATCH_DIM:
                raise ConfigError(f"{cfg.path}: inputs[{i}].runtime[{j}]: the batch dim must be dynamic, but {path} "
                                  f"fixes the batch of {spec.name!r} to {have} (shape {shown}); export the ONNX with a "
                                  f"dynamic batch dim (a named or unknown size)")
            if rt == -1:
                raise ConfigError(f"{cfg.path}: inputs[{i}].runtime[{j}]: -1 (dynamic), but {path} fixes dim "
                                  f"{spec.dims[j]!r} of {spec.name!r} to {have} (shape {shown}); set runtime[{j}] "
                                  f"and the profile's min/opt/max[{j}] to {have}, or export the ONNX with that dim "
                                  f"dynamic")
            if rt != have:
                raise ConfigError(f"{cfg.path}: inputs[{i}].runtime[{j}]: {rt}, but {path} fixes dim "
                                  f"{spec.dims[j]!r} of {spec.name!r} to {have} (shape {shown})")
    onnx_outputs = [o.name for o in g.output]
    if sorted(onnx_outputs) != sorted(o.name for o in cfg.outputs):
        raise ConfigError(f"{cfg.path}: outputs: the names {[o.name for o in cfg.outputs]} do not match the "
                          f"outputs of {path}: {onnx_outputs}")
    batch, shape = example_shape(cfg)
    try:
        outs = onnx_cpu_outputs(path, make_inputs(cfg, batch, shape, seed=1234))
    except Exception as e:
        raise ModelError(f"ONNX Runtime (CPU EP) cannot run {path} on the config's example input "
                         f"(batch {batch}, shape {shape.label}, from {cfg.path} inputs[*].example): "
                         f"{type(e).__name__}: {str(e)[:500]}") from None
    return {"opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "example_output_shapes": {k: list(v.shape) for k, v in outs.items()}}


def onnx_given(cfg: ModelConfig, cache_root: Path, log=print, build: bool = True) -> ExportResult:
    """A model given as ONNX (``model.onnx`` beside ``config.yaml``, no ``load.py``), in place of an export.

    The file stays where it is; it is checked against the config once per content (``_check_given``) and
    the check is recorded in ``<cache_root>/<model>/given-<key>/given.json``, where its FP16 variant goes too.
    """
    from ..common.cache import atomic_write_json, read_json

    src = cfg.folder / "model.onnx"
    if not src.is_file():
        from ..common.errors import ModelError

        raise ModelError(f"model {cfg.name!r} has neither load.py nor model.onnx in {cfg.folder}")
    folder = Path(cache_root) / cfg.name / f"given-{export_key(cfg)}"
    record = folder / "given.json"
    sha, size = sha256_file(src), src.stat().st_size
    if record.exists():
        try:
            manifest = read_json(record)
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("sha256") == sha and manifest.get("bytes") == size:
            return ExportResult(src, True, 0.0, manifest, folder)
    if not build:
        raise BenchbookError(f"{src} has not been checked against {cfg.path} yet (the export step does that)")
    t0 = time.perf_counter()
    log(f"[export] {cfg.name}: given as ONNX ({src}); checking it against {cfg.path} ...")
    info = _check_given(cfg, src)
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"artifact": "model.onnx", "sha256": sha, "bytes": size, "precision": "fp32", "given": str(src),
                "check_s": round(seconds, 3), "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime-gpu")
                if _version("onnxruntime-gpu") != "-" else _version("onnxruntime"), **info}
    atomic_write_json(record, manifest)
    log(f"[export] {cfg.name}: {src} fits its config (opset {info['opset']}); no export needed")
    return ExportResult(src, False, seconds, manifest, folder)


def ensure_onnx(cfg: ModelConfig, cache_root: Path, precisions=("fp32",), weights=None,
                log=print, build: bool = True, calib: str | None = None) -> dict[str, ExportResult]:
    """Every ONNX variant the run needs, by precision (fp32 always; fp16 and int8 when asked; int8 calibrated
    on ``calib``, a folder of images, or on seeded inputs: ``lib.artifacts.quantize``).
    ``build=False`` only reads the cache (raises if a file is missing or corrupt). A model given as
    ONNX uses its own file as the FP32 one (``onnx_given``)."""
    if is_given_onnx(cfg) and weights:
        from ..common.errors import WeightsError

        raise WeightsError(f"WEIGHTS={str(weights)!r}: model {cfg.name!r} is given as ONNX "
                           f"({cfg.folder / 'model.onnx'}), whose weights are in the file; leave WEIGHTS empty")
    if not build:
        return _onnx_files(cfg, cache_root, precisions, weights, log, build, calib)
    from ..common.runstate import file_lock

    # Two runs of one model at once: the second waits for the first's export, then finds it in the cache.
    with file_lock(Path(cache_root) / cfg.name / ".export.lock"):
        return _onnx_files(cfg, cache_root, precisions, weights, log, build, calib)


def _onnx_files(cfg: ModelConfig, cache_root: Path, precisions, weights, log, build: bool,
                calib: str | None = None) -> dict[str, ExportResult]:
    if is_given_onnx(cfg):
        results = {"fp32": onnx_given(cfg, cache_root, log, build)}
    else:
        results = {"fp32": onnx_fp32(cfg, cache_root, weights, log, build)}
    if "fp16" in precisions:
        # FP32 must not depend on FP16's converter: a conversion that fails (onnxconverter-common missing on
        # this host, an op it cannot convert) is recorded as a result without a file, and FP32 goes on.
        try:
            results["fp16"] = onnx_fp16(cfg, results["fp32"], log, build)
        except (BenchbookError, ImportError) as e:
            why = " ".join(f"{type(e).__name__}: {e}".split())[:1500]
            log(f"[export] FP16 ONNX not available ({why}); the FP32 backends are not affected")
            results["fp16"] = ExportResult(path=None, cache_hit=False, seconds=0.0, manifest={"error": why})
    for variant in ("int8", "int8_trt"):  # the same rule: a quantization that fails leaves FP32 (and FP16) standing
        if variant not in precisions:
            continue
        from .quantize import onnx_int8

        try:
            results[variant] = onnx_int8(cfg, results["fp32"], calib, log, build, variant)
        except (BenchbookError, ImportError) as e:
            why = " ".join(f"{type(e).__name__}: {e}".split())[:1500]
            log(f"[export] INT8 ONNX ({variant}) not available ({why}); the other precisions are not affected")
            results[variant] = ExportResult(path=None, cache_hit=False, seconds=0.0, manifest={"error": why})
    return results


def export_summary(results: dict[str, ExportResult], run_dir: Path | str | None = None):
    """A table of the ONNX files this run uses; also written to ``<run_dir>/export.json``."""
    import pandas as pd

    from ..common.cache import atomic_write_json

    rows = [{"precision": p, "path": "–", "cache hit": False, "source": "failed", "error": r.manifest["error"]}
            for p, r in results.items() if r.path is None]
    rows += [{"precision": p, "path": str(r.path), "cache hit": r.cache_hit,
             "source": ("given (model.onnx)" if r.manifest.get("given") else
                        "quantized from FP32 (QDQ, for TensorRT)" if p == "int8_trt" else
                        "quantized from FP32 (QDQ)" if p == "int8" else
                        "converted from FP32" if p != "fp32" else "exported from PyTorch"),
             "export/convert s (original)": r.manifest.get("export_s", r.manifest.get("convert_s")),
             "MB": round(r.manifest["bytes"] / 1e6, 2), "sha256": r.manifest["sha256"][:16],
             "ORT vs PyTorch cosine": (r.manifest.get("parity_vs_torch") or {}).get("cosine"),
             "FP16 vs FP32 ONNX cosine (ORT CPU)": (r.manifest.get("parity_vs_fp32") or {}).get("cosine")
             if p == "fp16" else None,
             **({"INT8 vs FP32 ONNX cosine (ORT CPU)": (r.manifest.get("parity_vs_fp32") or {}).get("cosine"),
                 "INT8 vs FP32 input-dependent cosine": (r.manifest.get("parity_vs_fp32") or {}).get("centred_cosine"),
                 "calibration": (r.manifest.get("calibration") or {}).get("label"),
                 "calibration s": r.manifest.get("calibrate_s"),
                 "top-1 agreement with FP32 (calibration inputs)": ((r.manifest.get("parity_vs_fp32") or {})
                                                                    .get("top1_agreement_calibration") or {}).get("share"),
                 "CUDA EP nodes without a kernel (ORT FAQ)": (r.manifest.get("cuda_ep_estimate") or {}).get("nodes")}
                if p.startswith("int8") else {})}
            for p, r in results.items() if r.path is not None]
    if run_dir:
        atomic_write_json(Path(run_dir) / "export.json", {"files": rows})
    return pd.DataFrame(rows)
