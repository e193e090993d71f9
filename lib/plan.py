"""The plan step: validate every parameter, resolve ``auto`` values, pick the backends that can run
here, and create the run folder. It runs before any export or benchmark (seconds, no torch import
unless WEIGHTS is given), so bad input fails fast and nothing measured is touched.

Run folder: ``<reports>/<model>/<run_id>/`` with ``params.json`` (what was asked), ``plan.json``
(what will run and what is skipped, with reasons) and ``plan.mk`` (the same for make). An existing
run folder is only ever resumed with the same parameters, never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .cache import atomic_write_json, atomic_write_text, read_json
from .device import resolve_device
from .errors import BenchbookError, ConfigError
from .export import export_key
from .model_config import ModelConfig, Shape
from .models import build_model, get_model
from .params import RunParams, parse_int_list, parse_list
from .stats import parse_outlier_rule
from .timing import TimingPolicy

__all__ = ["Plan", "make_plan", "new_run_id", "load_plan", "resolve_points"]

# Parameters whose change makes a different run (a resume must keep them).
_RUN_DEFINING = ("model", "backends", "precisions", "batch_sizes", "shapes", "device", "weights", "seed",
                 "warmup", "iters", "duration", "channels_last", "tf32", "compile_mode")


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


def resolve_points(cfg: ModelConfig, params: RunParams, device: str) -> tuple[list[int], list[Shape]]:
    if params.batch_sizes.lower() in ("auto", ""):
        batches = list(cfg.cpu_batch_sizes if device == "cpu" else cfg.batch_sizes)
    else:
        batches = parse_int_list("BATCH_SIZES", params.batch_sizes)
    for b in batches:
        cfg.check_batch(b)
    if params.shapes.lower() in ("auto", ""):
        shapes = list(cfg.shapes)
    else:
        shapes = [cfg.parse_shape(s) for s in parse_list("SHAPES", params.shapes)]
    return batches, shapes


def _resolve_backends(params: RunParams, device: str) -> tuple[list[dict], list[dict]]:
    from .engines import engine_class, list_backends

    requested = params.precision_list()
    auto = params.backends.lower() == "auto"
    names = list_backends() if auto else parse_list("BACKENDS", params.backends)
    classes = [engine_class(n) for n in names]  # unknown names raise here, listing the valid ones
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
                combos.append({"backend": cls.backend, "precision": prec})
            else:
                skipped.append({"backend": cls.backend, "precision": prec,
                                "reason": f"{cls.backend} does not run {prec} on {device} "
                                          f"(it runs {', '.join(cls.precisions(device)) or 'nothing'})"})
    return combos, skipped


def _check_writable(reports_dir: Path) -> None:
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
        probe = reports_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"REPORTS_DIR={str(reports_dir)!r} cannot be written ({e.strerror}); "
                          f"give a folder you can write to") from None


def make_plan(params: RunParams, reports_dir: Path | str = "reports", run_id: str = "", log=print) -> Plan:
    """Validate ``params``, resolve what runs, and create (or resume) the run folder."""
    reports_dir = Path(reports_dir).expanduser().resolve()
    device = resolve_device(params.device)
    cfg = get_model(params.model, params.models_path)
    TimingPolicy(warmup_s=params.warmup, min_iters=params.iters, min_duration_s=params.duration)
    parse_outlier_rule(params.outliers)
    batches, shapes = resolve_points(cfg, params, device)
    combos, skipped = _resolve_backends(params, device)
    if not combos:
        raise BenchbookError("nothing can run: " + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    if params.weights:
        build_model(cfg, params.weights)  # file exists, is a state dict and fits the model (seconds)
    _check_writable(reports_dir)
    onnx_precisions = sorted({c["precision"] for c in combos if _needs_onnx(c["backend"])} | {"fp32"})
    key = export_key(cfg, params.weights or None) if (cfg.folder / "load.py").exists() else "given"
    run_id = run_id or new_run_id(device)
    run_dir = reports_dir / cfg.name / run_id
    resumed = (run_dir / "params.json").exists()
    if resumed:
        old = read_json(run_dir / "params.json")
        diff = [k for k in _RUN_DEFINING if str(old.get(k)) != str(getattr(params, k))]
        if diff:
            raise ConfigError(f"RUN_ID={run_id} exists with other parameters ({', '.join(diff)} differ: "
                              + ", ".join(f"{k}={old.get(k)!r} there" for k in diff)
                              + "); leave RUN_ID empty for a new run")
        log(f"[plan] resuming {run_dir}: points already measured are kept")
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(run_dir=run_dir, params=params, device=device, batch_sizes=batches,
                shapes=[s.label for s in shapes], combos=combos, skipped=skipped,
                onnx_dir=str(Path(params.cache_dir) / "onnx"), onnx_precisions=onnx_precisions, resumed=resumed)
    if not resumed:
        atomic_write_json(run_dir / "params.json", params.to_dict())
    atomic_write_json(run_dir / "plan.json", plan.to_dict())
    _drop_stale_stamp(plan, key, log)
    atomic_write_text(run_dir / "plan.mk", _plan_mk(plan, key, cfg))
    return plan


def _stamp(plan: Plan, key: str) -> Path:
    """The export notebook's output file: one per ONNX key and set of precisions."""
    return Path(plan.onnx_dir) / plan.params.model / key / f"export-{'-'.join(plan.onnx_precisions)}.done"


def _drop_stale_stamp(plan: Plan, key: str, log) -> None:
    """A stamp whose ONNX files no longer match their hashes must not stop make from re-exporting."""
    from .cache import valid_artifact

    stamp = _stamp(plan, key)
    if not stamp.exists():
        return
    folders = [stamp.parent] + sorted(stamp.parent.glob("fp16-*"))
    for folder in folders:
        ok, why = valid_artifact(folder, "model.onnx")
        if not ok:
            log(f"[plan] cached export is invalid ({why}); it will be rebuilt")
            stamp.unlink()
            return


def _needs_onnx(backend: str) -> bool:
    from .engines import engine_class

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
    raw = read_json(run_dir / "params.json")
    return RunParams(**raw), read_json(run_dir / "plan.json")
