"""INT8 ONNX by static quantization (ONNX Runtime's ``quantize_static``), cached like the FP16 file.

What is made. ``onnx_int8`` quantizes the FP32 ONNX to the QDQ format (QuantizeLinear/DequantizeLinear pairs
around each quantized op), signed 8-bit activations and weights (S8S8), weights per output channel, ranges
from MinMax calibration, in one of two variants (``VARIANTS``):

* ``int8`` for ONNX Runtime: its defaults (activations with a zero point, INT32 biases), which the CPU EP
  fuses into integer kernels, with 7-bit weights (``reduce_range``): on an x86 CPU without VNNI the CPU EP's
  8-bit x 8-bit kernels sum pairs of products in saturating 16-bit lanes, which lost the input-dependent part
  of the tiny test CNN's output (centred cosine 0.62 on an AVX2-only EPYC; 0.99+ with 7-bit weights, which
  cannot saturate). ONNX Runtime's quantization docs give the same advice for such CPUs;
* ``int8_trt`` for TensorRT (``trt``, ``ort-trt``): symmetric activations (zero point 0) and FP32 biases,
  as TensorRT's explicit quantization requires (its parser refuses an INT32 DequantizeLinear: "input has
  type Int32 but must have type FP8, FP4, Int4, Int8, or UInt8", TensorRT-RTX 1.7). TensorRT builds it as a
  strongly typed network (``lib.backends.tensorrt.build``). On ORT's CPU EP this variant runs no faster than FP32 (resnet50
  at batch 4 on a 2-core CPU, mean of 4 runs: 290 ms vs 291 ms FP32 and 221 ms for ``int8``), hence two files.

Calibration. On ``CALIB=<folder of images>`` (any layout; preprocessed as for DATA, from the model config),
at most ``MAX_CALIB_IMAGES`` of them, spread evenly over the sorted file list; without CALIB, on seeded
inputs drawn from the model config (the ``int8-calibration<i>`` streams, apart from the timed, parity and
centre streams). The source is recorded in the manifest and shown in the report: seeded inputs calibrate
ranges for noise, not for the data the model will see.

Cache. ``<fp32 cache folder>/int8-<key>/model.onnx`` where the key hashes the FP32 ONNX's sha256, the
calibration source (the images' bytes, or the seeded recipe), ONNX Runtime's version, the settings and
this file. The manifest holds the calibration and quantization times, the file's size beside the FP32
one's, the op counts, parity against the FP32 file on the CPU EP (INT8 thresholds, input-dependent part
included) and top-1 agreement with FP32 on the calibration inputs.

CUDA EP. ONNX Runtime's FAQ: "The default CUDA build supports 3 standard quantization operators:
QuantizeLinear, DequantizeLinear, and MatMulInteger"; any other integer op (QLinearConv, ConvInteger, ...)
has no CUDA kernel and runs on the CPU EP. A QDQ file holds only those ops and float ones, so the CUDA EP
takes every node, but it runs them as separate Q/DQ kernels around float Conv/MatMul (the QDQ -> integer
fusions are CPU-EP transforms): no INT8 math there. ``cuda_ep_estimate`` counts from the file which nodes
could not run on the CUDA EP; the engine records the placement ONNX Runtime actually chose
(``lib.backends.ort.engine``).
"""

from __future__ import annotations

import importlib.metadata as md
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.cache import sha256_bytes, sha256_file, write_manifest
from ..common.errors import BenchbookError, ConfigError
from ..config.inputs import make_inputs
from ..config.model_config import BATCH_DIM, ModelConfig
from ..measure.reference import onnx_cpu_outputs, onnx_cpu_session

__all__ = ["CalibSource", "check_calib", "calibration_source", "calibration_batches", "onnx_int8", "int8_key",
           "cuda_ep_estimate", "SETTINGS", "MAX_CALIB_IMAGES", "SEEDED_CALIB_ITEMS", "CUDA_QUANT_OPS"]

# What quantize_static is asked for (recorded in the manifest and hashed into the key).
SETTINGS = {"format": "QDQ", "activations": "QInt8", "weights": "QInt8", "per_channel": True,
            "calibrate_method": "MinMax", "preprocess": "onnxruntime.quantization.quant_pre_process"}
# variant -> quantize_static extra_options (see the module docstring)
VARIANTS = {"int8": {}, "int8_trt": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}}
# variants quantized with 7-bit weights (see the module docstring: saturation on x86 CPUs without VNNI);
# TensorRT's INT8 kernels do not saturate that way, so its variant keeps the full 8 bits
REDUCE_RANGE = {"int8": True, "int8_trt": False}
MAX_CALIB_IMAGES = 256  # more images widen MinMax ranges little and cost minutes of calibration
SEEDED_CALIB_ITEMS = 32  # seeded inputs when no CALIB is given
CALIB_BATCH = 8
# ONNX Runtime FAQ (docs/FAQ.md): the quantization operators the default CUDA build has kernels for.
CUDA_QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "MatMulInteger")
# Integer ops ONNX Runtime may put in a quantized graph (the QOperator format, or fusions); none but
# MatMulInteger has a CUDA kernel.
_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
                "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu",
                "QLinearSigmoid", "QLinearSoftmax", "QGemm", "QAttention", "DynamicQuantizeLinear")


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "-"


def ort_version() -> str:
    v = _version("onnxruntime-gpu")
    return v if v != "-" else _version("onnxruntime")


@dataclass
class CalibSource:
    kind: str                 # "images" (CALIB) or "seeded" (inputs drawn from the model config)
    label: str                # what the report says
    sha256: str               # hashes the data: the images' bytes, or the seeded recipe
    paths: list[Path] = field(default_factory=list)  # the images used (kind "images")
    root: str = ""
    found: int = 0            # images found under root (paths may be fewer: MAX_CALIB_IMAGES)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "sha256": self.sha256, "root": self.root,
                "images_found": self.found, "images_used": len(self.paths),
                "files": [str(p.relative_to(self.root)) for p in self.paths][:20]}


def _image_files(root: Path) -> list[Path]:
    from ..measure.accuracy import IMAGE_EXTENSIONS

    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _geometry(cfg: ModelConfig, calib: str) -> dict:
    """The model's image preprocessing (as for DATA), errors naming CALIB."""
    from ..measure.accuracy import image_geometry

    try:
        return image_geometry(cfg)
    except ConfigError as e:
        msg = str(e).replace("DATA: accuracy needs", "calibration images need").removeprefix("DATA: ")
        raise ConfigError(f"CALIB={calib!r} cannot calibrate model {cfg.name!r}: {msg}; leave CALIB empty to "
                          f"calibrate on seeded inputs from {cfg.path}") from None


def check_calib(cfg: ModelConfig, calib: str) -> int:
    """Everything about CALIB that can be checked before any work (no image is decoded); returns how many
    images it holds."""
    from ..measure.accuracy import IMAGE_EXTENSIONS

    root = Path(calib).expanduser()
    if not root.is_dir():
        raise ConfigError(f"CALIB={str(calib)!r} is not a folder; give a folder of images (any layout, e.g. "
                          f"the DATA folder) to calibrate INT8 on, or leave CALIB empty for seeded inputs")
    files = _image_files(root)
    if not files:
        raise ConfigError(f"CALIB={str(calib)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} in it "
                          f"and its sub-folders)")
    _geometry(cfg, calib)
    return len(files)


def _spread(files: list[Path], n: int) -> list[Path]:
    if len(files) <= n:
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in sorted(set(idx.tolist()))]


def calibration_source(cfg: ModelConfig, calib: str | None) -> CalibSource:
    """The calibration data's identity: which images (hashed by content) or which seeded recipe."""
    if calib:
        check_calib(cfg, calib)
        root = Path(calib).expanduser().resolve()
        found = _image_files(root)
        paths = _spread(found, MAX_CALIB_IMAGES)
        digest = sha256_bytes("\n".join(f"{p.relative_to(root)}|{sha256_file(p)}" for p in paths).encode())
        cut = f", {len(paths)} of {len(found)} spread over the folder" if len(paths) < len(found) else ""
        return CalibSource("images", f"{len(paths)} images from CALIB={root}{cut}", digest, paths, str(root),
                           len(found))
    recipe = f"seeded|{SEEDED_CALIB_ITEMS}|{CALIB_BATCH}|int8-calibration"
    return CalibSource("seeded", f"{SEEDED_CALIB_ITEMS} seeded inputs from the model config (no CALIB: ranges "
                                 f"calibrated on synthetic data, not on real inputs)", sha256_bytes(recipe.encode()))


def _batch_size(cfg: ModelConfig) -> int:
    lo, hi = cfg.profile_range(BATCH_DIM)
    return max(lo, min(CALIB_BATCH, hi))


def calibration_batches(cfg: ModelConfig, source: CalibSource) -> list[dict[str, np.ndarray]]:
    """The calibration inputs, in batches the model's profile accepts."""
    from .export import example_shape

    batch = _batch_size(cfg)
    if source.kind == "seeded":
        _, shape = example_shape(cfg)
        return [make_inputs(cfg, batch, shape, 0, stream=f"int8-calibration{i}")
                for i in range(-(-SEEDED_CALIB_ITEMS // batch))]
    from ..measure.accuracy import preprocess

    geo = _geometry(cfg, source.root)
    lo, _ = cfg.profile_range(BATCH_DIM)
    out = []
    for start in range(0, len(source.paths), batch):
        chunk = [preprocess(p, geo) for p in source.paths[start:start + batch]]
        chunk += [chunk[-1]] * max(0, lo - len(chunk))  # a last batch below the profile's minimum: padded
        out.append({geo["input"]: np.stack(chunk).astype(np.float32)})
    return out


def int8_key(fp32_sha256: str, source: CalibSource, variant: str = "int8") -> str:
    parts = [fp32_sha256, source.sha256, f"onnxruntime={ort_version()}", repr(sorted(SETTINGS.items())),
             variant, repr(sorted(VARIANTS[variant].items())), f"reduce_range={REDUCE_RANGE[variant]}", sha256_file(Path(__file__))]
    return sha256_bytes("|".join(parts).encode())[:12]


class _Reader:
    """quantize_static's CalibrationDataReader protocol: ``get_next()`` until None."""

    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax; the protocol lists it
        pass


def cuda_ep_estimate(model) -> dict:
    """From the file (ONNX Runtime's FAQ): nodes with an integer op that the default CUDA build has no kernel
    for, by op type; they would run on the CPU EP."""
    ops = Counter(n.op_type for n in model.graph.node)
    unsupported = {op: n for op, n in ops.items() if op in _INTEGER_OPS and op not in CUDA_QUANT_OPS}
    return {"nodes": int(sum(unsupported.values())), "op_types": unsupported,
            "note": ("every node has a CUDA EP kernel (Q/DQ and float ops); the CUDA EP runs Q/DQ as separate "
                     "kernels around float Conv/MatMul, so no INT8 math" if not unsupported else
                     "these integer ops have no CUDA EP kernel (ONNX Runtime FAQ) and would run on the CPU EP"),
            "source": "static count from the ONNX file, ONNX Runtime FAQ; not observed on a GPU"}


def _check(cfg: ModelConfig, int8_path: Path, fp32_path: Path, batches) -> dict:
    """INT8 against FP32 on ONNX Runtime's CPU EP: parity on a fresh seeded input (input-dependent part
    included), top-1 agreement on the calibration inputs. Recorded, never raised: the benchmark checks
    every point again against PyTorch FP32."""
    from ..measure.parity import CALIBRATION_ITEMS, compare_outputs
    from .export import example_shape

    try:
        q, f = onnx_cpu_session(int8_path), onnx_cpu_session(fp32_path)
        batch, shape = example_shape(cfg)
        lo, hi = cfg.profile_range(BATCH_DIM)
        per = max(lo, min(CALIBRATION_ITEMS, hi))
        centre_out = onnx_cpu_outputs(f, make_inputs(cfg, per, shape, 0, stream="calibration0"))
        centre = {k: np.asarray(v, np.float64).mean(0) for k, v in centre_out.items() if np.ndim(v) >= 1}
        x = make_inputs(cfg, batch, shape, 0, stream="parity")
        r = compare_outputs(onnx_cpu_outputs(q, x), onnx_cpu_outputs(f, x), "int8", cfg.top_k_output, centre)
        out = {"checked": True, **{k: r[k] for k in ("passed", "cosine", "rel_err", "centred_cosine",
                                                    "centred_rel_err", "problems")}}
        if cfg.top_k_output:
            agree, n, classes = 0, 0, set()
            for b in batches:
                a, ref = onnx_cpu_outputs(q, b)[cfg.top_k_output], onnx_cpu_outputs(f, b)[cfg.top_k_output]
                if a.ndim == 2:
                    agree += int((a.argmax(1) == ref.argmax(1)).sum())
                    n += len(a)
                    classes |= set(ref.argmax(1).tolist())
            if n:
                out["top1_agreement_calibration"] = {"agree": agree, "items": n, "share": agree / n,
                                                     "fp32_classes": len(classes)}
        return out
    except Exception as e:  # e.g. an op without an INT8 kernel on the CPU EP
        return {"checked": False, "reason": f"ONNX Runtime (CPU EP) could not run it: {type(e).__name__}: "
                                            f"{str(e)[:300]}"}


def onnx_int8(cfg: ModelConfig, fp32, calib: str | None = None, log=print, build: bool = True,
              variant: str = "int8"):
    """The INT8 (QDQ) ONNX of ``fp32`` (an ``lib.artifacts.export.ExportResult``), calibrated on CALIB or seeded inputs;
    ``variant`` ``int8`` (ONNX Runtime) or ``int8_trt`` (TensorRT's Q/DQ rules)."""
    from .export import ExportResult, cached_onnx

    if variant not in VARIANTS:
        raise ConfigError(f"INT8 variant {variant!r} is not valid; use one of {', '.join(VARIANTS)}")
    source = calibration_source(cfg, calib)
    folder = fp32.cache_folder / f"{variant.replace('_', '-')}-{int8_key(fp32.manifest['sha256'], source, variant)}"
    cached = cached_onnx(folder, "INT8", cfg.name, build, log)
    if cached is not None:
        return cached
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    what = "for TensorRT: symmetric, FP32 biases" if variant == "int8_trt" else "for ONNX Runtime"
    log(f"[export] {cfg.name}: INT8 (QDQ, S8S8, per-channel weights, {what}) calibrated on {source.label} ...")
    t0 = time.perf_counter()
    batches = calibration_batches(cfg, source)
    read_s = time.perf_counter() - t0
    pre, tmp = folder / "preprocessed.onnx.partial", folder / "model.onnx.partial"
    # quant_pre_process (shape inference, graph optimisation) is what ONNX Runtime's guide runs first; a
    # model it cannot process is quantized as exported, and the manifest says so.
    try:
        quant_pre_process(str(fp32.path), str(pre))
        src, preprocessed = pre, "done"
    except Exception as e:
        src, preprocessed = fp32.path, f"skipped: {type(e).__name__}: {str(e)[:300]}"
    t1 = time.perf_counter()
    try:
        quantize_static(str(src), str(tmp), _Reader(batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=REDUCE_RANGE[variant],
                        extra_options=dict(VARIANTS[variant]))
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise BenchbookError(f"{cfg.name!r}: INT8 quantization of {fp32.path} (onnxruntime {ort_version()} "
                             f"quantize_static, QDQ S8S8) failed: {type(e).__name__}: {str(e)[:500]}; INT8 backends "
                             f"cannot run this model (leave int8 out of PRECISIONS)") from e
    finally:
        pre.unlink(missing_ok=True)
        for aug in folder.glob("augmented_model*.onnx"):  # quantize_static's calibration copy, if left
            aug.unlink(missing_ok=True)
    calibrate_s = time.perf_counter() - t1 + read_s
    model = onnx.load(str(tmp))
    ops = Counter(n.op_type for n in model.graph.node)
    check = _check(cfg, tmp, fp32.path, batches)
    tmp.replace(folder / "model.onnx")
    manifest = write_manifest(
        folder, "model.onnx", precision="int8", variant=variant, extra_options=VARIANTS[variant],
        reduce_range=REDUCE_RANGE[variant], convert_s=round(time.perf_counter() - t0, 3),
        calibrate_s=round(calibrate_s, 3), calibration=source.to_dict(), calibration_items=int(sum(
            len(next(iter(b.values()))) for b in batches)), quantizer=f"onnxruntime {ort_version()} quantize_static",
        settings=SETTINGS, preprocessed=preprocessed, source_sha256=fp32.manifest["sha256"],
        fp32_bytes=int(fp32.path.stat().st_size), ops={k: int(v) for k, v in sorted(ops.items())},
        quantized_nodes=int(ops.get("QuantizeLinear", 0)), cuda_ep_estimate=cuda_ep_estimate(model),
        parity_vs_fp32=check)
    if not check["checked"]:
        note = f"not compared with FP32 ({check['reason']})"
    else:
        note = (f"ONNX Runtime (CPU EP) vs FP32 ONNX: cosine {check['cosine']:.5f}, input-dependent part "
                f"{check['centred_cosine']:.4f}" + ("" if check["passed"] else " (beyond the INT8 thresholds)"))
    log(f"[export] {cfg.name}: INT8 ONNX ({manifest['bytes'] / 1e6:.1f} MB, FP32 {manifest['fp32_bytes'] / 1e6:.1f} "
        f"MB) in {manifest['convert_s']:.1f} s (calibration {calibrate_s:.1f} s); {note}")
    return ExportResult(folder / "model.onnx", False, manifest["convert_s"], manifest)
