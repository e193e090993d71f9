"""Typed model configs: ``models/<name>/config.yaml`` validated into dataclasses.

A config names the model's inputs (name, dtype, dim names, example dims, runtime
dims with -1 for dynamic, min/opt/max dims for engine profiles) and outputs, plus
the default batch sizes and shapes of a sweep. Every error names the file and the
field, e.g. ``models/foo/config.yaml: inputs[0].profile.max: ...``; a key the schema does not
know is an error too, with the closest valid key (``inputs[0].exmaple: unknown key; did you mean
'example'?``). ``defaults.cpu_batch_sizes`` / ``defaults.cpu_shapes`` are the sweep on a CPU
(``ModelConfig.default_batch_sizes(device)`` / ``default_shapes(device)``); ``preprocessing``
(``resize``, ``crop``, ``mean``, ``std``) prepares images for accuracy on labelled data
(``lib.measure.accuracy``).

Shapes: a model's *shape dims* are its dynamic dims other than ``batch``, by
name, in order of first appearance (``height, width`` for a CNN with dynamic
resolution, ``seq`` for BERT). A shape gives one value per shape dim, written
``240x240`` or ``128``; a model without shape dims has the single shape ``static``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError

__all__ = ["TensorSpec", "InputSpec", "ModelConfig", "Shape", "DTYPES", "BATCH_DIM", "parse_model_config", "split_shape"]

BATCH_DIM = "batch"
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
DATA_KINDS = ("normal", "uniform", "randint", "ones")


class _Where:
    """Builds error messages that name the file and the field."""

    def __init__(self, path: Path | str):
        self.path = str(path)

    def error(self, fieldname: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {fieldname}: {message}")


# The keys each mapping of a config may have: any other is a typo, reported with the closest valid key.
TOP_KEYS = ("name", "description", "task", "inputs", "outputs", "top_k_output", "preprocessing", "defaults")
INPUT_KEYS = ("name", "dtype", "dims", "example", "runtime", "profile", "data")
PROFILE_KEYS = ("min", "opt", "max")
DATA_KEYS = ("kind", "low", "high")
OUTPUT_KEYS = ("name", "dims")
DEFAULTS_KEYS = ("batch_sizes", "cpu_batch_sizes", "shapes", "cpu_shapes")
PREPROCESSING_KEYS = ("resize", "crop", "mean", "std")
# What ``task:`` may say (shown by `make models` and in the report; a typo there would be shown as is).
TASKS = ("image-classification", "classification", "object-detection", "segmentation", "text-encoder",
         "text-classification", "other")


def _check_keys(where: _Where, fieldname: str, raw: dict, valid: tuple[str, ...]) -> None:
    for key in raw:
        if key not in valid:
            # a key cut short (top_k for top_k_output) is as likely a slip as a misspelt one
            close = difflib.get_close_matches(str(key), valid, n=1) or [v for v in valid if v.startswith(str(key))][:1]
            hint = f"did you mean {close[0]!r}? " if close else ""
            prefix = f"{fieldname}." if fieldname else ""
            raise where.error(f"{prefix}{key}", f"unknown key; {hint}valid keys here: {', '.join(valid)}")


def _int_list(where: _Where, fieldname: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise where.error(fieldname, f"expected a list of integers, got {value!r}")
    if length is not None and len(value) != length:
        raise where.error(fieldname, f"expected {length} values (one per dim), got {len(value)}: {list(value)}")
    return tuple(value)


def split_shape(text, signed: bool = False) -> tuple[int, ...] | None:
    """A shape label's values, 'x'-separated ('240x240' -> (240, 240), '128' -> (128,)); None when it is not of
    that form ('static', '', '2x'). ``signed`` also reads '-32', so a caller can say that the value is out of
    range rather than malformed. Every reader of shape labels (configs, SHAPES, the report's sort) uses this."""
    parts = str(text).strip().lower().split("x")
    if not all((p.strip().lstrip("-") if signed else p.strip()).isdecimal() for p in parts):
        return None
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class Shape:
    """Values for a model's shape dims, e.g. {'height': 240, 'width': 240}."""

    values: tuple[tuple[str, int], ...]

    @property
    def label(self) -> str:
        return "x".join(str(v) for _, v in self.values) if self.values else "static"

    def as_dict(self) -> dict[str, int]:
        return dict(self.values)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[str, ...]


@dataclass(frozen=True)
class InputSpec(TensorSpec):
    dtype: str
    example: tuple[int, ...]
    runtime: tuple[int, ...]
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    data: dict = field(default_factory=lambda: {"kind": "normal"})

    def dynamic_dims(self) -> list[str]:
        return [d for d, r in zip(self.dims, self.runtime) if r == -1]

    def concrete_shape(self, batch: int, shape: Shape) -> tuple[int, ...]:
        values = shape.as_dict()
        out = []
        for dim, rt in zip(self.dims, self.runtime):
            if rt != -1:
                out.append(rt)
            elif dim == BATCH_DIM:
                out.append(batch)
            else:
                out.append(values[dim])
        return tuple(out)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path  # the config.yaml this came from
    inputs: tuple[InputSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_sizes: tuple[int, ...]  # default sweep on a GPU
    shapes: tuple[Shape, ...]
    cpu_batch_sizes: tuple[int, ...] = ()  # default sweep on a CPU (smaller: CPUs are ~100x slower)
    description: str = ""
    task: str = "other"
    preprocessing: dict = field(default_factory=dict)
    top_k_output: str | None = None  # output compared by top-1 agreement (classification logits)
    cpu_shapes: tuple[Shape, ...] = ()  # default shapes on a CPU (empty: ``shapes``)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def default_batch_sizes(self, device: str) -> tuple[int, ...]:
        """The sweep's batch sizes when BATCH_SIZES=auto: ``cpu_batch_sizes`` on a CPU, else ``batch_sizes``."""
        return self.cpu_batch_sizes if device == "cpu" and self.cpu_batch_sizes else self.batch_sizes

    def default_shapes(self, device: str) -> tuple[Shape, ...]:
        """The sweep's shapes when SHAPES=auto: ``cpu_shapes`` on a CPU when the config sets them, else ``shapes``."""
        return self.cpu_shapes if device == "cpu" and self.cpu_shapes else self.shapes

    @property
    def shape_dims(self) -> tuple[str, ...]:
        seen: list[str] = []
        for spec in self.inputs:
            for d in spec.dynamic_dims():
                if d != BATCH_DIM and d not in seen:
                    seen.append(d)
        return tuple(seen)

    def profile_range(self, dim: str) -> tuple[int, int]:
        """(min, max) of a dynamic dim over every input that has it."""
        lo, hi = 0, 1 << 62
        for spec in self.inputs:
            for i, d in enumerate(spec.dims):
                if d == dim:
                    lo, hi = max(lo, spec.min[i]), min(hi, spec.max[i])
        return lo, hi

    def parse_shape(self, text: str) -> Shape:
        """'240x240' -> Shape; raises ConfigError naming the value and the valid form."""
        dims = self.shape_dims
        text = str(text).strip()
        if not dims:
            if text in ("", "static", "default"):
                return Shape(())
            raise ConfigError(f"SHAPES: {text!r}: model {self.name!r} has no dynamic dims besides batch; use 'static'")
        form = "x".join(f"<{d}>" for d in dims)
        parts = split_shape(text, signed=True)
        if parts is None or len(parts) != len(dims):
            raise ConfigError(f"SHAPES: {text!r} is not a shape of model {self.name!r}; expected {form}, e.g. "
                              f"{self.shapes[0].label if self.shapes else self.opt_shape().label}")
        values = tuple(zip(dims, parts))
        outside = self.outside_profile(values)
        if outside:
            d, v, lo, hi = outside
            raise ConfigError(f"SHAPES: {text!r}: {d}={v} is outside the profile of model {self.name!r} "
                              f"({d} from {lo} to {hi}, set in {self.path} inputs[*].profile)")
        return Shape(values)

    def outside_profile(self, values) -> tuple[str, int, int, int] | None:
        """The first (dim, value, lo, hi) of ``values`` ((dim, value) pairs) outside the profile, or None."""
        for d, v in values:
            lo, hi = self.profile_range(d)
            if not lo <= v <= hi:
                return d, v, lo, hi
        return None

    def opt_shape(self) -> Shape:
        """The profile's opt value of each shape dim: an example shape that always fits the profile."""
        opt = {}
        for spec in self.inputs:
            for d, v in zip(spec.dims, spec.opt):
                opt.setdefault(d, v)
        return Shape(tuple((d, opt[d]) for d in self.shape_dims))

    def check_batch(self, batch: int) -> None:
        lo, hi = self.profile_range(BATCH_DIM)
        if not lo <= batch <= hi:
            raise ConfigError(f"BATCH_SIZES: {batch} is outside the profile of model {self.name!r} "
                              f"(batch from {lo} to {hi}, set in {self.path} inputs[*].profile)")


def _parse_input(where: _Where, i: int, raw: Any) -> InputSpec:
    f = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise where.error(f, f"expected a mapping with name, dtype, dims, ...; got {raw!r}")
    _check_keys(where, f, raw, INPUT_KEYS)
    for key in ("name", "dims", "example", "runtime"):
        if key not in raw:
            raise where.error(f"{f}.{key}", "missing (required: name, dtype, dims, example, runtime, profile)")
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise where.error(f"{f}.name", f"expected a non-empty string, got {name!r}")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise where.error(f"{f}.dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    dims = raw["dims"]
    if not isinstance(dims, list) or not all(isinstance(d, str) and d for d in dims):
        raise where.error(f"{f}.dims", f"expected a list of dim names, got {dims!r}")
    if len(set(dims)) != len(dims):
        raise where.error(f"{f}.dims", f"dim names repeat: {dims}")
    n = len(dims)
    example = _int_list(where, f"{f}.example", raw["example"], n)
    runtime = _int_list(where, f"{f}.runtime", raw["runtime"], n)
    if BATCH_DIM in dims and dims[0] != BATCH_DIM:  # where the dim sits is a matter of dims, not of runtime
        raise where.error(f"{f}.dims", f"'{BATCH_DIM}' is dim {dims.index(BATCH_DIM)} of {dims}; it must be the "
                          f"first dim (and -1 in runtime)")
    for j, (d, r) in enumerate(zip(dims, runtime)):
        if r == 0 or r < -1:
            raise where.error(f"{f}.runtime[{j}]", f"{r} is not valid: use a positive size or -1 for dynamic")
        if d == BATCH_DIM and r != -1:
            raise where.error(f"{f}.runtime[{j}]", f"the '{BATCH_DIM}' dim must be dynamic (-1), got {r}")
    if BATCH_DIM not in dims:
        raise where.error(f"{f}.dims", f"needs a '{BATCH_DIM}' dim first, got {dims}")
    profile = raw.get("profile", {})
    if not isinstance(profile, dict):
        raise where.error(f"{f}.profile", f"expected a mapping with min, opt, max; got {profile!r}")
    _check_keys(where, f"{f}.profile", profile, PROFILE_KEYS)
    bounds = {}
    for key in ("min", "opt", "max"):
        if key in profile:
            bounds[key] = _int_list(where, f"{f}.profile.{key}", profile[key], n)
        else:
            if any(r == -1 for r in runtime):
                raise where.error(f"{f}.profile.{key}", "missing: dynamic dims need min, opt and max")
            bounds[key] = runtime
    for j in range(n):
        lo, op, hi = bounds["min"][j], bounds["opt"][j], bounds["max"][j]
        if runtime[j] != -1 and not lo == op == hi == runtime[j]:
            raise where.error(f"{f}.profile", f"dim {dims[j]!r} is static ({runtime[j]}) so min/opt/max must equal it")
        if not 1 <= lo <= op <= hi:
            raise where.error(f"{f}.profile", f"dim {dims[j]!r}: need 1 <= min <= opt <= max, got {lo}, {op}, {hi}")
        if not lo <= example[j] <= hi:
            raise where.error(f"{f}.example[{j}]", f"{example[j]} is outside min..max ({lo}..{hi})")
    data = raw.get("data", {"kind": "normal"})
    if not isinstance(data, dict) or data.get("kind", "normal") not in DATA_KINDS:
        raise where.error(f"{f}.data.kind", f"expected one of {', '.join(DATA_KINDS)}, got {data!r}")
    _check_keys(where, f"{f}.data", data, DATA_KEYS)
    if data.get("kind") == "randint" and not all(k in data for k in ("low", "high")):
        raise where.error(f"{f}.data", "randint needs low and high (high exclusive)")
    return InputSpec(name=name, dims=tuple(dims), dtype=dtype, example=example, runtime=runtime,
                     min=bounds["min"], opt=bounds["opt"], max=bounds["max"], data=dict(data))


def _parse_shapes(where: _Where, cfg: ModelConfig, key: str, raw: Any) -> tuple[Shape, ...]:
    """``defaults.<key>``: a non-empty list of shapes of ``cfg``; errors name the field."""
    if isinstance(raw, str):  # `shapes: static` or `shapes: 224x224, 288x288`, as the docs write a single one
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not raw:
        raise where.error(f"defaults.{key}", f"expected a list of shapes like "
                          f"{'x'.join('<'+d+'>' for d in cfg.shape_dims) or 'static'}, got {raw!r}")
    try:
        return tuple(cfg.parse_shape(str(s)) for s in raw)
    except ConfigError as e:
        raise where.error(f"defaults.{key}", str(e)) from None


def parse_model_config(raw: Any, path: Path | str) -> ModelConfig:
    """Validate a loaded ``config.yaml`` mapping; errors name ``path`` and the field."""
    where = _Where(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    _check_keys(where, "", raw, TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise where.error("name", f"expected a name of letters, digits, '_' or '-', got {name!r}")
    raw_inputs = raw.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise where.error("inputs", "expected a non-empty list of inputs")
    inputs = tuple(_parse_input(where, i, r) for i, r in enumerate(raw_inputs))
    if len({s.name for s in inputs}) != len(inputs):
        raise where.error("inputs", "input names repeat")
    # A dim shared by several inputs (batch, seq) takes one value per point: their ranges must overlap.
    for dim in dict.fromkeys(d for s in inputs for d in s.dynamic_dims()):
        have = [(i, s.dims.index(dim)) for i, s in enumerate(inputs) if dim in s.dims]
        lo = max(inputs[i].min[j] for i, j in have)
        hi = min(inputs[i].max[j] for i, j in have)
        if lo > hi:
            ranges = ", ".join(f"inputs[{i}] {inputs[i].min[j]}..{inputs[i].max[j]}" for i, j in have)
            raise where.error("inputs", f"dim {dim!r} is shared by inputs whose min..max do not overlap ({ranges})")
    preprocessing = _parse_preprocessing(where, raw.get("preprocessing"))
    raw_outputs = raw.get("outputs")
    if not isinstance(raw_outputs, list) or not raw_outputs:
        raise where.error("outputs", "expected a non-empty list of outputs (name, dims)")
    outputs = []
    for i, r in enumerate(raw_outputs):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str):
            raise where.error(f"outputs[{i}].name", f"expected a mapping with a name, got {r!r}")
        _check_keys(where, f"outputs[{i}]", r, OUTPUT_KEYS)
        dims = r.get("dims", [])
        if not isinstance(dims, list):
            raise where.error(f"outputs[{i}].dims", f"expected a list of dim names, got {dims!r}")
        outputs.append(TensorSpec(name=r["name"], dims=tuple(dims)))
    defaults = raw.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise where.error("defaults", f"expected a mapping, got {defaults!r}")
    _check_keys(where, "defaults", defaults, DEFAULTS_KEYS)
    batch_sizes = _int_list(where, "defaults.batch_sizes", defaults.get("batch_sizes", [1]))
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise where.error("defaults.batch_sizes", f"expected positive integers, got {list(batch_sizes)}")
    cpu_batch_sizes = _int_list(where, "defaults.cpu_batch_sizes", defaults.get("cpu_batch_sizes", list(batch_sizes)))
    if not cpu_batch_sizes or any(b < 1 for b in cpu_batch_sizes):
        raise where.error("defaults.cpu_batch_sizes", f"expected positive integers, got {list(cpu_batch_sizes)}")
    top_k = raw.get("top_k_output")
    if top_k is not None and top_k not in {o.name for o in outputs}:
        names = [o.name for o in outputs]
        close = difflib.get_close_matches(str(top_k), names, n=1)
        raise where.error("top_k_output", f"{top_k!r} is not an output name; "
                          + (f"did you mean {close[0]!r}? " if close else "") + f"outputs: {', '.join(names)}")
    task = str(raw.get("task", "other"))
    if task not in TASKS:
        close = difflib.get_close_matches(task, TASKS, n=1)
        raise where.error("task", f"{task!r} is not a task; " + (f"did you mean {close[0]!r}? " if close else "")
                          + f"valid: {', '.join(TASKS)}")
    cfg = ModelConfig(name=name, path=Path(path), inputs=inputs, outputs=tuple(outputs), batch_sizes=batch_sizes,
                      cpu_batch_sizes=cpu_batch_sizes, shapes=(), description=str(raw.get("description", "")), task=task,
                      preprocessing=preprocessing, top_k_output=top_k)
    shapes = _parse_shapes(where, cfg, "shapes", defaults.get("shapes", ["static"] if not cfg.shape_dims else None))
    cpu_shapes: tuple[Shape, ...] = ()
    if "cpu_shapes" in defaults:
        cpu_shapes = _parse_shapes(where, cfg, "cpu_shapes", defaults["cpu_shapes"])
    for key, sizes in (("batch_sizes", batch_sizes), ("cpu_batch_sizes", cpu_batch_sizes)):
        try:
            for b in sizes:
                cfg.check_batch(b)
        except ConfigError as e:
            raise where.error(f"defaults.{key}", str(e)) from None
    return replace(cfg, shapes=shapes, cpu_shapes=cpu_shapes)


def _parse_preprocessing(where: _Where, raw: Any) -> dict:
    """``{resize, crop, mean, std}`` for images (used by lib.measure.accuracy); every key optional."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise where.error("preprocessing", f"expected a mapping with resize, crop, mean, std; got {raw!r}")
    _check_keys(where, "preprocessing", raw, PREPROCESSING_KEYS)
    for key in ("resize", "crop"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise where.error(f"preprocessing.{key}", f"expected a positive integer (pixels), got {v!r}")
    for key in ("mean", "std"):
        v = raw.get(key)
        if v is None:
            continue
        if (not isinstance(v, list) or not v
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise where.error(f"preprocessing.{key}", f"expected a list of numbers, one per channel, got {v!r}")
        if key == "std" and any(x <= 0 for x in v):
            raise where.error("preprocessing.std", f"expected positive numbers, got {v!r}")
    return dict(raw)
