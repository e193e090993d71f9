"""Model registry: every ``<models_dir>/<folder>/config.yaml`` is a model, found without an import list.

``load.py`` beside the config defines ``build_model(config) -> torch.nn.Module`` (random weights: no
network). It is the one place user code runs, by design. Weights come from a local state-dict file,
read as data with ``torch.load(weights_only=True)`` and applied with strict key checking.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

import yaml

from ..common.errors import ConfigError, ModelError, WeightsError
from .model_config import ModelConfig, parse_model_config

RANDOM_WEIGHTS_SEED = 0

__all__ = ["calibrate_batchnorm", "check_load_py", "default_models_dir", "discover", "get_model", "list_models",
           "build_model", "load_weights", "is_given_onnx", "as_output_list"]


def default_models_dir() -> Path:
    """``$BENCHBOOK_MODELS_DIR`` or the repository's ``models/``."""
    env = os.environ.get("BENCHBOOK_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def is_given_onnx(cfg: ModelConfig) -> bool:
    """True for a model given as ONNX: ``model.onnx`` beside its config and no ``load.py``."""
    return not (cfg.folder / "load.py").exists() and (cfg.folder / "model.onnx").exists()


def as_output_list(out) -> list:
    """A module's result as a list of tensors in output order (tensor, tuple/list or dict)."""
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    if hasattr(out, "to_tuple"):  # transformers ModelOutput
        return list(out.to_tuple())
    return [out]


def _read_config(path: Path) -> ModelConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a model config needs name, inputs and outputs "
                          f"(see models/efficientnet_b1/config.yaml)")
    return parse_model_config(raw, path)


def discover(models_dir: Path | str | None = None, broken: dict | None = None) -> dict[str, ModelConfig]:
    """All models under ``models_dir``; a malformed config or a duplicate name raises, naming the files.
    With ``broken`` (a dict), a malformed model folder is left out and its error stored there by folder
    name instead, so one broken model does not hide the others."""
    root = Path(models_dir) if models_dir else default_models_dir()
    if not root.is_dir():
        raise ModelError(f"models folder {root} does not exist")
    found: dict[str, ModelConfig] = {}
    for cfg_path in sorted(root.glob("*/config.yaml")):
        try:
            cfg = _read_config(cfg_path)
            if not (cfg_path.parent / "load.py").is_file() and not (cfg_path.parent / "model.onnx").is_file():
                raise ModelError(f"{cfg_path.parent}: needs load.py (defining build_model(config)) or model.onnx")
        except (ConfigError, ModelError) as e:
            if broken is None:
                raise
            broken[cfg_path.parent.name] = e
            continue
        if cfg.name in found:
            raise ModelError(f"two models are named {cfg.name!r}: {found[cfg.name].path} and {cfg_path}; "
                             f"rename one (the 'name' field)")
        found[cfg.name] = cfg
    return found


def list_models(models_dir: Path | str | None = None) -> list[str]:
    return sorted(discover(models_dir))


def get_model(name: str, models_dir: Path | str | None = None) -> ModelConfig:
    """The model called ``name``; an unknown name lists the available ones. A broken sibling folder does
    not stop this one: only asking for the broken model itself raises its error."""
    broken: dict[str, Exception] = {}
    models = discover(models_dir, broken)
    if name not in models and name in broken:
        raise broken[name]
    if name not in models:
        avail = ", ".join(sorted(models)) or "none"
        if broken:
            avail += f"; not usable: {', '.join(sorted(broken))} (`make models` says why)"
        close = difflib.get_close_matches(name, list(models), n=1, cutoff=0.6) or [
            m for m in models if m.lower() == str(name).lower()]
        hint = f"did you mean {close[0]}? " if close else ""
        # MODEL is a config's `name:`; a folder of that name whose config says otherwise is the likely slip
        by_folder = [m for m in models.values() if m.folder.name == name]
        if by_folder:
            hint = (f"the folder {by_folder[0].folder} holds model {by_folder[0].name!r} (MODEL is the config's "
                    f"name: field): MODEL={by_folder[0].name}? ")
        raise ModelError(f"MODEL={name!r} is not a model; {hint}available: {avail} (the folders with a config.yaml "
                         f"under {Path(models_dir or default_models_dir())}; `make models` lists them)")
    return models[name]


def _top_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """(top-level package, line) of the imports load.py runs unconditionally (not inside try/if/def)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], node.lineno))
    return out


def check_load_py(cfg: ModelConfig) -> None:
    """Check ``load.py`` without running it (no torch import, milliseconds): it parses, defines
    ``build_model`` and the packages it imports are installed. Errors name the model, the file and the line."""
    load_py = cfg.folder / "load.py"
    if not load_py.is_file():
        return  # a model given as model.onnx
    try:
        source = load_py.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"model {cfg.name!r}: {load_py} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        tree = ast.parse(source, filename=str(load_py))
    except SyntaxError as e:
        raise ModelError(f"model {cfg.name!r}: {load_py} line {e.lineno}: {e.msg} (SyntaxError)") from None
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    star = any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in tree.body)
    dynamic = "globals()" in source or "setattr(" in source
    if "build_model" not in names and not star and not dynamic:
        raise ModelError(f"model {cfg.name!r}: {load_py} must define build_model(config) -> torch.nn.Module "
                         f"(it defines {', '.join(sorted(n for n in names if not n.startswith('_'))) or 'nothing'})")
    if "sys.path" in source:
        return  # it extends the import path itself: its imports are checked when it runs
    for module, line in _top_level_imports(tree):
        if module in sys.modules or (cfg.folder / f"{module}.py").exists() or (cfg.folder / module).is_dir():
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            comment = source.splitlines()[line - 1].partition("#")[2].strip()  # e.g. "pip install transformers"
            hint = f" (load.py says: {comment})" if comment else ""
            raise ModelError(f"model {cfg.name!r}: {load_py} line {line} imports {module!r}, which is not installed "
                             f"in this Python ({sys.executable}); install the package that provides it{hint}, "
                             f"or fix the import")


def _where_in(load_py: Path, exc: BaseException) -> str:
    """' (load.py line N)': the innermost frame of ``exc``'s traceback that is in load.py."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == load_py]
    if not frames and isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    return f" (line {frames[-1].lineno})" if frames else ""


def build_model(cfg: ModelConfig, weights: str | Path | None = None, cache_dir: str | Path | None = None,
                calibrate: bool = True):
    """Run the model's ``load.py`` to build it (eval mode, CPU), then apply ``weights`` if given; without
    weights, BatchNorm statistics are calibrated (``calibrate_batchnorm``), read from ``<cache_dir>/calibration``
    when an earlier process calibrated the same weights (``calibrate=False``: not at all, for callers that only
    count operations)."""
    load_py = cfg.folder / "load.py"
    if not load_py.is_file():
        raise ModelError(f"model {cfg.name!r} has no load.py ({load_py}); it can run on ONNX backends only")
    spec = importlib.util.spec_from_file_location(f"benchbook_models.{cfg.folder.name}", load_py)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ModelError(f"model {cfg.name!r}: {load_py} raised {type(e).__name__}{_where_in(load_py, e)}: "
                         f"{_one_line(e)}") from e
    builder = getattr(module, "build_model", None)
    if not callable(builder):
        raise ModelError(f"model {cfg.name!r}: {load_py} must define build_model(config) -> torch.nn.Module")
    import torch

    # Seeded, so every process (export, each backend's kernel, the parity reference) builds the same
    # random weights; fork_rng leaves the caller's RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        try:
            model = builder(cfg)
        except Exception as e:
            raise ModelError(f"model {cfg.name!r}: build_model() in {load_py} raised "
                             f"{type(e).__name__}{_where_in(load_py, e)}: {_one_line(e)}") from e
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"model {cfg.name!r}: build_model() returned {type(model).__name__}, "
                             f"not a torch.nn.Module")
        if weights:
            load_weights(model, weights, cfg.name)
        elif calibrate:
            _calibrated(model, cfg, cache_dir)
    return model.eval()


# Bump when calibrate_batchnorm's recipe (inputs, passes) changes: cached statistics from another recipe are
# then not found.
CALIBRATION_RECIPE = "bn-v1"


def _calibrated(model, cfg: ModelConfig, cache_dir) -> None:
    """``calibrate_batchnorm`` once per distinct random-weight model: the statistics are a function of the
    weights ``load.py`` built and of the calibration inputs, so they are cached under a hash of both (every
    backend's process, the parity reference and the export then use the very same weights, and skip seconds
    of CPU forward passes). The file holds tensors only and is read with ``weights_only=True``."""
    import hashlib
    import io

    import torch

    from ..common.cache import atomic_write_bytes

    bn_keys = [f"{name}.{b}" for name, m in model.named_modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
               for b in ("running_mean", "running_var", "num_batches_tracked")]
    if not bn_keys:
        return
    if cache_dir is None:
        calibrate_batchnorm(model, cfg)
        return
    h = hashlib.sha256(f"{CALIBRATION_RECIPE}|{torch.__version__}|{cfg.inputs!r}".encode())
    for name, t in sorted(model.state_dict().items()):
        if name not in bn_keys:  # the BN buffers are what calibration sets; everything else defines the model
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    path = Path(cache_dir) / "calibration" / f"{cfg.folder.name}-{h.hexdigest()[:20]}.pt"
    if path.is_file():
        try:
            stats = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(stats, dict) and set(stats) == set(bn_keys):
                model.load_state_dict(stats, strict=False)
                return
        except Exception:  # noqa: BLE001 - unreadable or foreign: calibrate again and replace it
            pass
    calibrate_batchnorm(model, cfg)
    state = model.state_dict()
    buf = io.BytesIO()
    torch.save({k: state[k].detach().clone() for k in bn_keys}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def calibrate_batchnorm(model, cfg: ModelConfig, passes: int = 4) -> int:
    """Set BatchNorm running statistics from seeded random inputs; returns how many layers were set.

    Freshly initialised BatchNorm layers are identities (mean 0, var 1), and with default random
    weights activations shrink layer after layer: EfficientNet-B1's logits come out near 1e-14,
    which FP16 flushes to zero and which makes any parity figure meaningless. Calibrated
    statistics keep every layer's output at unit scale, as trained weights would.
    """
    import torch

    from .inputs import make_inputs
    from .model_config import BATCH_DIM, Shape

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
    first = cfg.inputs[0]
    batch = max(8, first.example[first.dims.index(BATCH_DIM)])
    shape = Shape(tuple((d, next(s.example[s.dims.index(d)] for s in cfg.inputs if d in s.dims))
                        for d in cfg.shape_dims))
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(passes):
            inputs = make_inputs(cfg, batch, shape, seed=10_000 + i)
            model(*[torch.from_numpy(inputs[s.name]) for s in cfg.inputs])
    model.train(was_training)
    return len(bns)


def check_weights_file(path: Path | str) -> None:
    """The fast part of the WEIGHTS checks (no torch import): the file exists and is a readable file."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"WEIGHTS={str(path)!r} is a folder; give a state_dict file (e.g. model.pth)")
    if not path.is_file():
        raise WeightsError(f"WEIGHTS={str(path)!r} does not exist (give a local state_dict file, e.g. a .pth)")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"WEIGHTS={str(path)!r} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise WeightsError(f"WEIGHTS={str(path)!r} is not a loadable state dict: the file is empty")


def _torch_load_cause(exc: BaseException) -> str:
    """torch.load's failure in a few words: its messages run to paragraphs."""
    text = str(exc)
    if "Unsupported global" in text or "GLOBAL" in text:
        detail = text.split("Unsupported global:")[-1].split(" was not an allowed global")[0].strip()
        return (f"it holds pickled Python objects ({' '.join(detail.split())[:120]}), which are not loaded because "
                f"unpickling can run code; save model.state_dict() instead")
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:")[-1].split("\n\nCheck the documentation")[0]
    elif "Weights only load failed" in text:
        text = text.split("\n")[-1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    cause = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {cause[:200]} (not a file written by torch.save?)"


def load_weights(model, weights: str | Path, model_name: str = "model") -> None:
    """Apply a state dict from a local file, read as data only; errors name the file and the mismatch."""
    import torch

    path = Path(weights)
    check_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"WEIGHTS={str(path)!r} is not a loadable state dict (read with "
                           f"torch.load(weights_only=True)): {_torch_load_cause(e)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # common checkpoint layout: {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"WEIGHTS={str(path)!r} holds a {type(state).__name__}, not a state dict "
                           f"(a mapping of parameter names to tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:5]) + (f" ... (+{len(keys) - 5})" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        for prefix in ("module.", "model.", "_orig_mod."):
            if unexpected and all(k.startswith(prefix) for k in unexpected) and \
                    {k[len(prefix):] for k in unexpected} >= set(missing):
                parts.append(f"the file's keys carry a {prefix!r} prefix (saved from a wrapped model?): strip it")
                break
        if wrong:
            parts.append(f"{len(wrong)} keys of another shape: " + few(
                [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong]))
        raise WeightsError(f"WEIGHTS={str(path)!r} does not match model {model_name!r}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
