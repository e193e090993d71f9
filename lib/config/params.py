"""Run parameters: parsed from the Makefile's strings (or a notebook's values) and validated together,
before any heavy work. Every error names the parameter, the bad value and what is valid.

``RUN_PARAMETERS`` defines each one once: its make variable, default, parser, `make help` line and the
notebooks that take it. The Makefile, `make help` (``python -m lib.pipeline.cli help``), the notebooks'
parameter cells and the README table are checked against it (tests/config/test_params_registry.py)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..common.errors import ConfigError

__all__ = ["RunParams", "parse_int_list", "parse_float", "parse_int", "parse_list", "check_make_path", "show", "show_item",
           "PRECISIONS", "QUANTIZED", "COMPILE_MODES", "MAX_ITERS", "MAX_ROUNDS", "parse_max_acc_drop",
           "pass_targets", "measured_modes", "MAX_CONCURRENCY", "LOAD_CHOICES", "Param", "RUN_PARAMETERS",
           "param", "field_of", "help_lines", "NOTEBOOK_OWN"]

# int8 / fp8 are quantized precisions (lib.artifacts.quantize): each backend says where it runs them, and auto never
# picks them (they need calibration and cost accuracy, which the report weighs against their speed).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
QUANTIZED = ("int8", "fp8")
NOT_YET = {"tf32": "TF32 is not a precision here: it is fp32 with TF32=1"}
# MAX_ACC_DROP: auto (1 point of top-1 with DATA, else the parity thresholds), parity, or top-1 points.
MAX_ACC_DROP_POINTS = 100.0
# torch.compile's modes (torch._inductor.list_mode_options()), listed here so checking needs no torch import.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "lite")
MAX_ITERS = 100_000  # lib.measure.timing.TimingPolicy.max_iters: the timed loop's cap
MAX_ROUNDS = 50      # lib.sweep.bench: no point and mode is measured in more rounds than this


def measured_modes(gpu: bool) -> list[str]:
    """The modes every point is measured in: pipelined throughput only on a GPU (nothing is asynchronous on a
    CPU, so there it is batch / latency)."""
    return ["device", "end_to_end", "throughput"] if gpu else ["device", "end_to_end"]


def pass_targets(rounds: int, bench_pass: int) -> tuple[int, bool, int]:
    """(rounds every point and mode must have after this pass, whether adaptive rounds follow, rounds it must
    have from this pass itself): pass 1 takes the first half of ``ROUNDS``, pass 2 the rest and the adaptive
    ones, and at least the second half itself (rounds pass 1 added to replace slow-host ones do not take pass
    2's share: each backend is measured at both moments of the run); 0 = both in one process."""
    if bench_pass == 1:
        return (rounds + 1) // 2, False, 0
    if bench_pass == 2:
        return rounds, True, rounds // 2
    return rounds, True, 0
MAX_POINT_CAP_S = 600.0
# Upper bounds: a value past them is a typo (DURATION=100 for 1.00) or turns a check off (UNSTABLE_CV=5 flags
# nothing: a CV above 1 means the spread exceeds the mean). Minutes per measurement is already a long run.
MAX_WARMUP_S = 300.0
MAX_DURATION_S = 600.0
MAX_UNSTABLE_CV = 1.0
MAX_CONCURRENCY = 64  # load section: requests in flight (a thread, stream or queued client each)
# load section: auto = the configurations the summary picks; all = every measured one; none (or 0) = no load stage
LOAD_CHOICES = ("auto", "all", "none", "0")
DEFAULT_RATES = "0.5x,0.9x"  # RATES=auto: fractions of each configuration's measured single-request throughput
# Characters that break make (targets and recipes are built from these paths) or the shell.
_MAKE_UNSAFE = set(" \t\n\r#$%:;*?\"'\\|&<>`")


def show(name: str, value) -> str:
    """``NAME=value`` as the user typed it; quoted where the value is empty or has spaces or quotes."""
    text = str(value)
    return f"{name}={text}" if re.fullmatch(r"[\w.,:;/+@=~-]+", text) else f"{name}={text!r}"


def show_item(name: str, value, item) -> str:
    """The bad item, named with its parameter: ``BATCH_SIZES=0`` or ``BATCH_SIZES=1,0,8: 0``."""
    return show(name, value) if str(item).strip() == str(value).strip() else f"{show(name, value)}: {item}"


def _example(name: str) -> str:
    return {"BATCH_SIZES": "BATCH_SIZES=1,8,32", "BACKENDS": "BACKENDS=torch,ort", "PRECISIONS": "PRECISIONS=fp32,fp16",
            "SHAPES": "SHAPES=224x224,320x320",
            "CONCURRENCY": "CONCURRENCY=1,2,4,8", "RATES": "RATES=100,500"}.get(name, f"{name}=a,b")


def parse_list(name: str, value) -> list[str]:
    """A comma-separated list ("1,8,32"); an empty list or an empty item is an error naming the value."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value).replace(";", ",").split(",")]
    if not any(items):
        raise ConfigError(f"{name} is empty; give a comma-separated list (e.g. {_example(name)}) or auto")
    if not all(items):
        raise ConfigError(f"{show(name, value)} has an empty item; separate the values with single commas, "
                          f"e.g. {_example(name)}")
    return items


def parse_int_list(name: str, value, minimum: int = 1) -> list[int]:
    """Whole numbers >= ``minimum``, comma-separated, without repeats (``BATCH_SIZES=1,8,32``)."""
    out = []
    for item in parse_list(name, value):
        try:
            n = int(item)
        except ValueError:
            hint = " (separate values with commas, not spaces)" if len(item.split()) > 1 else ""
            raise ConfigError(f"{show_item(name, value, item)} is not a whole number{hint}; expected whole numbers "
                              f">= {minimum} separated by commas, e.g. {_example(name)}, or auto") from None
        if n < minimum:
            raise ConfigError(f"{show_item(name, value, item)} is not valid; expected whole numbers >= {minimum} "
                              f"separated by commas, e.g. {_example(name)}, or auto")
        out.append(n)
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise ConfigError(f"{show(name, value)} repeats {', '.join(map(str, repeated))}; give each value once")
    return out


def parse_float(name: str, value, minimum: float = 0.0, unit: str = "seconds", positive: bool = False,
                maximum: float | None = None) -> float:
    """A finite number >= ``minimum`` (``positive``: > ``minimum``) and <= ``maximum``, e.g. ``DURATION=1.0``."""
    bound = f"{'>' if positive else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
    try:
        x = float(str(value).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{show(name, value)} is not a number; expected {unit} {bound}") from None
    if (not math.isfinite(x) or x < minimum or (positive and x == minimum)
            or (maximum is not None and x > maximum)):
        raise ConfigError(f"{show(name, value)} is not valid; expected {unit} {bound}")
    return x


def parse_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    valid = f"a whole number from {minimum} to {maximum}" if maximum is not None else f"a whole number >= {minimum}"
    try:
        x = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{show(name, value)} is not a whole number; expected {valid}") from None
    if x < minimum or (maximum is not None and x > maximum):
        raise ConfigError(f"{show(name, value)} is not valid; expected {valid}")
    return x


def parse_bool(name: str, value) -> bool:
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{show(name, value)} is not valid; use 1 or 0")


def check_make_path(name: str, value: str) -> None:
    """Paths become make targets and recipe words: characters make or the shell would split are refused."""
    bad = sorted(set(str(value)) & _MAKE_UNSAFE)
    if bad:
        shown = ", ".join("a space" if c == " " else repr(c) for c in bad)
        raise ConfigError(f"{name}={str(value)!r} contains {shown}, which make cannot handle in a path; "
                          f"use a path of letters, digits and / . _ - only")


def parse_max_acc_drop(value, data: str = "") -> str:
    """``MAX_ACC_DROP``: ``auto``, ``parity`` or a number of top-1 points (0..100, needs DATA); returned as
    its canonical text (``auto``, ``parity`` or e.g. ``0.5``)."""
    text = str(value).strip().lower()
    if text in ("auto", "parity"):
        return text
    valid = ("auto (1 point of top-1 when DATA is given, else the parity thresholds), parity (every point "
             "passes parity against FP32 at its precision's thresholds), or a number of top-1 points from 0 to "
             f"{MAX_ACC_DROP_POINTS:g} (e.g. MAX_ACC_DROP=0.5; needs DATA)")
    try:
        x = float(text)
    except ValueError:
        raise ConfigError(f"{show('MAX_ACC_DROP', value)} is not valid; expected {valid}") from None
    if not math.isfinite(x) or not 0 <= x <= MAX_ACC_DROP_POINTS:
        raise ConfigError(f"{show('MAX_ACC_DROP', value)} is not valid; expected {valid}")
    if not data:
        raise ConfigError(f"{show('MAX_ACC_DROP', value)} is a drop in top-1 points, which needs labelled images: "
                          f"give DATA=<folder, one sub-folder per class>, or use MAX_ACC_DROP=auto or parity "
                          f"(without DATA the tolerance is the parity thresholds)")
    return f"{x:g}"



def _point_cap(value) -> float:
    x = parse_float("POINT_CAP", value, positive=True)
    if x > MAX_POINT_CAP_S:
        raise ConfigError(f"{show('POINT_CAP', value)} is not valid; expected seconds > 0 and <= {MAX_POINT_CAP_S:g}")
    return x


def _fraction(name: str) -> Callable[[object], float]:
    """A parser for a fraction strictly between 0 and 1 (CI_TARGET, NOISE_SPREAD, HOST_SLOW)."""
    def parse(value) -> float:
        x = parse_float(name, value, unit="a fraction", positive=True)
        if x >= 1:
            raise ConfigError(f"{show(name, value)} is not valid; expected a fraction > 0 and < 1 (e.g. 0.05 = 5 %)")
        return x
    return parse


def _channels_last(value) -> str:
    text = str(value).strip().lower()
    if text != "auto" and text not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ConfigError(f"{show('CHANNELS_LAST', value)} is not valid; use auto, 1 or 0")
    return "auto" if text == "auto" else str(int(parse_bool("CHANNELS_LAST", text)))


def _price(value) -> float:
    """Empty: no price given (0: no cost figures)."""
    return parse_float("PRICE_PER_HOUR", value, unit="a price per hour") if str(value).strip() else 0.0


@dataclass(frozen=True)
class Param:
    """One run parameter, defined here once: the Makefile's defaults and PARAMS list, `make help`, the
    notebooks' parameter cells and the README's table are checked against these (tests/config/
    test_params_registry.py)."""

    name: str                  # the make variable, e.g. BATCH_SIZES
    default: str               # the text make passes when the variable is not given
    help: str                  # one line, as `make help` shows it after NAME=<current value>
    field: str | None          # the RunParams field it sets; None: an argument of the plan step itself
    parse: Callable | None = None  # its parser (text -> value, ConfigError naming the value); None: checked
    #                            in RunParams.from_strings or by the plan step, which need other parameters
    notebooks: tuple = ()      # (notebook stem, its parameter name[, its default there when not ours])
    shown: str = ""            # the README's default column, where an empty default means something


# In `make report`'s order of concern: what runs, how it is timed, how it is flagged, engines, folders, extras.
RUN_PARAMETERS: tuple[Param, ...] = (
    Param("MODEL", "efficientnet_b1", "a model's name (make models lists them)", "model",
          notebooks=(("00_export", "model"),)),
    Param("BACKENDS", "auto", "comma list of backends; auto: every one that can run here", "backends"),
    Param("PRECISIONS", "auto", "fp32,fp16,bf16,int8,fp8; auto: FP32 on a CPU; on a GPU FP32 and FP16 "
          "(CUDA-graph variants FP16); bf16, int8, fp8 by name", "precisions"),
    Param("BATCH_SIZES", "auto", "e.g. 1,8,32; auto: the model config's defaults for the device", "batch_sizes"),
    Param("SHAPES", "auto", "dynamic dims besides batch, e.g. 240x240 or 128; auto: the config's defaults",
          "shapes"),
    Param("WARMUP", "0.2", "seconds of a point's first warm-up (and at least 2 iterations)", "warmup",
          lambda v: parse_float("WARMUP", v, positive=True, maximum=MAX_WARMUP_S)),
    Param("ITERS", "5", "per round: at least this many timed iterations ...", "iters",
          lambda v: parse_int("ITERS", v, maximum=MAX_ITERS)),
    Param("DURATION", "0.25", "... and at least this many seconds", "duration",
          lambda v: parse_float("DURATION", v, positive=True, maximum=MAX_DURATION_S)),
    Param("ROUNDS", "4", "at least this many interleaved rounds per point and mode (half per pass)", "rounds",
          lambda v: parse_int("ROUNDS", v, minimum=2, maximum=MAX_ROUNDS)),
    Param("POINT_CAP", "2.0", "no more rounds once a point and mode has this many timed seconds", "point_cap",
          _point_cap),
    Param("CI_TARGET", "0.01", "adaptive stop: once the 95 % interval is within +-this fraction of the median",
          "ci_target", _fraction("CI_TARGET")),
    Param("NOISE_SPREAD", "0.05", "a point is noisy when its round medians span more than this fraction",
          "noise_spread", _fraction("NOISE_SPREAD")),
    Param("HOST_SLOW", "0.10", "a round ran on a slow host when the sentinel is this much above its best",
          "host_slow", _fraction("HOST_SLOW")),
    Param("DEVICE", "auto", "cpu, cuda or auto", "device"),
    Param("OUTLIERS", "tukey", "presentation only: tukey[:k], mad[:k] or none", "outliers",
          notebooks=(("20_analysis", "outliers", ""), ("30_compare", "outliers", ""))),
    Param("WEIGHTS", "", "a local state_dict file; empty: random weights", "weights",
          notebooks=(("00_export", "weights"),), shown="(random)"),
    Param("SEED", "0", "seeds the benchmark inputs", "seed", lambda v: parse_int("SEED", v, minimum=0)),
    Param("UNSTABLE_CV", "0.05", "flag points whose coefficient of variation exceeds this (at most 1)",
          "unstable_cv", lambda v: parse_float("UNSTABLE_CV", v, unit="a fraction", maximum=MAX_UNSTABLE_CV)),
    Param("CHANNELS_LAST", "auto", "PyTorch NHWC: auto (on for fp16/bf16 on CUDA), 1 or 0", "channels_last",
          _channels_last),
    Param("TF32", "1", "allow TF32 math for FP32 on GPUs, every backend alike (1 or 0)", "tf32",
          lambda v: parse_bool("TF32", v)),
    Param("COMPILE_MODE", "default", "torch.compile mode (max-autotune compiles for minutes)", "compile_mode"),
    Param("TRT_WORKSPACE", "4", "TensorRT builder workspace limit, GiB", "trt_workspace_gib",
          lambda v: parse_float("TRT_WORKSPACE", v, 0.0625, "GiB")),
    Param("TRT_OPT_LEVEL", "3", "TensorRT builder optimisation level, 0..5", "trt_opt_level",
          lambda v: parse_int("TRT_OPT_LEVEL", v, minimum=0, maximum=5)),
    Param("RUN_ID", "", "an existing run's id resumes it (Ctrl-C keeps every measured point and prints the id); "
          "empty: a new run", None, shown="(new)"),
    Param("REPORTS_DIR", "reports", "run folders go to <REPORTS_DIR>/<model>/<run id>/", None),
    Param("MODELS_DIR", "", "where the models are; empty: the repository's models/", "models_dir",
          notebooks=(("00_export", "models_dir"),), shown="models"),
    Param("CACHE_DIR", "build", "exported ONNX files and engines (make clean-cache deletes it)", "cache_dir",
          notebooks=(("00_export", "cache_dir"),)),
    Param("DATA", "", "a folder of labelled images, one sub-folder per class: top-1/top-5 accuracy per backend",
          "data", shown="(none)"),
    Param("CALIB", "", "a folder of images that calibrates INT8; empty: seeded inputs from the model config",
          "calib", notebooks=(("00_export", "calib"),), shown="(seeded)"),
    Param("MAX_ACC_DROP", "auto", "accuracy loss the recommendation tolerates: auto, parity or top-1 points "
          "(needs DATA)", "max_acc_drop", notebooks=(("20_analysis", "max_acc_drop", ""),)),
    Param("PRICE_PER_HOUR", "", "the machine's price per hour: cost per million inferences per configuration",
          "price_per_hour", _price, shown="(none)"),
    Param("LOAD", "auto", "latency under load of: auto (the configurations the summary picks), all, none", "load"),
    Param("CONCURRENCY", "1,2,4,8", "latency under load: requests in flight of the closed loop (1..64)",
          "concurrency"),
    Param("RATES", "auto", "latency under load: Poisson arrival rates, 0.5x (of single-request throughput) or "
          "req/s; auto: 0.5x,0.9x", "rates"),
)

# Notebook parameters that are no run parameter: each notebook's own (which run, which backend, ...).
NOTEBOOK_OWN = {
    "00_export": ("precisions", "run_dir"),
    "10_benchmark": ("run_dir", "backend", "precision", "bench_pass"),
    "15_load": ("run_dir",),
    "20_analysis": ("run_dir", "budget_ms"),
    "30_compare": ("runs", "model", "out_dir"),
}


def param(name: str) -> Param:
    """The registry entry of make variable ``name``; a ConfigError naming the valid ones otherwise."""
    for spec in RUN_PARAMETERS:
        if spec.name == name.upper():
            return spec
    raise ConfigError(f"{name} is not a run parameter; valid: {' '.join(s.name for s in RUN_PARAMETERS)}")


def field_of(key: str) -> str:
    """The RunParams field of ``key``, a make variable (TRT_WORKSPACE) or already a field (trt_workspace_gib)."""
    for spec in RUN_PARAMETERS:
        if spec.name == key.upper() and spec.field:
            return spec.field
    return key.lower()


def help_lines(values: dict[str, str] | None = None) -> list[str]:
    """`make help`'s parameter lines, ``NAME=<value>  help``, with the values make has now (a value is
    printed, never run); a parameter not in ``values`` shows its default."""
    values = values or {}
    shown = [f"{s.name}={values.get(s.name, s.default)}" for s in RUN_PARAMETERS]
    width = max((len(t) for t in shown if len(t) <= 28), default=0)  # a long value pushes only its own line
    return [f"  {t:<{width}}  {s.help}" for t, s in zip(shown, RUN_PARAMETERS)]


@dataclass
class RunParams:
    """Everything that decides a run; saved as ``params.json`` in the run folder."""

    model: str
    backends: str = "auto"
    precisions: str = "auto"
    batch_sizes: str = "auto"
    shapes: str = "auto"
    warmup: float = 0.2        # seconds of a point's first warm-up in a process (and at least 2 iterations)
    iters: int = 5             # minimum timed iterations per round of a point and mode
    duration: float = 0.25     # minimum timed seconds per round of a point and mode
    rounds: int = 4            # minimum rounds per point and mode (half in each of the two passes)
    point_cap: float = 2.0     # timed seconds per point and mode after which no more rounds are added
    ci_target: float = 0.01    # a point stops adding rounds once its 95 % interval is within +-this of its median
    noise_spread: float = 0.05  # a point is noisy when its round medians span more than this fraction
    host_slow: float = 0.10    # a round ran on a slow host when the sentinel is this much above the run's best
    device: str = "auto"
    outliers: str = "tukey"
    weights: str = ""
    seed: int = 0
    unstable_cv: float = 0.05  # a point whose CV exceeds this is flagged unstable
    channels_last: str = "auto"  # auto: NHWC for FP16/BF16 on CUDA (tensor cores want it), else NCHW
    tf32: bool = True
    compile_mode: str = "default"
    trt_workspace_gib: float = 4.0
    trt_opt_level: int = 3
    models_dir: str = ""
    cache_dir: str = "build"
    data: str = ""             # folder of labelled images (one sub-folder per class): accuracy per backend
    price_per_hour: float = 0.0  # the machine's price per hour (any currency); 0: not given, no cost figures
    calib: str = ""            # folder of images that calibrates INT8 (lib.artifacts.quantize); empty: seeded inputs
    max_acc_drop: str = "auto"  # the accuracy loss the summary's recommendation tolerates (parse_max_acc_drop)
    load: str = "auto"         # load section: auto (the configurations the summary picks), all, or none/0
    concurrency: str = "1,2,4,8"  # load section: requests in flight of the closed loop
    rates: str = "auto"        # load section: Poisson arrival rates: 0.5x (of single-request throughput) or req/s
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
                    "compile_mode", "models_dir", "cache_dir", "data", "calib"):
            if key in raw:
                setattr(p, key, str(raw[key]).strip())
        for key in ("backends", "precisions", "batch_sizes", "shapes"):
            if not getattr(p, key):
                raise ConfigError(f"{key.upper()} is empty; give a comma-separated list (e.g. {_example(key.upper())}) "
                                  f"or auto")
        if p.batch_sizes.lower() != "auto":
            parse_int_list("BATCH_SIZES", p.batch_sizes)  # the profile's bounds are checked by the plan step
        if not p.cache_dir:
            raise ConfigError("CACHE_DIR is empty; give a folder for exported models and engines (default: build)")
        # Paths are made absolute here, once: notebooks run with notebooks/ as their working folder.
        for key in ("weights", "models_dir", "cache_dir", "data", "calib"):
            value = getattr(p, key)
            if value:
                check_make_path(key.upper(), value)
                setattr(p, key, str(Path(value).expanduser().resolve()))
        if p.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"{show('COMPILE_MODE', p.compile_mode)} is not a torch.compile mode; valid: "
                              f"{', '.join(COMPILE_MODES)}")
        for spec in RUN_PARAMETERS:  # the scalar parameters, each by its registry entry's parser
            if spec.parse is not None and spec.field in raw:
                setattr(p, spec.field, spec.parse(raw[spec.field]))
        if str(raw.get("max_acc_drop", "")).strip():
            p.max_acc_drop = parse_max_acc_drop(raw["max_acc_drop"], p.data)
        for key in ("load", "concurrency", "rates"):
            if key in raw:
                setattr(p, key, str(raw[key]).strip().lower())
        if p.load not in LOAD_CHOICES:
            raise ConfigError(f"{show('LOAD', p.load)} is not valid; valid: auto (the configurations the summary "
                              f"picks: best latency, best throughput, best within the budget), all (every measured "
                              f"one), none or 0 (no load section)")
        p.concurrency_list()
        p.rate_list()
        if "options" in raw:
            p.options = dict(raw["options"])
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    def engine_options(self) -> dict:
        return {"channels_last": None if self.channels_last == "auto" else self.channels_last == "1", "tf32": self.tf32, "compile_mode": self.compile_mode,
                "workspace_gib": self.trt_workspace_gib, "opt_level": self.trt_opt_level, **self.options}

    def precision_list(self) -> list[str] | None:
        """Requested precisions, or None for auto."""
        if self.precisions.lower() == "auto":
            return None
        items = [p.lower() for p in parse_list("PRECISIONS", self.precisions)]
        for item in items:
            if item in NOT_YET:
                raise ConfigError(f"{show_item('PRECISIONS', self.precisions, item)}: {NOT_YET[item]}; valid: "
                                  f"{', '.join(PRECISIONS)} or auto")
            if item not in PRECISIONS:
                raise ConfigError(f"{show_item('PRECISIONS', self.precisions, item)} is not a precision; valid: "
                                  f"{', '.join(PRECISIONS)} or auto")
        if len(set(items)) != len(items):
            raise ConfigError(f"{show('PRECISIONS', self.precisions)} repeats a precision; give each once")
        return items

    @property
    def load_enabled(self) -> bool:
        return self.load not in ("none", "0")

    def concurrency_list(self) -> list[int]:
        """CONCURRENCY as whole numbers of requests in flight, each from 1 to MAX_CONCURRENCY (auto: 1,2,4,8)."""
        text = "1,2,4,8" if self.concurrency in ("auto", "") else self.concurrency
        values = parse_int_list("CONCURRENCY", text)
        big = [n for n in values if n > MAX_CONCURRENCY]
        if big:
            raise ConfigError(f"{show_item('CONCURRENCY', self.concurrency, big[0])} is not valid; expected whole "
                              f"numbers from 1 to {MAX_CONCURRENCY} separated by commas, e.g. CONCURRENCY=1,2,4,8")
        return values

    def rate_list(self) -> list[tuple[float, str]]:
        """RATES as (value, unit) pairs: unit "x" = a fraction of the configuration's throughput one request at a
        time (0.5x; lib.sweep.load_stage measures it just before the load), "rps" = requests/s (200). auto = 0.5x,0.9x."""
        text = DEFAULT_RATES if self.rates in ("auto", "") else self.rates
        valid = ("expected fractions of the measured single-request throughput (e.g. 0.5x, at most 100x) or "
                 "request rates in requests/s (e.g. 200), separated by commas, e.g. RATES=0.5x,0.9x or RATES=100,500")
        out = []
        for item in parse_list("RATES", text):
            unit = "x" if item.endswith("x") else "rps"
            number = item[:-1] if unit == "x" else item
            try:
                value = float(number)
            except ValueError:
                raise ConfigError(f"{show_item('RATES', self.rates, item)} is not valid; {valid}") from None
            if not (math.isfinite(value) and value > 0) or (unit == "x" and value > 100):
                raise ConfigError(f"{show_item('RATES', self.rates, item)} is not valid; {valid}")
            out.append((value, unit))
        if len(set(out)) != len(out):
            raise ConfigError(f"{show('RATES', self.rates)} repeats a rate; give each once")
        return out

    @property
    def models_path(self) -> Path | None:
        return Path(self.models_dir) if self.models_dir else None
