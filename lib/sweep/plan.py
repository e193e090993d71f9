"""The plan step: validate every parameter, resolve ``auto`` values, pick the backends that can run
here, and create the run folder. It runs before any export or benchmark (seconds, no torch import
unless WEIGHTS is given), so bad input fails fast and nothing measured is touched.

Run folder: ``<reports>/<model>/<run_id>/`` with ``params.json`` (what was asked), ``plan.json``
(what will run and what is skipped, with reasons) and ``plan.mk`` (the same for make). An existing
run folder is only ever resumed with the same parameters, never overwritten.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..artifacts.export import ensure_onnx, export_key
from ..common.cache import atomic_write_json, atomic_write_text, new_folder, read_json
from ..common.errors import BenchbookError, ConfigError, UnavailableError
from ..common.runstate import (FINGERPRINT_FILE, CorruptFile, RunBusy, check_fingerprint, fingerprint, lock_holder,
                               read_run_json, write_fingerprint)
from ..common.stats import parse_outlier_rule
from ..config.device import resolve_device
from ..config.model_config import BATCH_DIM, ModelConfig, Shape, split_shape
from ..config.models import build_model, check_load_py, check_weights_file, get_model, is_given_onnx
from ..config.params import RunParams, check_make_path, parse_int_list, parse_list, show, show_item
from ..measure.timing import TimingPolicy

__all__ = ["Plan", "make_plan", "run_onnx", "new_run_id", "check_run_id", "load_plan", "parse_shapes", "resolve_points", "planned_points",
           "resumable_runs"]

# Parameters whose change makes a different run (a resume must keep them).
_RUN_DEFINING = ("model", "backends", "precisions", "batch_sizes", "shapes", "device", "weights", "seed",
                 "warmup", "iters", "duration", "rounds", "point_cap", "ci_target", "channels_last", "tf32",
                 "compile_mode", "data", "price_per_hour", "calib", "load", "concurrency", "rates")
# Also fixed for a resume: a resumed run goes on with params.json as first written, so a different value on
# the command line would be silently ignored (other engines, another model folder) unless refused.
_RESUME_FIXED = ("trt_workspace_gib", "trt_opt_level", "cache_dir", "models_dir", "max_acc_drop")
_MAKE_NAME = {"trt_workspace_gib": "TRT_WORKSPACE"}  # the make variable, where it is not the field's name


@dataclass
class Plan:
    run_dir: Path
    params: RunParams
    device: str
    batch_sizes: list[int]
    shapes: list[str]
    combos: list[dict]            # {"backend", "precision"} to run
    skipped: list[dict] = field(default_factory=list)  # {"backend", "precision", "reason"}
    onnx_dir: str = ""
    onnx_precisions: list[str] = field(default_factory=list)
    resumed: bool = False

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "device": self.device, "batch_sizes": self.batch_sizes,
                "shapes": self.shapes, "combos": self.combos, "skipped": self.skipped, "onnx_dir": self.onnx_dir,
                "onnx_precisions": self.onnx_precisions, "resumed": self.resumed}


def new_run_id(device: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{device}"


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"{show('RUN_ID', run_id)} is not valid: use letters, digits, '.', '_' or '-' (the name of a "
                          f"folder under REPORTS_DIR/<model>/, e.g. RUN_ID=20250101-120000-cuda); "
                          f"leave it empty for a new run")


def _profile_text(cfg: ModelConfig, dims) -> str:
    return ", ".join(f"{d} {lo}..{hi}" for d in dims for lo, hi in [cfg.profile_range(d)])


def parse_shapes(cfg: ModelConfig, text: str, device: str = "cuda") -> list[Shape]:
    """``SHAPES`` for ``cfg``: 'auto' (the config's defaults for ``device``) or a comma-separated list such as
    224x224,320x320."""
    if str(text).strip().lower() == "auto":
        return list(cfg.default_shapes(device))
    items = parse_list("SHAPES", text)
    dims = cfg.shape_dims
    if not dims:
        fixed = _fixed_sizes(cfg)  # its one size, as the README writes it (SHAPES=240x240 for efficientnet_b1)
        bad = [i for i in items if i.lower() not in ("static", "default") and i.lower().replace(" ", "") not in fixed]
        if bad:
            size = max(fixed, key=lambda t: t.count("x"), default="")
            raise ConfigError(f"{show('SHAPES', text)} does not apply to model {cfg.name!r}: its input sizes are fixed"
                              + (f" at {size} ({cfg.path} inputs[*].runtime)" if size else "")
                              + "; only the batch dim varies (set it with BATCH_SIZES); use SHAPES=auto"
                              + (f" or SHAPES={min(fixed, key=lambda t: t.count('x'))}" if fixed else ""))
        return [Shape(())]
    form = "x".join(f"<{d}>" for d in dims)
    example = cfg.shapes[0].label if cfg.shapes else "x".join(str(cfg.profile_range(d)[0]) for d in dims)
    shapes = []
    for item in items:
        parts = split_shape(item)
        if parts is None or len(parts) != len(dims):
            raise ConfigError(f"{show_item('SHAPES', text, item)} is not a shape of model {cfg.name!r}; expected {form} "
                              f"({_profile_text(cfg, dims)}), e.g. SHAPES={example} (or auto)")
        outside = cfg.outside_profile(zip(dims, parts))
        if outside:
            d, v = outside[:2]
            raise ConfigError(f"{show('SHAPES', text)}: {d}={v} is outside the profile of model {cfg.name!r} "
                              f"({_profile_text(cfg, dims)}, set in {cfg.path} inputs[*].profile)")
        shapes.append(Shape(tuple(zip(dims, parts))))
    labels = [s.label for s in shapes]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(f"{show('SHAPES', text)} repeats {', '.join(repeated)}; give each shape once")
    return shapes


def _fixed_sizes(cfg: ModelConfig) -> set[str]:
    """The sizes a model with fixed input sizes accepts as SHAPES: each input's non-batch dims, whole or their
    trailing two or more (3x240x240 and 240x240 for an image input)."""
    out = set()
    for spec in cfg.inputs:
        rest = [str(r) for d, r in zip(spec.dims, spec.runtime) if d != BATCH_DIM and r != -1]
        for start in range(len(rest) - 1 if len(rest) > 1 else 0):
            out.add("x".join(rest[start:]))
        if len(rest) == 1:
            out.add(rest[0])
    return out


def resolve_points(cfg: ModelConfig, params: RunParams, device: str) -> tuple[list[int], list[Shape]]:
    if params.batch_sizes.strip().lower() == "auto":
        batches = list(cfg.default_batch_sizes(device))
    else:
        batches = parse_int_list("BATCH_SIZES", params.batch_sizes)
        lo, hi = cfg.profile_range(BATCH_DIM)
        outside = [b for b in batches if not lo <= b <= hi]
        if outside:
            raise ConfigError(f"{show('BATCH_SIZES', params.batch_sizes)}: {', '.join(map(str, outside))} "
                              f"{'is' if len(outside) == 1 else 'are'} outside the profile of model {cfg.name!r} "
                              f"(batch {lo}..{hi}, set in {cfg.path} inputs[*].profile)")
    for b in batches:
        cfg.check_batch(b)
    return batches, parse_shapes(cfg, params.shapes, device)


def _runnable_here(device: str) -> list[str]:
    from ..backends import engine_class, list_backends

    out = []
    for name in list_backends():
        cls = engine_class(name)
        if device in cls.devices and cls.unavailable_reason(device) is None:
            out.append(name)
    return out


def _resolve_backends(params: RunParams, device: str, model: ModelConfig | None = None) -> tuple[list[dict], list[dict]]:
    from ..backends import engine_class, list_backends

    requested = params.precision_list()
    auto = params.backends.strip().lower() == "auto"
    names = list_backends() if auto else parse_list("BACKENDS", params.backends)
    for n in names:
        if n not in list_backends():
            close = difflib.get_close_matches(n, list_backends(), n=1, cutoff=0.6)
            raise ConfigError(f"{show_item('BACKENDS', params.backends, n)} is not a backend; "
                              f"{f'did you mean {close[0]}? ' if close else ''}"
                              f"valid: {', '.join(list_backends())} or auto")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{show('BACKENDS', params.backends)} repeats {', '.join(repeated)}; give each backend once")
    classes = [engine_class(n) for n in names]
    combos, skipped = [], []
    for cls in classes:
        if device not in cls.devices:
            if not auto:
                skipped.append({"backend": cls.backend, "precision": "*",
                                "reason": f"runs on {', '.join(cls.devices)} only (DEVICE={device})"})
            else:
                skipped.append({"backend": cls.backend, "precision": "*", "reason": f"needs a GPU (DEVICE={device})"})
            continue
        if auto and device not in cls.in_auto:
            skipped.append({"backend": cls.backend, "precision": "*",
                            "reason": f"not in BACKENDS=auto on {device} (slow to build here); ask for it by name"})
            continue
        reason = cls.unavailable_reason(device)
        if reason:
            skipped.append({"backend": cls.backend, "precision": "*", "reason": reason})
            continue
        wanted = requested if requested is not None else list(cls.auto_precisions(device))
        for prec in wanted:
            if prec in cls.precisions(device):
                why = cls.precision_unavailable_reason(device, prec, model)
                if why:
                    skipped.append({"backend": cls.backend, "precision": prec, "reason": why})
                    continue
                combos.append({"backend": cls.backend, "precision": prec})
            else:
                skipped.append({"backend": cls.backend, "precision": prec,
                                "reason": f"{cls.backend} does not run {prec} on {device} "
                                          f"(it runs {', '.join(cls.precisions(device)) or 'nothing'})"})
    return combos, skipped


def _check_writable(name: str, folder: Path) -> None:
    """``folder`` exists or can be made, and a file can be written in it; else a one-line error.
    Folders made for the test are removed again (nothing is left behind by a plan that fails later)."""
    folder = Path(folder).expanduser().resolve()
    missing = [folder, *folder.parents]
    missing = [d for d in missing[:next((i for i, d in enumerate(missing) if d.exists()), len(missing))]]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        parent = next((d for d in folder.parents if d.exists()), folder)
        if folder.exists() and not folder.is_dir():
            why = "it is a file, not a folder"
        elif parent.exists() and not parent.is_dir():
            why = f"{parent} is a file, not a folder"
        elif not folder.exists():
            why = f"cannot create folders in {parent}: {e.strerror or type(e).__name__}"
        else:
            why = e.strerror or type(e).__name__
        raise ConfigError(f"{show(name, folder)} cannot be written ({why}); give a folder you can write to") from None
    finally:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break


def _unfinished_run(model_dir: Path, params: RunParams) -> Path | None:
    """The newest earlier run with these parameters that has no report yet and that no live process is
    working in (an interrupted run), if any."""
    for run in sorted(model_dir.glob("*/params.json"), key=lambda p: p.parent.name, reverse=True):
        try:
            old = read_json(run)
        except (OSError, ValueError):
            continue
        if all(str(old.get(k)) == str(getattr(params, k)) for k in _RUN_DEFINING):
            if (run.parent / "report.html").exists() or lock_holder(run.parent) is not None:
                return None
            return run.parent
    return None


def resumable_runs(model_dir: Path) -> list[str]:
    """Ids of the runs under ``model_dir`` that have no report yet (newest first)."""
    return [p.parent.name for p in sorted(model_dir.glob("*/params.json"), key=lambda p: p.parent.name, reverse=True)
            if not (p.parent / "report.html").exists()]


def _new_run_dir(model_dir: Path, device: str) -> Path:
    """A run folder that did not exist before (two runs started within a second get different ids)."""
    return new_folder(model_dir, new_run_id(device))


def make_plan(params: RunParams, reports_dir: Path | str = "reports", run_id: str = "", log=print,
              strict_resume: bool = False) -> Plan:
    """Validate ``params``, resolve what runs, and create (or resume) the run folder.

    The checks run cheapest first and none imports torch unless WEIGHTS is given; nothing is
    written before every check has passed. ``strict_resume`` (the command line's plan step): a RUN_ID
    must name an existing run, and one that a live process is running is refused (tests name new runs).
    The steps after this one read the run folder (``load_plan``), never plan again. ``log=None``: say nothing."""
    log = log or (lambda msg: None)
    check_make_path("REPORTS_DIR", str(reports_dir))
    reports_dir = Path(reports_dir).expanduser().resolve()
    run_id = str(run_id or "").strip()
    if run_id:
        check_run_id(run_id)
    device = resolve_device(params.device)
    cfg = get_model(params.model, params.models_path)
    TimingPolicy(warmup_s=params.warmup, min_iters=params.iters, min_duration_s=params.duration)
    parse_outlier_rule(params.outliers)
    batches, shapes = resolve_points(cfg, params, device)
    combos, skipped = _resolve_backends(params, device, cfg)
    if is_given_onnx(cfg):  # no torch module: only the backends that run the ONNX can run it
        for backend in dict.fromkeys(c["backend"] for c in combos if not _needs_onnx(c["backend"])):
            skipped.append({"backend": backend, "precision": "*",
                            "reason": f"model {cfg.name!r} is given as ONNX ({cfg.folder / 'model.onnx'}, no "
                                      f"load.py): PyTorch backends need the module"})
        combos = [c for c in combos if _needs_onnx(c["backend"])]
    if not combos:
        raise UnavailableError(f"nothing can run on {device}: "
                               + "; ".join(f"{s['backend']}/{s['precision']}: {s['reason']}" for s in skipped)
                               + f" (BACKENDS that run here: {', '.join(_runnable_here(device)) or 'none'})")
    check_load_py(cfg)
    if params.weights:
        check_weights_file(params.weights)
    _check_writable("REPORTS_DIR", reports_dir)
    _check_writable("CACHE_DIR", Path(params.cache_dir))
    if params.weights:
        build_model(cfg, params.weights)  # the file is a state dict that fits the model (seconds: imports torch)
    if params.data:
        from ..measure.accuracy import check_data

        check_data(cfg, params.data)  # an ImageFolder, and an image model with preprocessing (reads no pixels)
    onnx_precisions = sorted({_onnx_variant(c) for c in combos if _needs_onnx(c["backend"])} | {"fp32"})
    if params.calib:
        if not any(p.startswith("int8") for p in onnx_precisions):
            raise ConfigError(f"{show('CALIB', params.calib)} calibrates INT8 ONNX files, but no ONNX backend runs "
                              f"int8 in this plan; add int8 to PRECISIONS (e.g. PRECISIONS=fp32,int8 BACKENDS=ort) or "
                              f"leave CALIB empty")
        from ..artifacts.quantize import check_calib

        check_calib(cfg, params.calib)  # a folder of images this model's preprocessing can read (reads no pixels)
    key = "given" if is_given_onnx(cfg) else export_key(cfg, params.weights or None)
    model_dir = reports_dir / cfg.name
    if run_id:
        run_dir = model_dir / run_id
        resumed = (run_dir / "params.json").exists()
        if strict_resume and not resumed and not run_dir.exists():
            runs = resumable_runs(model_dir)
            raise ConfigError(f"{show('RUN_ID', run_id)} is not a run of model {cfg.name!r} (no {run_dir}); "
                              + (f"runs that can be resumed: {', '.join(runs[:10])}" if runs else
                                 "it has no run that can be resumed")
                              + "; leave RUN_ID empty for a new run")
        holder = lock_holder(run_dir) if strict_resume else None
        if holder is not None:
            raise RunBusy(f"RUN_ID={run_id} is being run right now by pid {holder.get('pid', '?')} on "
                          f"{holder.get('host', '?')} ({holder.get('command', '?')}); wait for it to finish or stop "
                          f"it, or leave RUN_ID empty for a new run")
    else:
        earlier = _unfinished_run(model_dir, params)
        if earlier is not None:
            log(f"[plan] note: run {earlier.name} with these parameters has no report (interrupted?); "
                f"RUN_ID={earlier.name} would resume it. Starting a new run.")
        run_dir, resumed = _new_run_dir(model_dir, device), False
    if resumed:
        old = read_run_json(run_dir / "params.json")
        diff = [k for k in _RUN_DEFINING + _RESUME_FIXED if str(old.get(k)) != str(getattr(params, k))]
        if diff:
            raise ConfigError(f"RUN_ID={run_id} was run with other parameters ("
                              + ", ".join(f"{show(_MAKE_NAME.get(k, k.upper()), old.get(k))} there, {getattr(params, k)} now"
                                          for k in diff)
                              + "); give the same parameters to resume it, or leave RUN_ID empty for a new run")
        check_fingerprint(run_dir, fingerprint(cfg, params, _RUN_DEFINING))
        measured = sum(1 for _ in run_dir.glob("bench/*/points/*.json"))
        if measured:
            log(f"[plan] run {run_dir.name} exists: its {measured} point{'s' if measured != 1 else ''} already on disk "
                f"{'are' if measured != 1 else 'is'} kept, not measured again")
    elif run_id and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"RUN_ID={run_id}: {run_dir} exists but is not a run folder (no params.json); "
                          f"choose another RUN_ID or leave it empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(run_dir=run_dir, params=params, device=device, batch_sizes=batches,
                shapes=[s.label for s in shapes], combos=combos, skipped=skipped,
                onnx_dir=str(Path(params.cache_dir) / "onnx"), onnx_precisions=onnx_precisions, resumed=resumed)
    if not resumed:
        atomic_write_json(run_dir / "params.json", params.to_dict())
    if not (run_dir / FINGERPRINT_FILE).exists():  # a new run, or one made before fingerprints were kept
        write_fingerprint(run_dir, fingerprint(cfg, params, _RUN_DEFINING))
    atomic_write_json(run_dir / "plan.json", plan.to_dict())
    _drop_stale_stamp(plan, key, log)
    atomic_write_text(run_dir / "plan.mk", _plan_mk(plan, key, cfg))
    return plan


def _stamp(plan: Plan, key: str) -> Path:
    """The export notebook's output file: one per ONNX key and set of precisions (and, with INT8, calibration
    source: another CALIB folder makes another INT8 file)."""
    calib = ""
    if any(p.startswith("int8") for p in plan.onnx_precisions):
        from ..artifacts.quantize import calibration_source

        cfg = get_model(plan.params.model, plan.params.models_path)
        calib = "-calib" + calibration_source(cfg, plan.params.calib or None).sha256[:8]
    return Path(plan.onnx_dir) / plan.params.model / key / f"export-{'-'.join(plan.onnx_precisions)}{calib}.done"


def _drop_stale_stamp(plan: Plan, key: str, log) -> None:
    """A stamp whose ONNX files no longer match their hashes must not stop make from re-exporting."""
    from ..common.cache import valid_artifact

    stamp = _stamp(plan, key)
    if not stamp.exists() or key == "given":  # a given ONNX: make's deps (model.onnx, config.yaml) decide
        return
    folders = [stamp.parent] + sorted(stamp.parent.glob("fp16-*")) + sorted(stamp.parent.glob("int8-*"))
    for folder in folders:
        ok, why = valid_artifact(folder, "model.onnx")
        if not ok:
            log(f"[plan] warning: the cached ONNX export cannot be used: {why}; it will be rebuilt")
            stamp.unlink()
            return


def _onnx_variant(combo: dict) -> str:
    from ..backends import engine_class

    return engine_class(combo["backend"]).onnx_variant(combo["precision"])


def _needs_onnx(backend: str) -> bool:
    from ..backends import engine_class

    return engine_class(backend).needs_onnx


def _plan_mk(plan: Plan, key: str, cfg: ModelConfig) -> str:
    deps = [p for p in (cfg.path, cfg.folder / "load.py", cfg.folder / "model.onnx") if p.exists()]
    if plan.params.weights:
        deps.append(Path(plan.params.weights))
    combos = " ".join(f"{c['backend']}@{c['precision']}" for c in plan.combos)
    return (f"# written by the plan step; read by the Makefile\n"
            f"RUN_DIR := {plan.run_dir}\nCOMBOS := {combos}\n"
            f"ONNX_STAMP := {_stamp(plan, key)}\n"
            f"ONNX_PRECISIONS := {','.join(plan.onnx_precisions)}\n"
            f"ONNX_DEPS := {' '.join(str(p) for p in deps)}\n")


def load_plan(run_dir: Path | str) -> tuple[RunParams, dict]:
    run_dir = Path(run_dir)
    if not (run_dir / "plan.json").exists():
        raise BenchbookError(f"{run_dir} is not a run folder (no plan.json); run the plan step first")
    raw = read_run_json(run_dir / "params.json")
    try:
        params = RunParams(**raw)
    except TypeError as e:
        raise CorruptFile(f"{run_dir / 'params.json'} is not this version's run parameters ({e})") from None
    return params, read_run_json(run_dir / "plan.json")


def run_onnx(cfg: ModelConfig, params: RunParams, plan: dict, log=print) -> dict[str, Path]:
    """The run's ONNX files by precision, as every step after the export opens them: the plan's variants with the
    run's WEIGHTS and CALIB, so each is a cache hit on the export's file. (The load stage once left CALIB out and
    so quantized and measured another INT8 model, calibrated on seeded inputs, than the benchmark had.)"""
    return {p: r.path for p, r in ensure_onnx(cfg, Path(params.cache_dir) / "onnx", precisions=plan["onnx_precisions"],
                                              weights=params.weights or None, log=log,
                                              calib=params.calib or None).items()}


def planned_points(cfg: ModelConfig, plan: dict) -> tuple[list[int], list[Shape]]:
    """The batch sizes and shapes the plan step resolved (``plan.json``), for the steps after it: they run on
    the plan's resolution, not a new one (``auto`` could resolve otherwise on another device or config)."""
    return [int(b) for b in plan["batch_sizes"]], [cfg.parse_shape(s) for s in plan["shapes"]]
