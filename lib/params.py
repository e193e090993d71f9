"""Run parameters: parsed from the Makefile's strings (or a notebook's values) and validated together,
before any heavy work. Every error names the parameter, the bad value and what is valid."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError

__all__ = ["RunParams", "parse_int_list", "parse_float", "parse_int", "parse_list", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16")
NOT_YET = {"int8": "INT8 (explicit Q/DQ quantization) is not supported yet",
           "fp8": "FP8 is not supported yet", "tf32": "TF32 is not a precision here: it is fp32 with TF32=1"}


def parse_list(name: str, value) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value).replace(";", ",").split(",")]
    items = [v for v in items if v]
    if not items:
        raise ConfigError(f"{name} is empty; give a comma-separated list or 'auto'")
    return items


def parse_int_list(name: str, value) -> list[int]:
    out = []
    for item in parse_list(name, value):
        try:
            n = int(item)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not a whole number; expected e.g. {name}=1,8,32") from None
        if n < 1:
            raise ConfigError(f"{name}: {n} is not valid; batch sizes are whole numbers >= 1")
        out.append(n)
    if len(set(out)) != len(out):
        raise ConfigError(f"{name}: {','.join(map(str, out))} repeats a value")
    return out


def parse_float(name: str, value, minimum: float = 0.0, unit: str = "seconds") -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a number; expected {unit} >= {minimum:g}") from None
    if not math.isfinite(x) or x < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; expected {unit} >= {minimum:g}")
    return x


def parse_int(name: str, value, minimum: int = 1) -> int:
    try:
        x = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number; expected an integer >= {minimum}") from None
    if x < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= {minimum}")
    return x


def parse_bool(name: str, value) -> bool:
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r} is not valid; use 1 or 0")


@dataclass
class RunParams:
    """Everything that decides a run; saved as ``params.json`` in the run folder."""

    model: str
    backends: str = "auto"
    precisions: str = "auto"
    batch_sizes: str = "auto"
    shapes: str = "auto"
    warmup: float = 0.2        # seconds (and at least 2 iterations)
    iters: int = 20            # minimum timed iterations per measurement
    duration: float = 1.0      # minimum timed seconds per measurement
    device: str = "auto"
    outliers: str = "tukey"
    weights: str = ""
    seed: int = 0
    unstable_cv: float = 0.05  # a point whose CV exceeds this is flagged unstable
    channels_last: bool = False
    tf32: bool = True
    compile_mode: str = "default"
    trt_workspace_gib: float = 4.0
    trt_opt_level: int = 3
    models_dir: str = ""
    cache_dir: str = "build"
    options: dict = field(default_factory=dict)

    @classmethod
    def from_strings(cls, **raw) -> "RunParams":
        """Parse Makefile-style strings; unknown keys are an error naming the valid ones."""
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        p = cls(model=str(raw.get("model", "")).strip())
        if not p.model:
            raise ConfigError("MODEL is empty; e.g. make report MODEL=efficientnet_b1")
        for key in ("backends", "precisions", "batch_sizes", "shapes", "device", "outliers", "weights",
                    "compile_mode", "models_dir", "cache_dir"):
            if key in raw:
                setattr(p, key, str(raw[key]).strip())
        # Paths are made absolute here, once: notebooks run with notebooks/ as their working folder.
        for key in ("weights", "models_dir", "cache_dir"):
            value = getattr(p, key)
            if value:
                setattr(p, key, str(Path(value).expanduser().resolve()))
        if "warmup" in raw:
            p.warmup = parse_float("WARMUP", raw["warmup"])
        if "duration" in raw:
            p.duration = parse_float("DURATION", raw["duration"])
        if "iters" in raw:
            p.iters = parse_int("ITERS", raw["iters"])
        if "seed" in raw:
            p.seed = parse_int("SEED", raw["seed"], minimum=0)
        if "unstable_cv" in raw:
            p.unstable_cv = parse_float("UNSTABLE_CV", raw["unstable_cv"], unit="a fraction")
        if "channels_last" in raw:
            p.channels_last = parse_bool("CHANNELS_LAST", raw["channels_last"])
        if "tf32" in raw:
            p.tf32 = parse_bool("TF32", raw["tf32"])
        if "trt_workspace_gib" in raw:
            p.trt_workspace_gib = parse_float("TRT_WORKSPACE", raw["trt_workspace_gib"], 0.0625, "GiB")
        if "trt_opt_level" in raw:
            p.trt_opt_level = parse_int("TRT_OPT_LEVEL", raw["trt_opt_level"], minimum=0)
            if p.trt_opt_level > 5:
                raise ConfigError(f"TRT_OPT_LEVEL={p.trt_opt_level} is not valid; expected 0..5 (default 3)")
        if "options" in raw:
            p.options = dict(raw["options"])
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    def engine_options(self) -> dict:
        return {"channels_last": self.channels_last, "tf32": self.tf32, "compile_mode": self.compile_mode,
                "workspace_gib": self.trt_workspace_gib, "opt_level": self.trt_opt_level, **self.options}

    def precision_list(self) -> list[str] | None:
        """Requested precisions, or None for auto."""
        if self.precisions.lower() == "auto":
            return None
        items = [p.lower() for p in parse_list("PRECISIONS", self.precisions)]
        for item in items:
            if item in NOT_YET:
                raise ConfigError(f"PRECISIONS: {item}: {NOT_YET[item]}; valid: {', '.join(PRECISIONS)}")
            if item not in PRECISIONS:
                raise ConfigError(f"PRECISIONS: {item!r} is not a precision; valid: {', '.join(PRECISIONS)} or auto")
        return items

    @property
    def models_path(self) -> Path | None:
        return Path(self.models_dir) if self.models_dir else None
