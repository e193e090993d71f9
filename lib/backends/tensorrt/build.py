"""TensorRT engine builds from the exported ONNX, cached on disk.

Networks are built STRONGLY TYPED: the ONNX carries the precision (the FP32 export, or the FP16
file that ``lib.artifacts.export.onnx_fp16`` makes), and no FP16/INT8 builder flag is ever set (TensorRT 11
removed them; TensorRT-RTX never had them). Works with ``tensorrt`` (10.12+ / 11) and with
``tensorrt_rtx`` (TensorRT-RTX), whose builder also runs on a machine without a GPU: it then makes
an ahead-of-time (AOT) engine for a list of compute-capability targets, compiled just in time on
the GPU that loads it.

Cache layout under ``<cache_dir>/trt/``::

    <key>/engine.plan        serialized engine
    <key>/manifest.json      its sha256 and size (lib.common.cache) + what it was built from, build time
    timing/<name>.cache      TensorRT's timing cache, per module version and GPU (not for RTX)

``<key>`` hashes everything the plan depends on: the ONNX bytes, the precision, the profile, the
build options, the TensorRT module and version, and the target (GPU name and compute capability,
or ``cpu-aot`` plus the AOT targets). A plan whose bytes no longer match its manifest, or that
TensorRT-RTX reports invalid, is rebuilt with a warning.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...common.cache import atomic_write_bytes, sha256_bytes, sha256_file, valid_artifact, write_manifest
from ...common.errors import BenchbookError, ConfigError, UnavailableError
from ...config.model_config import BATCH_DIM, ModelConfig, Shape
from ..base import Library

__all__ = ["BuildResult", "FLAVOURS", "TENSORRT_LIBRARIES", "PRECISIONS", "onnx_variant", "DEFAULT_AOT_TARGETS", "import_trt", "trt_version",
           "install_hint", "check_profile", "check_precision", "check_build_options", "gpu_identity", "supported_rtx_targets", "profile_shapes",
           "engine_key", "build_engine", "trt_logger"]

FLAVOURS = ("tensorrt", "tensorrt_rtx")  # module names, in order of preference
# Their distributions: the CUDA-specific wheels install the same module as the plain one.
TENSORRT_LIBRARIES = (Library("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")),
                      Library("tensorrt_rtx", ("tensorrt-rtx", "tensorrt-rtx-cu13")))
PRECISIONS = ("fp32", "fp16", "int8")  # what an exported ONNX exists for (int8: the QDQ file of lib.artifacts.quantize)
# TensorRT-RTX's documented default AOT targets (Ampere, Ada, consumer Blackwell, plus GA10x).
DEFAULT_AOT_TARGETS = ("8.0", "8.6", "8.9", "12.0")
KEY_SCHEMA = 1  # bump when the build code changes what an engine contains
ENGINE_FILE = "engine.plan"


def onnx_variant(precision: str) -> str:
    """The exported ONNX a TensorRT build of ``precision`` reads, whichever runtime drives the build (this
    package's engine, ONNX Runtime's TensorRT EP): INT8 is the QDQ file made by TensorRT's Q/DQ placement rules
    (lib.artifacts.quantize), an explicitly quantized, strongly typed network; the others are the precision's own."""
    return "int8_trt" if precision == "int8" else precision


Log = Callable[[str], None]


@dataclass
class BuildResult:
    path: Path  # the engine plan
    key: str  # cache key (sha256 hex)
    cache_hit: bool
    build_s: float  # seconds this call spent building (0.0 on a cache hit; the original is manifest["build_s"])
    manifest: dict
    warning: str = ""  # e.g. TensorRT-RTX reports the cached plan SUBOPTIMAL for this GPU (it runs, slower)


# --- which TensorRT --------------------------------------------------------------------------------
def import_trt(flavour: str | None = None):
    """(module, flavour): ``tensorrt`` when installed, else ``tensorrt_rtx``; ``flavour`` forces one."""
    if flavour is not None and flavour not in FLAVOURS:
        raise ConfigError(f"TensorRT flavour {flavour!r} is not valid; use one of {', '.join(FLAVOURS)}")
    names = FLAVOURS if flavour is None else (flavour,)
    broken = []
    for name in names:
        try:
            return importlib.import_module(name), name
        except ModuleNotFoundError as e:
            if e.name != name:  # installed, but something it needs is missing
                broken.append(f"{name}: {e}")
        except (ImportError, OSError) as e:  # e.g. a shared library of the wheel failed to load
            broken.append(f"{name}: {type(e).__name__}: {e}")
    if broken:
        raise UnavailableError(f"TensorRT is installed but does not import ({'; '.join(broken)})")
    raise UnavailableError(f"{' or '.join(names)} is not installed ({install_hint()}; or tensorrt-rtx-cu13 for "
                           f"RTX GPUs and for builds on a machine without a GPU)")


def install_hint(cuda_version: str | None = "auto") -> str:
    """``pip install tensorrt-cuXX`` for the CUDA major that torch was built with (12 or 13)."""
    if cuda_version == "auto":
        try:
            import torch

            cuda_version = torch.version.cuda
        except ImportError:
            cuda_version = None
    major = str(cuda_version or "").split(".")[0]
    if major in ("12", "13"):
        return f"pip install tensorrt-cu{major} (matches torch's CUDA {cuda_version})"
    return "pip install tensorrt-cu13 (or tensorrt-cu12: match torch.version.cuda)"


def trt_version(trt) -> str:
    return str(getattr(trt, "__version__", "?"))


class _ForwardingLogger:
    """One logger per TensorRT module (TensorRT keeps the first one it sees for the whole process).

    WARNING and worse go to ``sink`` (the current call's ``log``); errors are also kept so a failed
    build can quote them.
    """

    def __init__(self, trt):
        base = trt.ILogger
        sev = trt.ILogger.Severity
        errors_at = {sev.INTERNAL_ERROR, sev.ERROR}
        outer = self

        class _Impl(base):
            def __init__(self):
                base.__init__(self)

            def log(self, severity, msg):
                if severity in errors_at:
                    outer.errors.append(str(msg))
                    outer.sink(f"[trt] error: {msg}")
                elif severity == sev.WARNING:
                    outer.sink(f"[trt] warning: {msg}")

        self.sink: Log = lambda _msg: None
        self.errors: list[str] = []
        self.impl = _Impl()


_LOGGERS: dict[str, _ForwardingLogger] = {}


def trt_logger(trt, log: Log | None = None):
    """The process-wide TensorRT logger of module ``trt``, now forwarding to ``log``."""
    fwd = _LOGGERS.get(trt.__name__)
    if fwd is None:
        fwd = _LOGGERS[trt.__name__] = _ForwardingLogger(trt)
    fwd.sink = log or (lambda _msg: None)
    fwd.errors = []
    return fwd


# --- checks done before any build ------------------------------------------------------------------
def check_profile(cfg: ModelConfig, batch_sizes, shapes) -> list[Shape]:
    """Every batch size and shape must lie inside the model's profile; returns the parsed shapes.

    Runs before any build, so a sweep that the engine could not serve fails in a second, not after a
    build. ``shapes`` are ``Shape`` objects or strings such as '240x240' / 'static'.
    """
    lo, hi = cfg.profile_range(BATCH_DIM)
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int):
            raise ConfigError(f"BATCH_SIZES: {b!r} is not an integer")
        try:
            cfg.check_batch(b)
        except ConfigError:
            raise ConfigError(f"BATCH_SIZES: {b} is outside the TensorRT profile of model {cfg.name!r} "
                              f"(batch {lo}..{hi}, from {cfg.path})") from None
    parsed = []
    for s in shapes:
        shape = s if isinstance(s, Shape) else cfg.parse_shape(s)  # bad form or out of range: named there
        for dim, value in shape.values:
            dlo, dhi = cfg.profile_range(dim)
            if not dlo <= value <= dhi:
                raise ConfigError(f"SHAPES: {shape.label} ({dim}={value}) is outside the TensorRT profile of "
                                  f"model {cfg.name!r} ({dim} {dlo}..{dhi}, from {cfg.path})")
        parsed.append(shape)
    return parsed


def check_precision(precision: str) -> None:
    if precision == "bf16":
        raise ConfigError("PRECISIONS: bf16: no BF16 ONNX is produced yet (the export makes FP32 and FP16), and a "
                          "strongly typed TensorRT build takes its precision from the ONNX; use fp32 or fp16")
    if precision not in PRECISIONS:
        raise ConfigError(f"PRECISIONS: {precision!r} is not a TensorRT precision; valid: {', '.join(PRECISIONS)}")


def check_build_options(workspace_gib, opt_level) -> tuple[float, int]:
    """(workspace GiB, optimization level), validated; errors name the value and the valid range."""
    if isinstance(workspace_gib, bool) or not isinstance(workspace_gib, (int, float)) \
            or not math.isfinite(workspace_gib) or workspace_gib <= 0:
        raise ConfigError(f"TRT_WORKSPACE: {workspace_gib!r} is not valid; give a positive number of GiB "
                          f"(e.g. 4), the most scratch memory a layer may use while TensorRT picks kernels")
    if isinstance(opt_level, bool) or not isinstance(opt_level, int) or not 0 <= opt_level <= 5:
        raise ConfigError(f"TRT_OPT_LEVEL: {opt_level!r} is not valid; TensorRT's builder optimization level is "
                          f"an integer 0..5 (default 3; higher builds longer, may run faster)")
    return float(workspace_gib), int(opt_level)


def profile_shapes(cfg: ModelConfig) -> dict[str, dict[str, list[int]]]:
    """{input: {'min': [...], 'opt': [...], 'max': [...]}} from the model config."""
    return {s.name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)} for s in cfg.inputs}


# --- the target the engine is built for ------------------------------------------------------------
def gpu_identity() -> tuple[str, str] | None:
    """(name, 'major.minor') of the GPU builds and runs use (torch's current device), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return torch.cuda.get_device_name(), f"{major}.{minor}"
    except Exception:  # torch without CUDA, or a broken driver: try NVML, which needs neither
        pass
    try:
        from ...common.gpu import first_gpu_handle, nvml, text

        handle = first_gpu_handle()
        major, minor = nvml().nvmlDeviceGetCudaComputeCapability(handle)
        return text(nvml().nvmlDeviceGetName(handle)), f"{major}.{minor}"
    except Exception:
        return None


def supported_rtx_targets(trt) -> dict[str, object]:
    """{'8.9': trt.ComputeCapability.SM89, ...}: the AOT targets this TensorRT-RTX version exposes."""
    out = {}
    for name in dir(trt.ComputeCapability):
        if name.startswith("SM") and name[2:].isdigit():
            digits = name[2:]
            out[f"{digits[:-1]}.{digits[-1]}"] = getattr(trt.ComputeCapability, name)
    return dict(sorted(out.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))


def _rtx_targets(trt, wanted) -> list[str]:
    available = supported_rtx_targets(trt)
    out = []
    for cc in wanted:
        cc = str(cc).strip().upper().removeprefix("SM")
        if "." not in cc and cc.isdigit():
            cc = f"{cc[:-1]}.{cc[-1]}"  # 'SM89' / '89' -> '8.9'
        if cc not in available:
            raise ConfigError(f"compute capability {cc!r} is not a TensorRT-RTX {trt_version(trt)} target; "
                              f"valid: {', '.join(available)}")
        if cc not in out:
            out.append(cc)
    return out


def _resolve_target(trt, flavour: str, compute_capabilities) -> tuple[str, list[str]]:
    """(target string for the cache key, AOT compute capabilities: empty = build for the current GPU)."""
    gpu = gpu_identity()
    if flavour == "tensorrt":
        if compute_capabilities:
            raise ConfigError("compute_capabilities (AOT targets) apply to TensorRT-RTX only; TensorRT builds "
                              "for the GPU it runs on")
        if gpu is None:
            raise UnavailableError("TensorRT needs a CUDA GPU to build an engine and none is visible here; "
                                   "TensorRT-RTX (pip install tensorrt-rtx-cu13) builds ahead of time without one")
        return f"gpu:{gpu[0]}|sm{gpu[1]}", []
    if compute_capabilities:
        targets = _rtx_targets(trt, compute_capabilities)
        return "aot:" + ",".join(targets), targets
    if gpu is None:
        # No GPU: an AOT build for the documented default targets this version exposes.
        targets = [cc for cc in DEFAULT_AOT_TARGETS if cc in supported_rtx_targets(trt)]
        return "cpu-aot:" + ",".join(targets), targets
    if gpu[1] not in supported_rtx_targets(trt):
        raise UnavailableError(rtx_unsupported_gpu_reason(trt, *gpu))
    return f"gpu:{gpu[0]}|sm{gpu[1]}", [gpu[1]]


def rtx_unsupported_gpu_reason(trt, name: str, cc: str) -> str:
    hopper = " (Hopper data-center GPUs such as H100/H200)" if cc == "9.0" else ""
    return (f"TensorRT-RTX {trt_version(trt)} does not support {name}: compute capability {cc}{hopper} is not "
            f"among its targets {', '.join(supported_rtx_targets(trt))}; install TensorRT instead: {install_hint()}")


# --- cache key ---------------------------------------------------------------------------------------
def engine_key(onnx_sha256: str, precision: str, profiles: dict, workspace_gib: float, opt_level: int, tf32: bool,
               module: str, version: str, target: str) -> tuple[str, dict]:
    """(sha256 hex, the parts it hashes): everything the plan's bytes depend on."""
    parts = {"schema": KEY_SCHEMA, "onnx_sha256": onnx_sha256, "precision": precision, "profiles": profiles,
             "workspace_gib": workspace_gib, "opt_level": opt_level, "tf32": bool(tf32), "module": module,
             "version": version, "target": target}
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode()), parts


# --- build ------------------------------------------------------------------------------------------
def _parse(trt, logger, onnx_path: Path):
    builder = trt.Builder(logger.impl)
    # STRONGLY_TYPED: dtypes come from the ONNX. Portable over TensorRT 10.12+, 11 (always on) and RTX.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger.impl)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: resolves external data (> 2 GB models)
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        listed = "; ".join(f"({i + 1}) {e}" for i, e in enumerate(errors)) or "no error recorded"
        raise BenchbookError(f"{trt.__name__} {trt_version(trt)} could not parse {onnx_path}: "
                             f"{len(errors)} error(s): {listed}")
    return builder, network, parser


def _check_network_inputs(cfg: ModelConfig, network) -> None:
    """The ONNX's inputs must be the config's, with the config's static dims."""
    onnx_inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    wanted = [s.name for s in cfg.inputs]
    if sorted(onnx_inputs) != sorted(wanted):
        raise ConfigError(f"{cfg.path}: inputs {wanted} do not match the ONNX's inputs {sorted(onnx_inputs)}; "
                          f"the TensorRT profile is set by input name")
    for spec in cfg.inputs:
        shape = tuple(onnx_inputs[spec.name].shape)
        if len(shape) != len(spec.dims) or any(d != -1 and d != lo for d, lo in zip(shape, spec.min)):
            raise ConfigError(f"{cfg.path}: input {spec.name!r}: the profile (min {list(spec.min)}, max "
                              f"{list(spec.max)}) does not fit the ONNX's shape {list(shape)} (-1 = dynamic)")


def _tensor_dtypes(network) -> dict[str, int]:
    """How many layer outputs of each dtype the parsed network has (FP16 ONNX -> HALF shows up)."""
    counts: dict[str, int] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            name = str(layer.get_output(j).dtype).split(".")[-1]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _timing_cache_path(cache_root: Path, module: str, version: str, target: str) -> Path:
    return cache_root / "timing" / f"{module}-{version}-{sha256_bytes(target.encode())[:12]}.cache"


def _load_timing_cache(config, path: Path, log: Log) -> str:
    """Attach the on-disk timing cache, or an empty one; an unusable file is dropped with a warning."""
    data = path.read_bytes() if path.exists() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return "loaded"
            problem = "TensorRT refused it"
        except Exception as e:  # corrupt bytes
            problem = f"{type(e).__name__}: {e}"
        log(f"[trt] warning: timing cache {path} is unusable ({problem}: corrupt, or from another GPU or "
            f"version); starting with an empty one")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return "new"


def _save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write_bytes(path, bytes(cache.serialize()))  # atomic: a concurrent build never reads half a file


def _builder_config(trt, builder, network, cfg: ModelConfig, workspace_gib: float, opt_level: int, tf32: bool,
                    targets: list[str]):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))  # bytes
    config.builder_optimization_level = opt_level
    if hasattr(trt.BuilderFlag, "TF32"):  # TF32 is on by default: it only needs clearing
        (config.set_flag if tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    if targets:  # TensorRT-RTX AOT: the GPU generations the engine will be compiled for at load time
        available = supported_rtx_targets(trt)
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            config.set_compute_capability(available[cc], i)
    profile = builder.create_optimization_profile()
    for spec in cfg.inputs:
        profile.set_shape(spec.name, tuple(spec.min), tuple(spec.opt), tuple(spec.max))
    config.add_optimization_profile(profile)
    return config


def plan_validity_message(trt, validity, diagnostics, plan_path: Path) -> tuple[str | None, str]:
    """(why the plan cannot be used, or None; a warning, or "") from TensorRT-RTX's ``get_engine_validity``:
    INVALID is rebuilt; SUBOPTIMAL runs, but slower than a plan built for this GPU, so it is said, not used
    silently."""
    flags = [name for name, member in trt.EngineInvalidityDiagnostics.__members__.items()
             if int(diagnostics) & int(member)]
    detail = ", ".join(flags) or "no diagnostics"
    if validity == trt.EngineValidity.INVALID:
        return f"TensorRT-RTX reports the cached plan {plan_path} invalid ({detail})", ""
    if validity == trt.EngineValidity.SUBOPTIMAL:
        return None, (f"TensorRT-RTX reports the plan {plan_path} SUBOPTIMAL for this GPU ({detail}): it runs, but "
                      f"its latencies may be worse than a plan built here; delete that folder to rebuild it")
    return None, ""


def _cached_plan_problem(trt, flavour: str, plan_path: Path) -> tuple[str | None, str]:
    """(why a plan whose hash matches still cannot be used here, or None; a warning, or ""). TensorRT-RTX can
    tell before loading (needs a GPU); with TensorRT a failed deserialize tells, which the engine handles."""
    if flavour != "tensorrt_rtx" or gpu_identity() is None or not hasattr(trt.Runtime, "get_engine_validity"):
        return None, ""
    runtime = trt.Runtime(trt_logger(trt).impl)
    validity, diagnostics = runtime.get_engine_validity(plan_path.read_bytes())
    return plan_validity_message(trt, validity, diagnostics, plan_path)


def build_engine(onnx_path: Path | str, cfg: ModelConfig, precision: str, cache_dir: Path | str, *,
                 workspace_gib: float = 4, opt_level: int = 3, tf32: bool = True, log: Log = print,
                 flavour: str | None = None, compute_capabilities=None, force: bool = False) -> BuildResult:
    """The serialized engine of ``onnx_path`` for ``cfg``'s profile: from the cache when valid, else built.

    ``precision`` names what the ONNX holds (fp32 / fp16), for the key and the manifest; it sets no
    builder flag. ``compute_capabilities`` (TensorRT-RTX only), e.g. ``("8.6", "8.9")``, forces an AOT
    build for those targets; without it RTX builds for the current GPU, or AOT for
    ``DEFAULT_AOT_TARGETS`` when there is none. ``force`` rebuilds even when the cache is valid.
    """
    check_precision(precision)
    workspace_gib, opt_level = check_build_options(workspace_gib, opt_level)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BenchbookError(f"ONNX model {onnx_path} does not exist (export it first: lib.artifacts.export.ensure_onnx)")
    trt, flavour = import_trt(flavour)
    version = trt_version(trt)
    target, targets = _resolve_target(trt, flavour, compute_capabilities)
    profiles = profile_shapes(cfg)
    key, parts = engine_key(sha256_file(onnx_path), precision, profiles, workspace_gib, opt_level, tf32,
                            flavour, version, target)
    root = Path(cache_dir) / "trt"
    folder = root / key[:16]  # 64 bits of the key name the folder; the manifest holds the whole key
    manifest, why = valid_artifact(folder, ENGINE_FILE)
    if manifest and manifest.get("key") != key:
        manifest, why = None, f"{folder} holds another engine (key {manifest.get('key')})"
    if manifest and not force:
        problem, warning = _cached_plan_problem(trt, flavour, folder / ENGINE_FILE)
        if problem is None:
            if warning:
                log(f"[trt] warning: {warning}")
            return BuildResult(folder / ENGINE_FILE, key, True, 0.0, manifest, warning)
        why = problem
    if force:
        why = why or "rebuild forced"
    if why != "not built yet":
        log(f"[trt] warning: rebuilding the {cfg.name} {precision} engine: {why}")
    return _build(trt, flavour, onnx_path, cfg, precision, folder, root, key, parts, targets, log)


def _build(trt, flavour, onnx_path, cfg, precision, folder, root, key, parts, targets, log) -> BuildResult:
    logger = trt_logger(trt, log)
    builder, network, _parser = _parse(trt, logger, onnx_path)
    _check_network_inputs(cfg, network)
    config = _builder_config(trt, builder, network, cfg, parts["workspace_gib"], parts["opt_level"], parts["tf32"],
                             targets)
    tc_path = _timing_cache_path(root, flavour, parts["version"], parts["target"])
    # TensorRT-RTX: timing-cache calls are deprecated no-ops (1.2+), so none are made.
    tc_state = "not used (TensorRT-RTX)" if flavour == "tensorrt_rtx" else _load_timing_cache(config, tc_path, log)
    log(f"[trt] building {cfg.name} {precision} with {flavour} {parts['version']} for {parts['target']} ...")
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)  # releases the GIL; None on failure
    build_s = time.perf_counter() - t0
    if plan is None:
        errors = "; ".join(logger.errors[-10:]) or "no error logged"
        raise BenchbookError(f"{flavour} {parts['version']} could not build {onnx_path} ({cfg.name}, {precision}): "
                             f"{errors}")
    if flavour != "tensorrt_rtx":
        _save_timing_cache(config, tc_path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / ENGINE_FILE, bytes(plan))  # the manifest follows: a plan without one is rebuilt
    manifest = write_manifest(folder, ENGINE_FILE, key=key, key_parts=parts, model=cfg.name, config=str(cfg.path),
                              precision=precision, onnx=str(onnx_path), flavour=flavour, trt_version=parts["version"],
                              target=parts["target"], compute_capabilities=targets,
                              build_s=round(build_s, 3), timing_cache=tc_state,
                              timing_cache_path=None if flavour == "tensorrt_rtx" else str(tc_path),
                              network_dtypes=_tensor_dtypes(network), built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    log(f"[trt] built {cfg.name} {precision} in {build_s:.1f} s ({manifest['bytes'] / 2**20:.1f} MiB plan)")
    return BuildResult(folder / ENGINE_FILE, key, False, build_s, manifest)
